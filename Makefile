# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the pinned dependencies when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# celery-node, the other-language producer of the wire-contract tests (tests/node, pinned by its lock file).
NODE_DEPS := tests/node/node_modules/.package-lock.json

.PHONY: setup demo test lint unit docs bench bench-quick clean

setup: $(STAMP) $(NODE_DEPS)

$(STAMP): pyproject.toml constraints.txt
	@command -v redis-server >/dev/null || ./scripts/install-redis
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || ./scripts/install-prometheus
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

# Without npm the celery-node tests skip locally, saying why (and fail in CI).
$(NODE_DEPS): tests/node/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix tests/node --no-audit --no-fund --loglevel=error; \
	else echo "no npm: tests/integration/test_node_producer.py will skip (install Node.js 18+ and npm)"; fi

demo: $(STAMP)
	$(BIN)/wsupload demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The whole suite on Redis and, alongside it, the broker-agnostic core once more with RabbitMQ as
# the broker; its output follows when both are done. Each runs in several processes
# (pytest-xdist): the integration tests mostly wait on workers, leases and sockets, so more
# processes than cores pay. worksteal: a process with nothing left takes tests from a busy one.
TEST_PROCESSES ?= 6
AMQP_TEST_PROCESSES ?= 3

test: lint $(NODE_DEPS)
	@amqp_log=$$(mktemp); \
	WSUPLOAD_TEST_BROKER=amqp $(BIN)/pytest -n $(AMQP_TEST_PROCESSES) --dist worksteal -m core tests/integration \
		> $$amqp_log 2>&1 & amqp=$$!; \
	echo "$(BIN)/pytest -n $(TEST_PROCESSES) --dist worksteal"; \
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist worksteal; redis=$$?; \
	wait $$amqp; amqp=$$?; \
	echo; echo "WSUPLOAD_TEST_BROKER=amqp $(BIN)/pytest -n $(AMQP_TEST_PROCESSES) --dist worksteal -m core tests/integration"; \
	cat $$amqp_log; rm -f $$amqp_log; \
	test $$redis -eq 0 && test $$amqp -eq 0

unit: $(STAMP)
	$(BIN)/pytest tests/unit

# docs/configuration.md's table is generated from config/settings.py; a unit test fails while it is stale.
docs: $(STAMP)
	$(BIN)/python -m wsupload.config.docs_table

# Every benchmark beside its baselines in one run; writes benchmarks/RESULTS.md and results.png.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run

bench-quick: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
