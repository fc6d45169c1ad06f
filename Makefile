# The lakehouse's commands. `make run` and `make test` need only Python 3.11+ and Java 17 or 21.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
SETUP_STAMP := $(VENV)/.installed

# Everything lives inside the checkout unless the environment says otherwise.
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export LAKEHOUSE_LANDING ?= $(CURDIR)/data/landing
export LAKEHOUSE_WAREHOUSE ?= $(CURDIR)/data/warehouse
export LAKEHOUSE_SPARK_MASTER ?= local[*]
# Airflow starts `airflow` and `spark-submit` as subprocesses found on PATH: the venv's come first.
export PATH := $(BIN):$(PATH)
export PYSPARK_PYTHON := $(BIN)/python
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION := True
# The UI's port (`make airflow`).
export AIRFLOW__API__PORT ?= 8080
# The embedded SQLite metadata database: writers wait up to 60 s for each other (include/airflow_sqlite.py).
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS ?= include.airflow_sqlite.CONNECT_ARGS
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC ?= include.airflow_sqlite.CONNECT_ARGS

RUN_DAYS ?= 3
RUN_EVENTS_PER_DAY ?= 20000
RUN_FIRST_DAY ?= 2010-12-01

.PHONY: help setup lock wheel jvm-archive lint run test test-slow test-faults bench browser dag-test airflow airflow-stop backfill airflow-db spark-connect \
	spark-connect-stop spark-cluster spark-cluster-stop clean

help:
	@echo "make setup                   create .venv with the locked requirements (idempotent)"
	@echo "make lock                    resolve requirements.txt and requirements-dev.txt into requirements.lock again"
	@echo "make wheel                   build dist/lakehouse-<version>-py3-none-any.whl, what a Databricks job installs"
	@echo "make jvm-archive             the Spark driver's class archive spark-submit jobs start with (tests, bench and the local and spark runtimes make it)"
	@echo "make run                     stage real orders and generated events, run lakehouse_daily, show the tables"
	@echo "make test                    run the test suite (all but the tests marked slow)"
	@echo "make lint                    ruff, and deptry: every imported package declared, every declared one used"
	@echo "make test-slow               run the slow acceptance tests"
	@echo "make test-faults             run the fault suite (its fast cases are in make test)"
	@echo "make bench [BENCH_ARGS=...]  the benchmark: layers, DuckDB on the same input, growth, fixed cost (bench-results/)"
	@echo "make dag-test DATE=YYYY-MM-DD run lakehouse_daily for one ingestion date (airflow dags test)"
	@echo "make airflow                 start Airflow in the background: UI on localhost:8080, login printed"
	@echo "make airflow-stop            stop it (running tasks included)"
	@echo "make backfill FROM=YYYY-MM-DD TO=YYYY-MM-DD [REPROCESS=none|failed|completed]"
	@echo "                             backfill lakehouse_daily over those ingestion dates (Airflow must be up)"
	@echo "make spark-connect           start the Spark Connect server the layer jobs run on (LAKEHOUSE_RUNTIME=connect)"
	@echo "make spark-connect-stop      stop it"
	@echo "make spark-cluster           start a Spark standalone master and worker on 127.0.0.1 (LAKEHOUSE_RUNTIME=spark)"
	@echo "make spark-cluster-stop      stop them"
	@echo "make clean                   remove data/, .airflow/, .venv/ and bench-results/"

setup: $(SETUP_STAMP)
	@bash include/check-prerequisites.sh "$(BIN)/python"
	@# The Delta jars in the venv: layer jobs start with --jars instead of resolving --packages each time.
	@$(BIN)/python -m include.tools.delta_jars > /dev/null \
		|| echo "setup: could not resolve the Delta jars; layer jobs will resolve the Delta package at each start"
	@# Data Docs' scripts and styles, so the site works opened from disk without internet access.
	@$(BIN)/python -m include.tools.data_docs_assets > /dev/null \
		|| echo "setup: could not fetch the Data Docs assets from the npm registry; the pages will load them from CDNs"

# The Spark driver's class data sharing archive (include/tools/jvm_archive.py): every spark-submit layer job's
# JVM starts with Spark's classes loaded. About a minute, once, and only for what starts a JVM per job: the
# `local` and `spark` runtimes, the tests and the benchmark. The Spark Connect runtime starts one JVM and does
# without, so `make run` on it does not wait for the archive.
jvm-archive: setup
	@$(BIN)/python -m include.tools.jvm_archive > /dev/null \
		|| echo "setup: could not build the Spark driver's class archive; layer jobs will start without it"
# What a target that may start layer jobs needs besides setup, for the runtime LAKEHOUSE_RUNTIME chooses.
RUNTIME_NEEDS := $(if $(filter-out connect,$(or $(LAKEHOUSE_RUNTIME),connect)),jvm-archive)

# --compile-bytecode: every Airflow task, spark-submit driver and test process imports Airflow, PySpark
# and Great Expectations; compiled once here, they are not recompiled from source at each start
# (which is what happens where PYTHONDONTWRITEBYTECODE is set: importing GX took 8.6 s instead of 5.2).
# requirements.lock: every package both files resolve to, each at one version, for Python 3.11+ on any
# platform (`make lock` writes it again after a change to either file; tests/test_requirements.py fails
# while it is behind them).
# The project itself goes in editable (pyproject.toml): the checkout's code is what runs, and its console
# scripts (lakehouse-airflow, lakehouse-stage-orders, ...) are on the venv's PATH.
$(SETUP_STAMP): requirements.txt requirements-dev.txt requirements.lock pyproject.toml
	@bash include/check-prerequisites.sh "$(PYTHON)"
	@started=$$(date +%s); \
	if [ ! -x "$(BIN)/python" ]; then $(PYTHON) -m venv "$(VENV)"; fi && \
	$(BIN)/python -m pip install --quiet --upgrade pip uv && \
	$(BIN)/uv pip install --quiet --compile-bytecode --python "$(BIN)/python" -r requirements.lock && \
	rm -f "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/lakehouse.pth" && \
	$(BIN)/uv pip install --quiet --no-deps --python "$(BIN)/python" --editable . && \
	echo "setup: installed requirements.lock and the project into .venv in $$(( $$(date +%s) - started )) s"
	@touch "$@"

# LOCK_OPTIONS=--upgrade moves every package to its newest release the pins allow; without it the packages
# already in requirements.lock keep their versions where they still fit.
lock: $(SETUP_STAMP)
	@$(BIN)/uv pip compile --quiet --universal --python-version 3.11 $(LOCK_OPTIONS) \
		requirements.txt requirements-dev.txt -o requirements.lock
	@echo "lock: requirements.lock written; \`make setup\` installs it"

# The wheel of pyproject.toml: the jobs, the suites and include/'s shared code, without the benchmark, the
# sample data, the DAG and the tests. The Databricks bundle (include/databricks.yml) uploads it with the files.
wheel: $(SETUP_STAMP)
	@rm -rf dist/lakehouse-*.whl
	@$(BIN)/uv build --quiet --wheel --out-dir dist .
	@ls dist/lakehouse-*.whl

# The metadata database, with the pools and connections of include/orchestration.py.
airflow-db: setup $(RUNTIME_NEEDS)
	@mkdir -p "$(AIRFLOW_HOME)"
	@airflow db migrate > "$(AIRFLOW_HOME)/db-migrate.log" 2>&1 || { cat "$(AIRFLOW_HOME)/db-migrate.log"; exit 1; }
	@python -m include.orchestration

airflow: setup $(RUNTIME_NEEDS)
	@lakehouse-airflow start

# The Spark Connect server (include/tools/spark_connect.py): 127.0.0.1:15002, its token from the Airflow connection
# spark_connect_default (or LAKEHOUSE_CONNECT_TOKEN). `make run`, `make dag-test` and `make airflow` start it when
# LAKEHOUSE_RUNTIME=connect (the default) and it is not up.
spark-connect: airflow-db
	@lakehouse-spark-connect start

spark-connect-stop:
	@if [ -x "$(BIN)/lakehouse-spark-connect" ]; then lakehouse-spark-connect stop; else echo "Spark is not installed"; fi

airflow-stop:
	@if [ -x "$(BIN)/lakehouse-airflow" ]; then lakehouse-airflow stop; else echo "Airflow is not installed"; fi

# A Spark standalone cluster on this machine (include/tools/spark_cluster.py): master spark://127.0.0.1:7077,
# its UI on 8081. Run the DAG on it with LAKEHOUSE_RUNTIME=spark (the spark_default connection points here
# unless you changed it).
SPARK_WORKERS ?= 1
SPARK_WORKER_MEMORY ?= 4g
spark-cluster: setup
	@lakehouse-spark-cluster start --workers $(SPARK_WORKERS) --memory $(SPARK_WORKER_MEMORY)

spark-cluster-stop:
	@if [ -x "$(BIN)/lakehouse-spark-cluster" ]; then lakehouse-spark-cluster stop; else echo "Spark is not installed"; fi

REPROCESS ?= none
backfill: setup
	@test -n "$(FROM)" -a -n "$(TO)" || { echo "usage: make backfill FROM=YYYY-MM-DD TO=YYYY-MM-DD [REPROCESS=none|failed|completed]" >&2; exit 2; }
	@lakehouse-airflow backfill --from $(FROM) --to $(TO) --reprocess $(REPROCESS)

run: airflow-db
	@lakehouse-spark-connect ensure
	@lakehouse-stage-orders --from $(RUN_FIRST_DAY) --days $(RUN_DAYS)
	@lakehouse-generate-events --from $(RUN_FIRST_DAY) --days $(RUN_DAYS) \
		--events-per-day $(RUN_EVENTS_PER_DAY) --defect-rate 0.01
	@for date in $$(lakehouse-stage-orders --from $(RUN_FIRST_DAY) --days $(RUN_DAYS) --list); do \
		echo "== lakehouse_daily $$date"; \
		airflow dags test lakehouse_daily $$date > "$(AIRFLOW_HOME)/dags-test-$$date.log" 2>&1 \
			|| { tail -n 60 "$(AIRFLOW_HOME)/dags-test-$$date.log"; echo "the run for $$date failed; full log: $(AIRFLOW_HOME)/dags-test-$$date.log"; exit 1; }; \
		grep -hoE "(bronze [a-z]+ [0-9-]+: [0-9,]+ rows .* -> [^ ]+|silver [a-z]+ [0-9-]+: [0-9,]+ rows kept, [0-9,]+ quarantined|gold [a-z]+ [a-z_]+: [a-z]+ refresh to silver version [0-9]+(, [0-9,]+ keys recomputed)?|no [a-z]+ delivery for [^']+)" "$(AIRFLOW_HOME)/dags-test-$$date.log" | sort -u; \
	done
	@lakehouse-show-tables

dag-test: airflow-db
	@test -n "$(DATE)" || { echo "usage: make dag-test DATE=YYYY-MM-DD" >&2; exit 2; }
	@lakehouse-spark-connect ensure
	airflow dags test lakehouse_daily $(DATE)
	@lakehouse-show-tables --date $(DATE)

# Two pytest workers (pytest-xdist): the Airflow end-to-end runs and the in-process Spark tests wait
# on different things, so they overlap well on two cores (three workers were slower: 20:32 against 20:01,
# everything contending for the cores). Tests that share a costly fixture carry the same xdist_group and
# run on one worker.
TEST_WORKERS ?= 2

lint: setup
	ruff check .
	deptry . --no-ansi

test: setup jvm-archive browser
	python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=12 -m "not slow"

# Acceptance runs too long for every change: a backfill of five real days through a running Airflow, ten real days through silver and gold in reverse order and with
# reruns, generated event days through gold in and out of order, the history bench on three small days.
test-slow: setup jvm-archive browser
	python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=12 -m slow

# The fault suite (tests/test_faults.py): broken configuration, empty and odd deliveries, a moved warehouse,
# jobs and the Spark Connect server killed, two writers at once, dates out of order with the gates on, a full
# disk; `make test` runs its fast cases.
test-faults: setup jvm-archive
	python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=12 -m faults

# The benchmark (include/bench/benchmark.py): about an hour on 2 cores with the defaults; BENCH_ARGS="--help"
# lists its options, e.g.
# BENCH_ARGS="--events-per-day 200000 --skip growth".
BENCH_ARGS ?=
bench: setup jvm-archive
	python -m include.bench $(BENCH_ARGS)

# Debian's chromium and chromedriver for the browser test, when missing and installable.
browser:
	@bash include/install-browser.sh

clean: airflow-stop spark-connect-stop spark-cluster-stop
	rm -rf data .airflow .spark-connect .spark-cluster .venv .pytest_cache bench-results dist build lakehouse.egg-info
