"""Every DAG parses, and lakehouse_daily is wired the way operators rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.config import PROJECT_ROOT
from include.sources import SOURCES


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert dagbag.dags, "no DAG was found in dags/"


def test_every_dag_has_tags_docs_and_retries_set(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md, f"{dag_id} has no doc_md"
        assert "retries" in dag.default_args, f"{dag_id} does not set retries"


def test_lakehouse_daily_runs_bronze_then_silver_then_gold_per_source(dagbag):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    from airflow.sdk import CronDataIntervalTimetable

    dag = dagbag.dags["lakehouse_daily"]
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert (dag.timetable.expression, str(dag.timetable.timezone)) == ("0 0 * * *", "UTC")
    assert dag.max_active_runs == 1
    for source in SOURCES:
        find = dag.get_task(f"{source}.find_delivery")
        upstream = find.task_id
        for layer in ("bronze", "silver", "gold"):
            job = dag.get_task(f"{source}.{layer}")
            assert isinstance(job, SparkSubmitOperator)
            assert job.upstream_task_ids == {upstream}
            assert Path(job.application) == PROJECT_ROOT / "spark_jobs" / f"{layer}.py"
            assert Path(job.application).is_file()
            args = job.application_args
            assert args[args.index("--source") + 1] == source
            assert args[args.index("--ingestion-date") + 1] == "{{ ds }}"
            assert job.packages.startswith("io.delta:delta-spark_")
            assert job.conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
            upstream = job.task_id
        gold = dag.get_task(f"{source}.gold").application_args
        assert gold[gold.index("--refresh") + 1] == "{{ params.refresh }}"


def test_gold_refresh_is_a_param_with_two_choices(dagbag):
    params = dagbag.dags["lakehouse_daily"].params
    assert params["refresh"] == "incremental"
    assert params.get_param("refresh").schema["enum"] == ["incremental", "full"]


def test_a_missing_delivery_skips_the_source(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowSkipException

    import dags.lakehouse_daily as module

    monkeypatch.setenv("LAKEHOUSE_LANDING", str(tmp_path))
    with pytest.raises(AirflowSkipException, match="no orders delivery for 2010-12-01"):
        module.find_delivery.function("orders", ds="2010-12-01")
    (tmp_path / "orders" / "2010-12-01").mkdir(parents=True)
    assert module.find_delivery.function("orders", ds="2010-12-01") == str(tmp_path / "orders" / "2010-12-01")
