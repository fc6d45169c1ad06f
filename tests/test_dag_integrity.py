"""Every DAG parses, and lakehouse_daily is wired the way operators rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.config import PROJECT_ROOT
from include.sources import PUBLISHED_TABLES, SOURCES


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
    from airflow.sdk import CronDataIntervalTimetable

    from include.config import get_settings
    from include.orchestration import DataDocsLink, LayerConnectOperator, pool_name

    settings_ = get_settings()  # what the DAG file read

    dag = dagbag.dags["lakehouse_daily"]
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert (dag.timetable.expression, str(dag.timetable.timezone)) == ("0 0 * * *", "UTC")
    assert dag.start_date.date().isoformat() == "2010-12-01" and dag.catchup is False
    assert dag.max_active_runs == 3
    for source in SOURCES:
        find = dag.get_task(f"{source}.find_delivery")
        upstream = find.task_id
        for layer in ("bronze", "silver", "gold"):
            job = dag.get_task(f"{source}.{layer}")
            # The default runtime: the job's code in the task, a client of the Spark Connect server.
            assert isinstance(job, LayerConnectOperator) and job.layer == layer
            assert job.upstream_task_ids == {upstream}
            args = job.job_arguments
            assert args[args.index("--source") + 1] == source
            assert args[args.index("--ingestion-date") + 1] == "{{ ds }}"
            assert job.pool == pool_name(layer)
            assert job.retries == 2 and job.retry_exponential_backoff
            assert job.execution_timeout.total_seconds() == settings_.task_timeout_minutes[layer] * 60
            assert [type(callback).__name__ for callback in job.on_failure_callback] == ["LakehouseFailureNotifier"]
            assert [type(link) for link in job.operator_extra_links] == [DataDocsLink]
            assert {asset.name for asset in job.outlets} == {f"{layer}.{table} in {settings_.warehouse}"
                                                            for table in PUBLISHED_TABLES[(layer, source)]}
            assert {asset.uri for asset in job.outlets} == {f"file://{settings_.table_path(layer, table)}"
                                                           for table in PUBLISHED_TABLES[(layer, source)]}
            upstream = job.task_id


def test_the_spark_submit_runtime_submits_each_layer_s_job_file_with_delta():
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    from include.config import Settings
    from include.orchestration import DataDocsLink, layer_task, pool_name

    settings = Settings.from_env({"LAKEHOUSE_RUNTIME": "local"})
    for source in SOURCES:
        for layer in ("bronze", "silver", "gold"):
            job = layer_task(layer, source, settings)
            assert isinstance(job, SparkSubmitOperator)
            assert Path(job.application) == PROJECT_ROOT / "spark_jobs" / f"{layer}.py"
            assert Path(job.application).is_file()
            args = job.application_args
            assert args[args.index("--source") + 1] == source
            # The Delta jars make setup keeps, or the package where they are missing.
            assert (job.packages or "").startswith("io.delta:delta-spark_") or "delta-spark_" in job.jars
            assert job.conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
            assert job.pool == pool_name(layer)
            assert [type(link) for link in job.operator_extra_links] == [DataDocsLink]
            assert {asset.name for asset in job.outlets} == {f"{layer}.{table} in {settings.warehouse}"
                                                            for table in PUBLISHED_TABLES[(layer, source)]}


def test_published_tables_are_the_jobs_tables_and_each_has_a_suite():
    from expectations.gate import suite_names
    from spark_jobs.transforms.dimensions import DIMENSIONS
    from spark_jobs.transforms.gold import marts_of

    for source in SOURCES:
        assert PUBLISHED_TABLES[("gold", source)] == tuple(mart.table for mart in marts_of(source))
    assert set(PUBLISHED_TABLES[("silver", "orders")]) >= {dimension.table for dimension in DIMENSIONS}
    published = {f"{layer}.{table}" for (layer, _), tables in PUBLISHED_TABLES.items() for table in tables}
    assert published == set(suite_names())


def test_params_have_descriptions_and_full_refresh_reaches_gold(dagbag):
    dag = dagbag.dags["lakehouse_daily"]
    params = dag.params
    assert params["full_refresh"] is False
    assert params["sources"] == list(SOURCES)
    for name in ("full_refresh", "sources"):
        assert params.get_param(name).description
    gold = dag.get_task("orders.gold")
    template = gold.job_arguments[gold.job_arguments.index("--refresh") + 1]
    from jinja2 import Template

    assert [Template(template).render(params={"full_refresh": value}) for value in (True, False)] == \
        ["full", "incremental"]


def test_a_missing_delivery_or_an_unselected_source_skips_the_source(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowSkipException

    import dags.lakehouse_daily as module

    monkeypatch.setenv("LAKEHOUSE_LANDING", str(tmp_path))
    with pytest.raises(AirflowSkipException, match="no orders delivery for 2010-12-01"):
        module.find_delivery.function("orders", ds="2010-12-01")
    (tmp_path / "orders" / "2010-12-01").mkdir(parents=True)
    assert module.find_delivery.function("orders", ds="2010-12-01") == str(tmp_path / "orders" / "2010-12-01")
    with pytest.raises(AirflowSkipException, match=r"orders is not among this run's sources \['events'\]"):
        module.find_delivery.function("orders", ds="2010-12-01", params={"sources": ["events"]})


def test_refused_data_fails_without_retry_and_other_failures_are_retried(monkeypatch, tmp_path):
    """Exit status 2 (a failed gate, an unreadable delivery) and 3 (a configuration error) are final; any other
    failure may be retried. The task runs the Spark provider's own hook, with a `spark-submit` on PATH that
    exits with the status."""
    import json
    import os

    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from include.orchestration import LayerJobOperator

    fake = tmp_path / "spark-submit"
    fake.write_text('#!/bin/sh\necho "the job\'s last words" >&2\nexit "$FAKE_SPARK_SUBMIT_STATUS"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_LOCAL", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    for status, expected in ((2, AirflowFailException), (3, AirflowFailException), (1, AirflowException),
                             (137, AirflowException)):
        monkeypatch.setenv("FAKE_SPARK_SUBMIT_STATUS", str(status))
        job = LayerJobOperator(layer="silver", source="events")
        with pytest.raises(AirflowException) as raised:
            job.execute({})
        assert type(raised.value) is expected, status
        if status == 2:
            assert "refused its input" in str(raised.value) and "not retried" in str(raised.value)
        if status == 3:
            assert "configuration error" in str(raised.value) and "not retried" in str(raised.value)


def test_a_small_delivery_s_task_submits_its_job_with_the_quick_compiler(tmp_path, monkeypatch):
    """The task sizes the date's delivery when it runs: up to LAKEHOUSE_QUICK_COMPILER_MB, spark-submit starts
    the driver with the quick compiler only, as the benchmark's command for the same delivery does."""
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    from include.config import Settings, spark_submit_command
    from include.orchestration import LayerJobOperator

    settings = Settings.from_env({"LAKEHOUSE_LANDING": str(tmp_path), "LAKEHOUSE_QUICK_COMPILER_MB": "1"})
    submitted = []
    monkeypatch.setattr(SparkSubmitOperator, "execute", lambda self, context: submitted.append(dict(self.conf)))
    folder = tmp_path / "events" / "2019-10-01"
    folder.mkdir(parents=True)
    delivery = folder / "events-2019-10-01.csv"
    arguments = ["--source", "events", "--ingestion-date", "2019-10-01", "--run-id", "manual__1"]
    for size, quick in ((1_000, True), (2_000_000, False)):
        delivery.write_bytes(b"x" * size)
        task = LayerJobOperator(layer="silver", source="events", settings=settings)
        task.application_args = arguments
        task.execute({"ds": "2019-10-01"})
        options = submitted[-1]["spark.driver.extraJavaOptions"]
        assert ("-XX:TieredStopAtLevel=1" in options) is quick, size
        assert settings.quick_compiler("events", "2019-10-01", arguments) is quick
        benchmarked = spark_submit_command(settings, "silver", arguments, "silver-events-2019-10-01", quick=quick)
        assert f"spark.driver.extraJavaOptions={options}" in benchmarked


def test_the_benchmark_submits_the_command_the_dag_task_submits(monkeypatch):
    """The benchmark times layer jobs with `spark_submit_command`; the DAG's task has the Spark provider
    build its command. Both must be the same spark-submit, or the benchmark measures something else."""
    import json

    from include.config import Settings, spark_submit_command
    from include.orchestration import LayerJobOperator

    settings = Settings.from_env({"LAKEHOUSE_SPARK_MASTER": "local[2]", "LAKEHOUSE_SHUFFLE_PARTITIONS": "3",
                                  "LAKEHOUSE_SPARK_JAVA_OPTIONS": "-XX:TieredStopAtLevel=1"})
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_LOCAL", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    for layer in ("bronze", "silver", "gold"):
        task = LayerJobOperator(layer=layer, source="events", settings=settings, options=["--refresh", "full"])
        arguments = ["--source", "events", "--ingestion-date", "2019-10-01", "--run-id", "manual__1",
                     "--refresh", "full"]
        task.application_args, task.name = arguments, f"{layer}-events-2019-10-01"
        submitted = task._get_hook()._build_spark_submit_command(task.application)
        benchmarked = spark_submit_command(settings, layer, arguments, f"{layer}-events-2019-10-01")

        def options(command, layer=layer):
            """(option, value) pairs before the application, and the application with its arguments."""
            application = next(index for index, part in enumerate(command) if part.endswith(f"{layer}.py"))
            head = command[1:application]
            return sorted(zip(head[::2], head[1::2])), command[application:]

        assert options(benchmarked) == options(submitted)
