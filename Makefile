# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Telemetry off: its heartbeat races the ephemeral server's SQLite writes ("database is locked",
# PrefectHQ/prefect#18934), which is harmless but noisy.
# The ephemeral server gets 2 min to start instead of Prefect's 20 s, which a busy machine can miss.
run: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 $(BIN)/python -m flows.pipeline

# The report's browser test needs Chromium: Debian's package where apt-get can install it, else it is skipped.
test: $(STAMP)
	command -v chromium >/dev/null 2>&1 || apt-get install -y -q chromium >/dev/null 2>&1 || echo "chromium not installed: the browser test will be skipped"
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) data
