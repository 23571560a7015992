# FMR V2 backups — see README.md.  `make demo` and `make test` work from a fresh clone.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
UV ?= $(shell command -v uv 2>/dev/null)
STAMP := $(VENV)/.installed

.PHONY: venv demo demo-cli test test-deps bench lint airflow airflow-settings clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@if [ -z "$(UV)" ]; then python3 -m pip install -q uv==0.13.8; fi
	@[ -x $(PY) ] || uv venv -q --python 3.11 $(VENV)
	VIRTUAL_ENV=$(VENV) uv pip install -q -r requirements.txt
	VIRTUAL_ENV=$(VENV) uv pip install -q --no-deps -e .
	@touch $(STAMP)

## demo: the main job on the embedded default (local storage, SQLite, no servers)
demo: venv
	$(PY) -m backups.demo.run

## demo-cli: the same engine demo without Airflow
demo-cli: venv
	$(PY) -m backups.demo.run

## test-deps: Debian packages the tests use (sshd for SFTP, PostgreSQL client tools, zstd, setpriv)
test-deps:
	@missing=""; \
	 [ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	 command -v pg_dump >/dev/null || missing="$$missing postgresql-client"; \
	 command -v zstd >/dev/null || missing="$$missing zstd"; \
	 command -v setpriv >/dev/null || missing="$$missing util-linux"; \
	 if [ -n "$$missing" ]; then \
	   if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	   else echo "install:$$missing (Debian packages) and re-run"; exit 1; fi; \
	 fi

## test: install what the tests need, then run them all (one pytest process)
test: venv test-deps
	$(PY) -m pytest

## bench: the benchmark (not a test); see benchmarks/README.md
bench: venv
	$(PY) benchmarks/run.py

lint: venv
	$(VENV)/bin/ruff check dags include tests benchmarks

clean:
	rm -rf .demo .bench .airflow .pytest_cache .ruff_cache
