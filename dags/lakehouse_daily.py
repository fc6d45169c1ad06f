"""
### lakehouse_daily

One run per ingestion date, the run's logical date: the daily run that starts after a day ends
processes that day's deliveries. Each source's delivery in the landing zone,
`$LAKEHOUSE_LANDING/<source>/<YYYY-MM-DD>/`, is loaded into its Delta bronze table by a Spark job.

- **orders**: order lines in the UCI Online Retail layout -> `bronze/orders`
- **events**: clickstream events in the Kaggle/REES46 layout -> `bronze/events`

A source with no folder for the date delivered nothing: its tasks are skipped (the log says which
folder was looked for) and the other source goes on. Each job replaces its date atomically, so
clearing a task or re-running a date is always safe.
"""

from __future__ import annotations

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import CronDataIntervalTimetable, TaskGroup, dag, task

from include.config import PROJECT_ROOT, delta_package, get_settings
from include.sources import SOURCES

SETTINGS = get_settings()
BRONZE_JOB = PROJECT_ROOT / "spark_jobs" / "bronze.py"
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
    tags=["lakehouse", "bronze"],
    doc_md=__doc__,
)
def lakehouse_daily():
    for source in SOURCES.values():
        with TaskGroup(group_id=source.name, tooltip=source.description):
            bronze = SparkSubmitOperator(
                task_id="bronze",
                conn_id=SETTINGS.spark_conn_id,
                application=str(BRONZE_JOB),
                application_args=[
                    "--source", source.name,
                    "--ingestion-date", "{{ ds }}",
                    "--run-id", "{{ run_id }}",
                ],
                name=f"bronze-{source.name}-{{{{ ds }}}}",
                packages=delta_package(),
                conf=SPARK_CONF,
                driver_memory=SETTINGS.driver_memory,
            )
            find_delivery(source.name) >> bronze


lakehouse_daily()
