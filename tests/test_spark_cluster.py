"""LAKEHOUSE_RUNTIME=spark: lakehouse_daily submits every layer job to a Spark standalone cluster (a
master and a worker started by `make spark-cluster`'s code), shipping the project's code to the
executors, and the tables equal a local run's - one that addresses them by catalog name
(LAKEHOUSE_CATALOG, the Unity Catalog form Databricks uses), so names and paths give the same tables.

The DAG run on the cluster is the orders source's three layer jobs (the run's `sources` param): the
events jobs are submitted the same way, and each job on the cluster costs about 50 s of make test's
15 minutes. The local run by catalog name builds both sources, and every published table there has the
columns the project's contract, docs/architecture.md, gives it."""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import date

import pytest

from include.sources import EVENTS, ORDERS, PUBLISHED_TABLES
from include.tools import generate_events, spark_cluster, stage_orders
from tests.helpers import airflow_env, documented_columns, free_port, prepare_airflow_db, published_tables

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("spark_cluster")]

DAY = "2010-12-01"
EVENTS_PER_DAY = 2_000
CATALOG = "spark_catalog"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("spark-cluster")
    env = airflow_env(root / "airflow")
    env.pop("PYSPARK_PYTHON", None)  # executors find the virtualenv's python on the worker's PATH
    cluster = spark_cluster.Cluster(home=root / "cluster", port=free_port(), ui_port=free_port())
    spark_cluster.start(cluster, workers=1, cores=2, memory="2g", env=env)
    yield cluster, root, env
    spark_cluster.stop(cluster)
    assert not spark_cluster._running(cluster), "the cluster's processes outlived stop"


def test_the_dag_runs_every_layer_on_the_cluster_and_its_tables_equal_a_local_run(cluster, spark):
    cluster, root, _ = cluster
    landing = root / "landing"
    stage_orders.main(["--from", DAY, "--days", "1", "--landing", str(landing)])
    generate_events.main(["--from", DAY, "--days", "1", "--events-per-day", str(EVENTS_PER_DAY),
                          "--defect-rate", "0.01", "--landing", str(landing)])
    env = airflow_env(
        root / "airflow",
        LAKEHOUSE_RUNTIME="spark",
        # The cluster's master, as a user points the connection at theirs.
        AIRFLOW_CONN_SPARK_DEFAULT=cluster.master_url,
        LAKEHOUSE_LANDING=str(landing),
        LAKEHOUSE_WAREHOUSE=str(root / "warehouse"),
        LAKEHOUSE_SHUFFLE_PARTITIONS="2",
        LAKEHOUSE_SPARK_UI="false",
        LAKEHOUSE_SPARK_EXECUTOR_MEMORY="1g",
        LAKEHOUSE_SPARK_JAVA_OPTIONS="-XX:TieredStopAtLevel=1",
    )
    env.pop("PYSPARK_PYTHON", None)  # executors find the virtualenv's python on the worker's PATH
    prepare_airflow_db(env)
    started = time.monotonic()
    done = subprocess.run(["airflow", "dags", "test", "lakehouse_daily", DAY, "--conf",
                           json.dumps({"sources": [ORDERS.name]})], env=env, capture_output=True, text=True,
                          timeout=1200)
    (root / "dags-test.log").write_text(done.stdout + done.stderr)
    print(f"lakehouse_daily {DAY} on the cluster: {time.monotonic() - started:.0f} s (log {root / 'dags-test.log'})")
    output = done.stdout + done.stderr
    states = re.findall(r"DagRun Finished: dag_id=lakehouse_daily, logical_date=" + DAY + r".*?state=(\w+)", output)
    assert states == ["success"], f"exit {done.returncode}:\n{output[-5000:]}"
    assert f"--master {cluster.master_url}" in output, "the jobs were not submitted to the cluster's master"
    assert "spark.archives=" in output and "lakehouse-code-" in output, "the project's code was not shipped"
    assert "--py-files" not in output, "the driver must import the installed package, not a zip"

    # The master's own record: one finished application per layer and source, each given executors.
    state = cluster.state()
    finished = {app["name"]: app for app in state["completedapps"]}
    expected = {f"{layer}-{ORDERS.name}-{DAY}" for layer in ("bronze", "silver", "gold")}
    assert expected == set(finished), sorted(finished)
    assert all(finished[name]["state"] == "FINISHED" and finished[name]["cores"] > 0 for name in expected)
    # Each executor unpacked the project's code where its Python workers look for it.
    for name in expected:
        unpacked = list((cluster.home / "work" / finished[name]["id"]).glob("*/lakehouse_code/spark_jobs/gold.py"))
        assert unpacked, f"{name}: no executor unpacked the project's code"

    # The same day through the same job code in this process, on local Spark, with the tables addressed
    # by catalog name (LAKEHOUSE_CATALOG, as on Databricks' Unity Catalog) in the session's own catalog.
    from include.config import Settings
    from spark_jobs.bronze import run_bronze
    from spark_jobs.gold import run_gold
    from spark_jobs.silver import run_silver
    from tests.conftest import TEST_SPARK_ENV

    local = Settings.from_env({**TEST_SPARK_ENV, "LAKEHOUSE_GATES": "false", "LAKEHOUSE_LANDING": str(landing),
                               "LAKEHOUSE_WAREHOUSE": str(root / "unused"), "LAKEHOUSE_CATALOG": CATALOG})
    for layer in ("bronze", "silver", "gold"):
        spark.sql(f"CREATE SCHEMA {CATALOG}.{layer} LOCATION '{root / 'catalog' / layer}'")
    try:
        for run in (run_bronze, run_silver, run_gold):
            run(spark, local, ORDERS, date.fromisoformat(DAY), f"local-{DAY}")
        on_cluster = published_tables(spark, root / "warehouse", ORDERS.name)
        assert on_cluster == published_tables(spark, root / "catalog", ORDERS.name)
        assert on_cluster["bronze.orders"] and on_cluster["gold.daily_sales"], "no orders rows"
        # The events jobs by name too (they share bronze/ingested_files and silver/quarantine with orders).
        for run in (run_bronze, run_silver, run_gold):
            run(spark, local, EVENTS, date.fromisoformat(DAY), f"local-{DAY}")
        assert not (root / "unused").exists(), "a job wrote to a path although its tables have names"
        for (layer, _source), names in PUBLISHED_TABLES.items():
            for table in names:
                assert spark.catalog.tableExists(f"{CATALOG}.{layer}.{table}"), f"{layer}.{table} has no name"
        assert spark.table(f"{CATALOG}.gold.funnel_daily").count() > 0, "no events rows"
        # Every published table has the columns docs/architecture.md, the project's contract, gives it.
        documented = documented_columns()
        assert set(documented) == {f"{layer}.{table}" for (layer, _), names in PUBLISHED_TABLES.items()
                                   for table in names}, "docs/architecture.md documents other tables"
        for name, columns in documented.items():
            assert spark.table(f"{CATALOG}.{name}").columns == columns, f"docs/architecture.md: {name}"
        # The change feed silver turns on for gold is a property of the named table too.
        properties = dict(spark.sql(f"SHOW TBLPROPERTIES {CATALOG}.silver.orders").collect())
        assert properties.get("delta.enableChangeDataFeed") == "true"
    finally:
        for layer in ("bronze", "silver", "gold"):
            spark.sql(f"DROP SCHEMA IF EXISTS {CATALOG}.{layer} CASCADE")
