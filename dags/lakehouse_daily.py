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
folder was looked for) and the other source goes on - unless the source delivered before and has not for
`LAKEHOUSE_STALE_AFTER_DAYS_<SOURCE>` days (orders 14, events 3; 0: never), when the run fails loudly.
Each job replaces its date atomically, so clearing a task or re-running a date is always safe.

Scheduling: one run a day from `LAKEHOUSE_START_DATE` (default 2010-12-01, the first real orders day),
catching up missed days only if `LAKEHOUSE_CATCHUP` is true; up to `LAKEHOUSE_MAX_ACTIVE_RUNS` dates at
once (default 3). Each layer's jobs run one at a time whatever the number of runs (pools
`lakehouse_bronze`, `lakehouse_silver`, `lakehouse_gold` with one slot each): Delta on a local disk
does not serialise concurrent writers. A backfill (`make backfill FROM=... TO=...`, `airflow backfill
create`, the REST API or the UI's backfill dialog) is an ordinary set of runs keyed by ingestion date.

Retries: a job that failed for another reason than its data (a killed JVM, a full disk) is retried
`LAKEHOUSE_TASK_RETRIES` times (default 2) with exponential backoff; refused data (exit status 2) and a
configuration error (exit status 3) are not retried. A job running longer than
`LAKEHOUSE_TASK_TIMEOUT_MINUTES_<LAYER>` (bronze 60, silver and gold 120) is stopped and retried. Every
failure is logged as one line and, with `LAKEHOUSE_ALERT_CONN_ID` set, posted or mailed through that
connection (include/alerts.py).

Params of a manual run or backfill: **full_refresh** rebuilds the gold marts from all of silver instead of
recomputing the keys silver changed (the result is the same; a full refresh is the repair tool);
**sources** limits the run to some sources (the others' tasks are skipped); **max_quarantine_share**
accepts a date silver refused for its quarantined share by raising the threshold for this run only
(duplicates never count against it: they are reported apart).

Each layer task's **Data Docs** button opens the validation pages of its date in the Airflow UI.

Where the jobs run (`LAKEHOUSE_RUNTIME`, the same job files everywhere): **connect** (default) in the task's
own process, as a client of the long-running Spark Connect server (`make spark-connect`; its token in the
connection `spark_connect_default`); **local** spark-submit to local Spark (connection `spark_local`);
**spark** spark-submit to the standalone cluster in the `spark_default` connection, the project's code shipped
to the executors as an archive; **databricks** a one-time Databricks run per layer job (connection `databricks_default`;
tables in Unity Catalog, deliveries in a volume; see include/databricks.py), cancelled when its Airflow task
is killed.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, TaskGroup, dag, task

from include.alerts import LakehouseFailureNotifier
from include.config import get_settings
from include.orchestration import layer_task
from include.sources import SOURCES

SETTINGS = get_settings()


@task(task_id="find_delivery")
def find_delivery(source: str, ds: str | None = None, params: dict | None = None) -> str:
    """Skip the source's tasks for this date when the run leaves it out or its landing folder does not exist;
    fail when the source has not delivered for LAKEHOUSE_STALE_AFTER_DAYS_<SOURCE> days."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from include.config import get_settings
    from include.orchestration import find_delivery_files, stale_source_message

    selected = (params or {}).get("sources", list(SOURCES))
    if source not in selected:
        raise AirflowSkipException(f"{source} is not among this run's sources {selected}")
    settings = get_settings()
    folder, files = find_delivery_files(settings, source, ds)
    if files is None:
        stale = stale_source_message(settings, source, ds)
        if stale:
            raise AirflowFailException(stale)
        raise AirflowSkipException(f"no {source} delivery for {ds}: {folder} does not exist")
    print(f"{source} delivery for {ds} in {folder}: {len(files)} entries {files}")
    return folder


@dag(
    dag_id="lakehouse_daily",
    # Daily data intervals: the run for day D starts when D is over, with logical date D.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(SETTINGS.start_date.year, SETTINGS.start_date.month, SETTINGS.start_date.day,
                                 tz="UTC"),
    catchup=SETTINGS.catchup,
    max_active_runs=SETTINGS.max_active_runs,
    default_args={
        # Every failure logged as one line, and posted or mailed through LAKEHOUSE_ALERT_CONN_ID if set.
        "on_failure_callback": [LakehouseFailureNotifier(SETTINGS.alert_conn_id)],
        "retries": SETTINGS.task_retries,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
    },
    tags=["lakehouse", "bronze", "silver", "gold"],
    params={
        "full_refresh": Param(
            False,
            type="boolean",
            title="Full refresh of gold",
            description="Rebuild the gold marts from all of silver instead of recomputing the keys silver "
                        "changed. Same result; slower; the repair tool when a mart is in doubt.",
        ),
        "max_quarantine_share": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=1,
            title="Quarantine threshold for this run",
            description="Leave empty for the settings (orders 10%, events 5% of a date's bronze rows). To accept a "
                        "date silver refused for its quarantined share, after looking at its Data Docs page, "
                        "trigger the date again with a higher share, e.g. 0.08; the run keeps it in its conf.",
        ),
        "sources": Param(
            list(SOURCES),
            type="array",
            items={"type": "string", "enum": list(SOURCES)},
            uniqueItems=True,
            title="Sources",
            description="The sources this run processes; the tasks of the others are skipped. "
                        + "; ".join(f"{source.name}: {source.description}" for source in SOURCES.values()),
        ),
    },
    doc_md=__doc__,
)
def lakehouse_daily():
    for source in SOURCES.values():
        with TaskGroup(group_id=source.name, tooltip=source.description):
            (find_delivery(source.name)
             >> layer_task("bronze", source.name, SETTINGS)
             >> layer_task("silver", source.name, SETTINGS, options=[
                 "--max-quarantine-share",
                 "{{ params.max_quarantine_share if params.max_quarantine_share is not none else 'default' }}"])
             >> layer_task("gold", source.name, SETTINGS,
                           options=["--refresh", "{{ 'full' if params.full_refresh else 'incremental' }}"]))


lakehouse_daily()
