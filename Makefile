# FMR V2 backups — see README.md.  `make demo` and `make test` work from a fresh clone.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
UV ?= $(shell command -v uv 2>/dev/null)
STAMP := $(VENV)/.installed

.PHONY: venv demo demo-cli test test-fast test-deps bench lint airflow airflow-settings clean

venv: $(STAMP)
	@$(PY) -m compileall -q include dags plugins tools >/dev/null

# Bytecode: site-packages is compiled at install (--compile-bytecode) and the project's own modules by `venv` above
# (it only recompiles what changed). Machines that set PYTHONDONTWRITEBYTECODE (this one does) never write .pyc
# files themselves, so without this every process — each CLI run, Airflow server and task in the tests — compiled
# everything it imports again: about 1.5 s per Airflow process, 0.7 s per backupctl run.

# requirements.txt: the pinned runtime stack (Airflow, providers, GX, drivers); requirements-dev.txt: test and lint
# tools on top of it (both from `uv pip compile`, see the .in files)
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@if [ -z "$(UV)" ]; then python3 -m pip install -q uv==0.13.8; fi
	@[ -x $(PY) ] || uv venv -q --python 3.11 $(VENV)
	VIRTUAL_ENV=$(VENV) uv pip install -q --compile-bytecode -r requirements.txt -r requirements-dev.txt
	VIRTUAL_ENV=$(VENV) uv pip install -q --no-deps -e .
	@touch $(STAMP)

## demo: the main job through Airflow on the embedded default (local storage, SQLite, no servers)
demo: venv
	@AIRFLOW_HOME=$(AF_HOME) $(PY) -m tools.airflow_local stop --quiet
	DEMO_AIRFLOW_DB=$(AF_DB) $(PY) -m tools.demo_airflow

## demo-remote: the same Airflow demo on the production config (include/backups.yaml: local + cloud S3 + offsite
## SFTP, encrypted) against loopback servers it starts and stops itself (moto S3 in-process, OpenSSH sshd)
.PHONY: demo-remote
demo-remote: venv
	@[ -x /usr/sbin/sshd ] || command -v sshd >/dev/null || { echo "demo-remote needs OpenSSH sshd: apt-get install openssh-server"; exit 1; }
	@AIRFLOW_HOME=$(AF_HOME) $(PY) -m tools.airflow_local stop --quiet
	DEMO_AIRFLOW_DB=$(AF_DB) $(PY) -m tools.demo_airflow --remote --config include/backups.yaml

## demo-cli: the same engine demo without Airflow
demo-cli: venv
	$(PY) -m backups.demo.run

## test-deps: Debian packages the tests use (sshd for SFTP, PostgreSQL client tools, zstd, setpriv, setfacl/getfattr, chromium for tests/browser, faketime for tests/faults/test_time.py)
test-deps:
	@missing=""; \
	 [ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	 command -v pg_dump >/dev/null || missing="$$missing postgresql-client"; \
	 command -v zstd >/dev/null || missing="$$missing zstd"; \
	 command -v setpriv >/dev/null || missing="$$missing util-linux"; \
	 command -v setfacl >/dev/null || missing="$$missing acl"; \
	 command -v getfattr >/dev/null || missing="$$missing attr"; \
	 command -v chromium >/dev/null || missing="$$missing chromium"; \
	 command -v faketime >/dev/null || missing="$$missing faketime"; \
	 if [ -n "$$missing" ]; then \
	   if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	   else echo "install:$$missing (Debian packages) and re-run"; exit 1; fi; \
	 fi

## test: install what the tests need, then run them all (one pytest process)
test: venv test-deps
	$(PY) -m pytest

## test-fast: the plain-library unit tests (no Airflow, no servers): feedback in seconds
test-fast: venv
	$(PY) -m pytest -q -m "not airflow and not slow" tests/unit/engine/test_planner.py tests/unit/engine/test_retention_rules.py \
	  tests/unit/engine/test_tarstream.py tests/unit/test_config.py

## bench: the benchmark (not a test); see benchmarks/README.md
bench: venv
	$(PY) benchmarks/run.py

# ---- local Airflow (metadata DB and runs of `make demo`; AIRFLOW_HOME .demo/airflow) -----------------------
# Metadata DB: PostgreSQL database airflow_demo on 127.0.0.1:5432 when that server answers (created if missing),
# else SQLite in $(AF_HOME) (one writer at a time: see README "Airflow UI"). Override: make airflow AF_DB=<url>.
AF_HOME ?= $(CURDIR)/.demo/airflow
AF_PORT ?= 8080
AF_DB = $(or $(_AF_DB),$(eval _AF_DB := $(shell AIRFLOW_HOME=$(AF_HOME) $(PY) -m tools.airflow_local db-url))$(_AF_DB))
AF_ENV = AIRFLOW_HOME=$(AF_HOME) AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags AIRFLOW__CORE__LOAD_EXAMPLES=False \
  AIRFLOW__CORE__PLUGINS_FOLDER=$(CURDIR)/plugins \
  AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=$(AF_DB) AIRFLOW__CORE__PARALLELISM=4 \
  AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=$(AF_PORT) AIRFLOW__API__BASE_URL=http://127.0.0.1:$(AF_PORT) \
  BACKUP_CONFIG=$${BACKUP_CONFIG:-$(CURDIR)/include/backups.local.yaml} \
  PYTHONPATH=$(CURDIR):$(CURDIR)/include FMR_HOME=$${FMR_HOME:-$(CURDIR)/.demo/fmr} \
  BACKUP_ROOT=$${BACKUP_ROOT:-$(CURDIR)/.demo/backups} PATH=$(CURDIR)/$(VENV)/bin:$$PATH \
  AIRFLOW__CORE__FERNET_KEY=$${AIRFLOW__CORE__FERNET_KEY:-$$(AIRFLOW_HOME=$(AF_HOME) $(PY) -m tools.airflow_local fernet-key)}

## airflow-settings: load airflow_settings.yaml (connections, pools, variables) into the local Airflow's metadata DB
## with the airflow CLI (`make airflow` loads the same file through the REST API once the API server is up)
airflow-settings: venv
	@mkdir -p $(AF_HOME)
	@echo "airflow db migrate ($(AF_DB))"; $(AF_ENV) airflow db migrate >/dev/null
	@$(PY) -m tools.airflow_settings airflow_settings.yaml --import-dir $(AF_HOME)/settings-import
	@$(AF_ENV) airflow connections import --overwrite $(AF_HOME)/settings-import/connections.json
	@$(AF_ENV) airflow variables import $(AF_HOME)/settings-import/variables.json
	@$(AF_ENV) airflow pools import $(AF_HOME)/settings-import/pools.json

## airflow: the Airflow UI (API server), scheduler, dag-processor and triggerer on 127.0.0.1, in the background as
## one process group (pidfile $(AF_HOME)/airflow-local.pid, logs in $(AF_HOME)/logs); loads airflow_settings.yaml
## and prints the login. Stop with `make airflow-stop`.
.PHONY: airflow-stop airflow-status
airflow: venv
	@mkdir -p $(AF_HOME)
	@$(AF_ENV) $(PY) -m tools.airflow_local start --settings airflow_settings.yaml

## airflow-stop: stop every process `make airflow` started (the group, and anything else of $(AF_HOME))
airflow-stop:
	@AIRFLOW_HOME=$(AF_HOME) $(PY) -m tools.airflow_local stop

## airflow-status: the processes `make airflow` started and the servers' environment as `export` lines (what
## `backupctl doctor` and the airflow CLI need to look at this Airflow)
airflow-status:
	@$(AF_ENV) $(PY) -m tools.airflow_local status

lint: venv
	$(VENV)/bin/ruff check dags include tools tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf .demo .bench .airflow .pytest_cache .ruff_cache .mypy_cache
