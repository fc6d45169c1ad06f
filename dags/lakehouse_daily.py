"""
### lakehouse_daily

One run per ingestion date, the run's logical date: the daily run that starts after a day ends
processes that day's deliveries. Each source's delivery in the landing zone,
`$LAKEHOUSE_LANDING/<source>/<YYYY-MM-DD>/`, goes through one Spark job per layer:

- **bronze**: every delivered line as one row, raw, with the file it came from.
- **silver**: typed, clean rows; every rejected row in `silver/quarantine` with the rule it broke.
  For orders, also the customer and product history (`silver/dim_customer`, `silver/dim_product`).
- **gold**: the marts, brought up to date with silver by recomputing the keys silver changed.

Sources:
- **orders**: order lines in the UCI Online Retail layout -> `bronze/orders` -> `silver/orders` ->
  `gold/daily_sales`, `gold/customer_rfm`, `gold/product_performance`
- **events**: clickstream events in the Kaggle/REES46 layout -> `bronze/events` -> `silver/events` ->
  `gold/funnel_daily`, `gold/product_conversion`, `gold/user_engagement`, `gold/hourly_sales`

Each job validates its output with the layer's Great Expectations suites (`expectations/`) before
writing it: a date that fails its gate fails the task at once (exit status 2), the later layers of
that source do not run, the published tables keep their previous version, and the task log prints
what failed and the Data Docs page (`$LAKEHOUSE_DATA_DOCS`, default `data/data-docs/index.html`).

A source with no folder for the date delivered nothing: its tasks are skipped (the log says which
folder was looked for) and the other source goes on. Each job replaces its date atomically, so
clearing a task or re-running a date is always safe.

Trigger with `refresh` = `full` to rebuild the gold marts from all of silver instead of recomputing
the keys silver changed (the result is the same; a full refresh is the repair tool).
"""

from __future__ import annotations

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import CronDataIntervalTimetable, Param, TaskGroup, dag, task

from include.config import PROJECT_ROOT, delta_package, get_settings
from include.sources import SOURCES

SETTINGS = get_settings()
JOBS = PROJECT_ROOT / "spark_jobs"
# The driver's heap is a spark-submit option; the rest of the Spark settings travel as --conf.
SPARK_CONF = {key: value for key, value in SETTINGS.spark_conf().items() if key != "spark.driver.memory"}


@task(task_id="find_delivery")
def find_delivery(source: str, ds: str | None = None) -> str:
    """Skip the source's tasks for this date when its landing folder does not exist."""
    from airflow.sdk.exceptions import AirflowSkipException

    from include.config import get_settings

    folder = get_settings().landing_dir(source, ds)
    if not folder.is_dir():
        raise AirflowSkipException(f"no {source} delivery for {ds}: {folder} does not exist")
    files = sorted(entry.name for entry in folder.iterdir())
    print(f"{source} delivery for {ds} in {folder}: {len(files)} entries {files}")
    return str(folder)


@dag(
    dag_id="lakehouse_daily",
    # Daily data intervals: the run for day D starts when D is over, with logical date D.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2010, 12, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 0},
    tags=["lakehouse", "bronze", "silver", "gold"],
    params={
        "refresh": Param(
            "incremental",
            enum=["incremental", "full"],
            title="Gold refresh",
            description="incremental: recompute the keys silver changed; full: rebuild the gold marts from all of silver",
        ),
    },
    doc_md=__doc__,
)
def lakehouse_daily():
    for source in SOURCES.values():
        with TaskGroup(group_id=source.name, tooltip=source.description):
            (find_delivery(source.name) >> layer_job("bronze", source.name) >> layer_job("silver", source.name)
             >> layer_job("gold", source.name, ["--refresh", "{{ params.refresh }}"]))


def layer_job(layer: str, source: str, options: list[str] | None = None) -> SparkSubmitOperator:
    """The layer's Spark job for one source and the run's ingestion date."""
    return SparkSubmitOperator(
        task_id=layer,
        conn_id=SETTINGS.spark_conn_id,
        application=str(JOBS / f"{layer}.py"),
        application_args=["--source", source, "--ingestion-date", "{{ ds }}", "--run-id", "{{ run_id }}",
                          *(options or [])],
        name=f"{layer}-{source}-{{{{ ds }}}}",
        packages=delta_package(),
        conf=SPARK_CONF,
        driver_memory=SETTINGS.driver_memory,
    )


lakehouse_daily()
