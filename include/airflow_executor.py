"""Airflow's LocalExecutor, with the libraries every layer task imports loaded once, in the scheduler.

On Linux the LocalExecutor forks its workers from the scheduler, and each worker forks the process of
each task it runs: whatever the scheduler imported before its workers started, the task processes have
without importing it. Great Expectations alone takes seconds of CPU to import, in every layer task, which
on a small machine running several dates at once is a large share of a small date's cost.

Only third-party libraries are loaded here. The project's own modules (the DAG, the operators, the job
files) are still imported by each task, so an edit to a job takes effect in the next task, without
restarting Airflow; upgrading one of the libraries below needs a restart, like any upgrade.
"""

from __future__ import annotations

import importlib
import logging
import time

from airflow.executors.local_executor import LocalExecutor

# What a layer task on the Spark Connect runtime imports beyond Airflow itself: Great Expectations (the
# gates, their checkpoints and Data Docs), PySpark's Connect client (gRPC, Arrow, pandas).
PRELOADED = (
    "great_expectations",
    "great_expectations.checkpoint",
    "great_expectations.execution_engine",
    "great_expectations.expectations.core.unexpected_rows_expectation",
    "great_expectations.render.renderer.renderer",
    "pyspark.sql.connect.session",
    "pyspark.sql.connect.functions",
)

log = logging.getLogger(__name__)


def preload(names: tuple[str, ...] = PRELOADED) -> list[str]:
    """Import `names`; the ones that could not be imported (a library missing is the task's error to
    report, with its own traceback, not the scheduler's)."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


class LakehouseLocalExecutor(LocalExecutor):
    """The LocalExecutor whose task processes start with `PRELOADED` already imported (when workers are
    forked, as on Linux; elsewhere it is the LocalExecutor as it is)."""

    def start(self) -> None:
        if self.is_mp_using_fork:
            started = time.monotonic()
            missing = preload()
            log.info("task libraries preloaded for the workers in %.1f s%s", time.monotonic() - started,
                     f" (not importable: {', '.join(missing)})" if missing else "")
        super().start()
