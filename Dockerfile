# The worker image: `docker compose up` runs it beside a persistent Redis.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY wsupload ./wsupload
COPY config ./config
COPY tasks ./tasks
COPY worker ./worker
# The runtime only: the development tools (sandbox, demo, sample media) are deleted after
# installing, and the source goes too, so nothing imports from a checkout by accident.
RUN pip install --no-cache-dir -c constraints.txt . \
 && cd / \
 && rm -r /src "$(python -c 'import pathlib, wsupload.worker.dev as d; print(pathlib.Path(d.__file__).parent)')" \
 && python -c 'import wsupload.worker.cli, wsupload.worker.app, wsupload.tasks.upload' \
 && useradd --create-home --uid 10001 wsupload
USER wsupload
WORKDIR /home/wsupload
CMD ["wsupload", "worker"]
