# The worker image: `docker compose up` runs it beside a persistent Redis.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY config ./config
COPY tasks ./tasks
COPY worker ./worker
RUN pip install --no-cache-dir -c constraints.txt . \
 && useradd --create-home --uid 10001 wsupload
USER wsupload
CMD ["wsupload", "worker"]
