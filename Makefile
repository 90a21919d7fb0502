# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The `vision` extra, kept off the main environment's path: with torchvision importable, transformers
# switches every image processor (the demo's too) to its torchvision backend, whose resize differs
# from PIL's, and the demo's recorded figures were made with PIL. The model matrix runs the
# families that need it (Qwen2-VL, Qwen2.5-VL, SmolVLM) in a subprocess with this on PYTHONPATH.
VISION := $(VENV)/vision
VISION_STAMP := $(VISION)/.installed
# DuckDB with its httpfs extension from PyPI, whose newest build (1.5.5) is older than the DuckDB
# saev uses: the test that reads s3:// tables in place runs `saev query` in a subprocess with this
# on PYTHONPATH, since these machines cannot download extensions.
HTTPFS := $(VENV)/duckdb-httpfs
HTTPFS_STAMP := $(HTTPFS)/.installed

.PHONY: run test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(VISION_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --target $(VISION) torchvision==0.28.0 num2words docopt
	touch $(VISION_STAMP)

$(HTTPFS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --target $(HTTPFS) duckdb==1.5.5 duckdb-extension-httpfs==1.5.5
	touch $(HTTPFS_STAMP)

# Telemetry off: its heartbeat races the ephemeral server's SQLite writes ("database is locked",
# PrefectHQ/prefect#18934), which is harmless but noisy.
# The ephemeral server gets 2 min to start instead of Prefect's 20 s, which a busy machine can miss.
run: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 $(BIN)/python -m flows.pipeline

# The report's browser test needs Chromium, and the production-backend soak PostgreSQL: Debian's
# packages where apt-get can install them (refreshing empty package lists first when a package is
# not found), else those tests are skipped, and under CI (CI set, as .ci/run does) they fail.
APT_INSTALL = apt-get install -y -q $(1) >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(1) >/dev/null 2>&1; }
test: $(STAMP) $(VISION_STAMP) $(HTTPFS_STAMP)
	command -v chromium >/dev/null 2>&1 || $(call APT_INSTALL,chromium) || echo "chromium not installed: the browser test will be skipped (failed under CI)"
	command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || $(call APT_INSTALL,postgresql) || echo "postgresql not installed: the PostgreSQL soak will be skipped (failed under CI)"
	SAEV_VISION_PATH=$(abspath $(VISION)) SAEV_DUCKDB_HTTPFS_PATH=$(abspath $(HTTPFS)) $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) data
