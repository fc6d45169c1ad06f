"""Every setting the lakehouse reads from its environment, and docs/configuration.md generated from them.

    python -m include.tools.configuration            # print the page
    python -m include.tools.configuration --write    # write docs/configuration.md

`tests/test_configuration.py` keeps this list true: every `LAKEHOUSE_*` name the code reads is here, every
one here is read, a documented default given explicitly changes nothing, and the page is what this prints.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from include.config import (
    DEFAULT_MAX_QUARANTINE_SHARE,
    DEFAULT_STALE_AFTER_DAYS,
    DEFAULT_TASK_TIMEOUT_MINUTES,
    PROJECT_ROOT,
)

PAGE = PROJECT_ROOT / "docs" / "configuration.md"


@dataclass(frozen=True)
class Setting:
    """One environment variable: `default` as a reader sees it, `literal` the value that, given explicitly,
    is the default (None where the default is derived from other settings or is "unset")."""

    name: str
    default: str
    meaning: str
    literal: str | None = None


def _per(defaults: dict, unit: str = "") -> str:
    return ", ".join(f"{key} {value}{unit}" for key, value in defaults.items())


GROUPS: dict[str, tuple[Setting, ...]] = {
    "Where things are": (
        Setting("LAKEHOUSE_LANDING", "`./data/landing`", "the landing zone: `<source>/<YYYY-MM-DD>/` folders of "
                "delivered files", "data/landing"),
        Setting("LAKEHOUSE_WAREHOUSE", "`./data/warehouse`", "the Delta tables, `<layer>/<table>`",
                "data/warehouse"),
        Setting("LAKEHOUSE_GX_ROOT", "the warehouse's parent (`./data`)", "the Great Expectations project (its "
                "`gx/` folder: the suites as last applied, every validation result)", "data"),
        Setting("LAKEHOUSE_DATA_DOCS", "`<LAKEHOUSE_GX_ROOT>/data-docs`", "the Data Docs site", "data/data-docs"),
        Setting("AIRFLOW_HOME", "`./.airflow`", "Airflow's home: its configuration, logs and SQLite database",
                ".airflow"),
        Setting("LAKEHOUSE_CATALOG", "unset: paths under the warehouse", "address tables as "
                "`<catalog>.<layer>.<table>` (Unity Catalog on Databricks) instead of paths"),
    ),
    "Quality gates": (
        Setting("LAKEHOUSE_GATES", "`true`", "validate each layer's output with its suites before publishing it; "
                "`false` only for work on the transforms themselves", "true"),
        Setting("LAKEHOUSE_MAX_QUARANTINE_SHARE_<SOURCE>", _per(DEFAULT_MAX_QUARANTINE_SHARE),
                "the share of a date's bronze rows that may be quarantined before silver refuses the date "
                "(a run's `max_quarantine_share` param overrides it for that run)"),
    ),
    "How the layer jobs run": (
        Setting("LAKEHOUSE_RUNTIME", "`connect`", "`connect` (clients of one long-running Spark Connect server), "
                "`local` (spark-submit on this machine), `spark` (spark-submit to a Spark cluster) or "
                "`databricks`", "connect"),
        Setting("LAKEHOUSE_SPARK_MASTER", "`local[*]`", "the master of `local` runs", "local[*]"),
        Setting("LAKEHOUSE_SPARK_DRIVER_MEMORY", "`2g`", "the driver's heap of a spark-submit job", "2g"),
        Setting("LAKEHOUSE_SHUFFLE_PARTITIONS", "`4`", "`spark.sql.shuffle.partitions` (and the partitions Delta "
                "rebuilds a table's state with): a small machine's", "4"),
        Setting("LAKEHOUSE_SPARK_UI", "`true`", "the Spark UI of spark-submit jobs", "true"),
        Setting("LAKEHOUSE_SPARK_JAVA_OPTIONS", "empty", "extra JVM options for the Spark driver and executors",
                ""),
        Setting("LAKEHOUSE_QUICK_COMPILER_MB", "`16`", "a delivery of at most this many MB on disk has its "
                "spark-submit jobs' JVMs compile with the quick compiler only (`0`: never)", "16"),
        Setting("LAKEHOUSE_SPARK_EXECUTOR_MEMORY", "`1g`", "the executors' heap on a Spark cluster", "1g"),
        Setting("LAKEHOUSE_SPARK_CORES_MAX", "unset: all", "the cores one layer job may take on a Spark cluster"),
        Setting("LAKEHOUSE_CACHE_FRAMES", "`true`", "keep the frames a job reads several times (`false` on "
                "Databricks serverless compute, which has no cache: set by the Databricks runtime)"),
    ),
    "The Spark Connect server (`LAKEHOUSE_RUNTIME=connect`)": (
        Setting("LAKEHOUSE_CONNECT_PORT", "`15002`", "its port, on 127.0.0.1 only", "15002"),
        Setting("LAKEHOUSE_CONNECT_UI_PORT", "`4040`", "its Spark UI, on 127.0.0.1", "4040"),
        Setting("LAKEHOUSE_CONNECT_MEMORY", "`8g`", "its heap, shared by every date and layer it serves at once",
                "8g"),
        Setting("LAKEHOUSE_CONNECT_HOME", "`./.spark-connect`", "its process id, log and scratch space",
                ".spark-connect"),
        Setting("LAKEHOUSE_CONNECT_CONN_ID", "`spark_connect_default`", "the Airflow connection whose password is "
                "its token (`make airflow-db` creates it with a random one)", "spark_connect_default"),
        Setting("LAKEHOUSE_CONNECT_TOKEN", "unset: that connection's password", "its token"),
    ),
    "A Spark standalone cluster on this machine (`make spark-cluster`)": (
        Setting("LAKEHOUSE_SPARK_CLUSTER_PORT", "`7077`", "the master's port, on 127.0.0.1", "7077"),
        Setting("LAKEHOUSE_SPARK_CLUSTER_UI_PORT", "`8081`", "the master's web UI; workers' UIs take the next "
                "ports", "8081"),
        Setting("LAKEHOUSE_SPARK_CLUSTER_HOME", "`./.spark-cluster`", "the processes' ids, logs and work space",
                ".spark-cluster"),
    ),
    "Orchestration (`lakehouse_daily`)": (
        Setting("LAKEHOUSE_START_DATE", "`2010-12-01`", "the first ingestion date of the schedule (the first "
                "real orders day)", "2010-12-01"),
        Setting("LAKEHOUSE_CATCHUP", "`false`", "schedule a run for every missed date since the start", "false"),
        Setting("LAKEHOUSE_MAX_ACTIVE_RUNS", "`3`", "the dates the DAG works on at once", "3"),
        Setting("LAKEHOUSE_TASK_RETRIES", "`2`", "retries of a layer job that failed for another reason than its "
                "data (refused data, exit status 2, is never retried)", "2"),
        Setting("LAKEHOUSE_TASK_TIMEOUT_MINUTES_<LAYER>", _per(DEFAULT_TASK_TIMEOUT_MINUTES),
                "a layer task running longer is stopped and retried"),
        Setting("LAKEHOUSE_STALE_AFTER_DAYS_<SOURCE>", _per(DEFAULT_STALE_AFTER_DAYS),
                "a source that delivered before and has not for this many days fails the run loudly (`0`: never)"),
        Setting("LAKEHOUSE_ALERT_CONN_ID", "unset: failures are logged only", "an Airflow connection every "
                "failure is posted or mailed through"),
    ),
    "Databricks (`LAKEHOUSE_RUNTIME=databricks`)": (
        Setting("LAKEHOUSE_DATABRICKS_CONN_ID", "`databricks_default`", "the Airflow connection with the workspace "
                "and its token (the only place they come from)", "databricks_default"),
        Setting("LAKEHOUSE_DATABRICKS_HOST", "the connection id, `_` as `-`", "names the workspace in the tables' "
                "Airflow Asset URIs"),
        Setting("LAKEHOUSE_DATABRICKS_COMPUTE", "`job_cluster`", "`job_cluster` (a new cluster per run), "
                "`existing` (an all-purpose cluster) or `serverless`", "job_cluster"),
        Setting("LAKEHOUSE_DATABRICKS_CATALOG", "`lakehouse`", "the Unity Catalog of the tables", "lakehouse"),
        Setting("LAKEHOUSE_DATABRICKS_FILES", "`/Workspace/Shared/.bundle/lakehouse/prod/files`", "where the "
                "bundle deployed its files: the project's wheel is in `dist/` under it",
                "/Workspace/Shared/.bundle/lakehouse/prod/files"),
        Setting("LAKEHOUSE_DATABRICKS_LANDING", "`/Volumes/<catalog>/landing/deliveries`", "the landing zone, a "
                "volume", "/Volumes/lakehouse/landing/deliveries"),
        Setting("LAKEHOUSE_DATABRICKS_GX_ROOT", "`/Volumes/<catalog>/quality/gx`", "the Great Expectations project "
                "and its Data Docs, a volume", "/Volumes/lakehouse/quality/gx"),
        Setting("LAKEHOUSE_DATABRICKS_CLUSTER_ID", "unset", "the all-purpose cluster of `existing` compute"),
        Setting("LAKEHOUSE_DATABRICKS_SPARK_VERSION", "`17.3.x-scala2.13`", "the runtime of `job_cluster` compute",
                "17.3.x-scala2.13"),
        Setting("LAKEHOUSE_DATABRICKS_NODE_TYPE", "unset (required for `job_cluster`)", "the node type of "
                "`job_cluster` compute (the cloud decides: `i3.xlarge` on AWS, `Standard_D4ds_v5` on Azure)"),
        Setting("LAKEHOUSE_DATABRICKS_WORKERS", "`2`", "the workers of `job_cluster` compute", "2"),
        Setting("LAKEHOUSE_DATABRICKS_ENVIRONMENT_VERSION", "`3`", "the environment of `serverless` compute", "3"),
        Setting("LAKEHOUSE_DATABRICKS_POLL_SECONDS", "`30`", "how often a task asks Databricks about its run", "30"),
        Setting("LAKEHOUSE_DATABRICKS_TIMEOUT_SECONDS", "`14400`", "a Databricks run taking longer is cancelled",
                "14400"),
    ),
    "Tests": (
        Setting("LAKEHOUSE_REQUIRE_BROWSER", "unset", "the Data Docs browser test fails, rather than skips, where "
                "Chromium cannot be started (`.ci/run` sets it)"),
        Setting("LAKEHOUSE_TEST_CONNECT_MEMORY", "`6g`", "the heap of the Spark Connect server the tests start"),
        Setting("LAKEHOUSE_TEST_ARTIFACTS", "`./test-artifacts`", "where the Airflow end-to-end tests keep the "
                "logs and screenshots of their runs"),
        Setting("LAKEHOUSE_TEST_CONNECT_HOME", "set by the test run", "the home of the tests' Spark Connect "
                "server, which the first pytest process starts and its workers share"),
    ),
}

SETTINGS: tuple[Setting, ...] = tuple(setting for group in GROUPS.values() for setting in group)


def page() -> str:
    lines = [
        "# Configuration",
        "",
        "Every setting comes from the environment (or, for a single job, `--setting NAME=VALUE`), with a default",
        "that keeps everything inside the checkout. Secrets are not settings: the Spark Connect token and the",
        "Databricks workspace's token come from Airflow connections (or `LAKEHOUSE_CONNECT_TOKEN`).",
        "`<SOURCE>` is `ORDERS` or `EVENTS`, `<LAYER>` `BRONZE`, `SILVER` or `GOLD`.",
        "",
        "This page is generated from `include/tools/configuration.py` (`python -m include.tools.configuration",
        "--write`); `tests/test_configuration.py` fails when it, or the list, drifts from the code.",
    ]
    for title, settings in GROUPS.items():
        lines += ["", f"## {title}", "", "| setting | default | what it does |", "|---|---|---|"]
        lines += [f"| `{setting.name}` | {setting.default} | {setting.meaning} |" for setting in settings]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {PAGE.relative_to(PROJECT_ROOT)}")
    if parser.parse_args(argv).write:
        PAGE.write_text(page())
        print(f"wrote {PAGE}")
    else:
        print(page(), end="")


if __name__ == "__main__":
    main()
