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
# The local Spark "cluster" the DAG submits to when LAKEHOUSE_RUNTIME=local (the default).
export AIRFLOW_CONN_SPARK_LOCAL ?= {"conn_type": "spark", "host": "$(LAKEHOUSE_SPARK_MASTER)"}

RUN_DAYS ?= 3
RUN_EVENTS_PER_DAY ?= 20000
RUN_FIRST_DAY ?= 2010-12-01

.PHONY: help setup run test test-slow dag-test airflow-db clean

help:
	@echo "make setup                   create .venv with the pinned requirements (idempotent)"
	@echo "make run                     stage real orders and generated events, run lakehouse_daily, show the tables"
	@echo "make test                    run the test suite (all but the tests marked slow)"
	@echo "make test-slow               run the slow acceptance tests"
	@echo "make dag-test DATE=YYYY-MM-DD run lakehouse_daily for one ingestion date (airflow dags test)"
	@echo "make clean                   remove data/, .airflow/ and .venv/"

setup: $(SETUP_STAMP)
	@bash include/check-prerequisites.sh "$(BIN)/python"
	@# The project root on the venv's path: DAGs, jobs, tools and tests import include/ and spark_jobs/.
	@echo "$(CURDIR)" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/lakehouse.pth"
	@# Data Docs' scripts and styles, so the site works opened from disk without internet access.
	@$(BIN)/python -m include.tools.data_docs_assets > /dev/null \
		|| echo "setup: could not fetch the Data Docs assets from the npm registry; the pages will load them from CDNs"

# --compile-bytecode: every Airflow task, spark-submit driver and test process imports Airflow, PySpark
# and Great Expectations; compiled once here, they are not recompiled from source at each start
# (which is what happens where PYTHONDONTWRITEBYTECODE is set: importing GX took 8.6 s instead of 5.2).
$(SETUP_STAMP): requirements.txt
	@bash include/check-prerequisites.sh "$(PYTHON)"
	@started=$$(date +%s); \
	if [ ! -x "$(BIN)/python" ]; then $(PYTHON) -m venv "$(VENV)"; fi && \
	$(BIN)/python -m pip install --quiet --upgrade pip uv && \
	$(BIN)/uv pip install --quiet --compile-bytecode --python "$(BIN)/python" -r requirements.txt && \
	echo "setup: installed requirements.txt into .venv in $$(( $$(date +%s) - started )) s"
	@touch "$@"

airflow-db: setup
	@mkdir -p "$(AIRFLOW_HOME)"
	@airflow db migrate > "$(AIRFLOW_HOME)/db-migrate.log" 2>&1 || { cat "$(AIRFLOW_HOME)/db-migrate.log"; exit 1; }

run: airflow-db
	@python -m include.tools.stage_orders --from $(RUN_FIRST_DAY) --days $(RUN_DAYS)
	@python -m include.tools.generate_events --from $(RUN_FIRST_DAY) --days $(RUN_DAYS) \
		--events-per-day $(RUN_EVENTS_PER_DAY) --defect-rate 0.01
	@for date in $$(python -m include.tools.stage_orders --from $(RUN_FIRST_DAY) --days $(RUN_DAYS) --list); do \
		echo "== lakehouse_daily $$date"; \
		airflow dags test lakehouse_daily $$date > "$(AIRFLOW_HOME)/dags-test-$$date.log" 2>&1 \
			|| { tail -n 60 "$(AIRFLOW_HOME)/dags-test-$$date.log"; echo "the run for $$date failed; full log: $(AIRFLOW_HOME)/dags-test-$$date.log"; exit 1; }; \
		grep -hoE "(bronze [a-z]+ [0-9-]+: [0-9,]+ rows .* -> [^ ]+|silver [a-z]+ [0-9-]+: [0-9,]+ rows kept, [0-9,]+ quarantined|gold [a-z]+ [a-z_]+: [a-z]+ refresh to silver version [0-9]+(, [0-9,]+ keys recomputed)?|no [a-z]+ delivery for [^']+)" "$(AIRFLOW_HOME)/dags-test-$$date.log" | sort -u; \
	done
	@python -m include.tools.show_tables

dag-test: airflow-db
	@test -n "$(DATE)" || { echo "usage: make dag-test DATE=YYYY-MM-DD" >&2; exit 2; }
	airflow dags test lakehouse_daily $(DATE)
	@python -m include.tools.show_tables --date $(DATE)

# Two pytest workers (pytest-xdist): the Airflow end-to-end runs and the in-process Spark tests wait
# on different things, so they overlap well on two cores. Tests that share a costly fixture carry the
# same xdist_group and run on one worker.
TEST_WORKERS ?= 2

test: setup
	python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=12 -m "not slow"

# Acceptance runs too long for every change: ten real days through silver and gold in reverse order and with
# reruns, generated event days through gold in and out of order, the history bench on three small days.
test-slow: setup
	python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=12 -m slow

clean:
	rm -rf data .airflow .venv .pytest_cache
