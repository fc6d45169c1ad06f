"""What every layer job shares: its command line, the project on the import path, Delta writes."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Where a job cannot take environment variables (a Databricks task on an existing cluster or serverless),
# the orchestrator passes its settings as `--setting LAKEHOUSE_...=value`.
SETTING_PREFIX = "LAKEHOUSE_"
# How a refusal reads where the exit status does not reach the orchestrator (a Databricks task's error).
REFUSED = "RefusedInput"
# A finished job logs one line with this, then its timings and result as JSON (include/bench/benchmark.py reads
# it; people read the lines before it).
RESULT_MARK = "lakehouse job result:"
_IMPORTED_AT = time.time()


# How a configuration error reads where the exit status does not reach the orchestrator.
MISCONFIGURED = "ConfigurationError"


class RefusedInput(RuntimeError):
    """The job refused its input (a failed gate, an unreadable delivery): running it again changes nothing."""


def _setting(text: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    suffix = name[len(SETTING_PREFIX):]
    if not separator or not name.startswith(SETTING_PREFIX) or not suffix.replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"expected {SETTING_PREFIX}NAME=value, got {text!r}")
    return name, value


class _Parser(argparse.ArgumentParser):
    """A bad command line is a configuration error (exit status 3), not argparse's exit status 2, which a
    layer job's caller reads as refused input."""

    def error(self, message):
        from include.config import ConfigurationError

        raise ConfigurationError(f"{self.prog}: {message}")


def job_arguments(description: str, argv: list[str] | None = None,
                  extra_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """`--source` and `--ingestion-date` (and a layer's own options), the same under spark-submit and as a
    Databricks task."""
    from include.sources import SOURCES

    parser = _Parser(description=description)
    parser.add_argument("--source", required=True, choices=sorted(SOURCES), help="which delivery to load")
    parser.add_argument(
        "--ingestion-date",
        required=True,
        type=date.fromisoformat,
        help="the landing folder's date, YYYY-MM-DD (the Airflow run's logical date)",
    )
    parser.add_argument(
        "--run-id",
        default=None,
        help="the orchestrator's run id, stamped on every row (default: manual__<UTC time>)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        type=_setting,
        metavar="LAKEHOUSE_NAME=VALUE",
        help="a lakehouse setting for this job, as if set in its environment (repeatable)",
    )
    if extra_arguments is not None:
        extra_arguments(parser)
    args = parser.parse_args(argv)
    if args.run_id is None:
        args.run_id = f"manual__{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%S')}"
    return args


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stdout, force=True)
    quiet_libraries()


def quiet_libraries() -> None:
    """Warnings only from the libraries' loggers: the job logs its own story."""
    # py4j logs every gateway call at INFO.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    # GX narrates every metric and config load at INFO; the gate logs its own summary.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


@dataclasses.dataclass(frozen=True)
class LayerJob:
    """A layer job: `run(spark, settings, source, date, run_id, **options)`, the options being what
    `extra_arguments` adds to the command line. `expected_errors` are problems with the data or the
    request, not the code: refused input, never worth running again."""

    layer: str
    description: str
    run: Callable
    expected_errors: tuple[type[Exception], ...] = ()
    extra_arguments: Callable[[argparse.ArgumentParser], None] | None = None

    def main(self, argv: list[str] | None = None) -> None:
        """The job as a program (spark-submit, a Databricks task, `python spark_jobs/<layer>.py` with
        LAKEHOUSE_RUNTIME=connect). Refused input is logged as one line and exits with status 2 - or, on
        Databricks, where a task's exit status is not reported, raises `RefusedInput`, which the Airflow task
        reads in the run's output. A configuration error (a setting, a suite file, the command line) is
        logged the same way and exits with status 3 (on Databricks, raises `ConfigurationError`)."""
        from include.config import CONFIGURATION_EXIT_STATUS, ConfigurationError

        configure_logging()
        try:
            self.execute(argv)
        except (RefusedInput, ConfigurationError) as error:
            if isinstance(error, ConfigurationError):
                logging.getLogger(f"lakehouse.{self.layer}").error(
                    "configuration error, not a problem with the data (fix it, then run the job again): %s", error)
            if "DATABRICKS_RUNTIME_VERSION" in os.environ:
                raise
            raise SystemExit(CONFIGURATION_EXIT_STATUS if isinstance(error, ConfigurationError) else 2) from error

    def execute(self, argv: list[str] | None = None, spark=None):
        """Run the job in this process, on `spark` (a session the caller owns: an Airflow task's session on
        the Connect server) or on the session `get_spark` gives; its result. An expected error is logged as
        one line and raised as `RefusedInput`; a configuration error is raised as it is, even one of the
        expected kinds. A session opened here on the Connect server is released at the end, its cached frames freed,
        however the job ends."""
        from include.config import ConfigurationError, get_settings
        from include.sources import get_source
        from include.spark import get_spark
        from spark_jobs.locks import layer_lock

        started_at = time.time()
        args = job_arguments(self.description, argv, self.extra_arguments)
        options = {name: value for name, value in vars(args).items()
                   if name not in ("source", "ingestion_date", "run_id", "setting")}
        os.environ.update(dict(args.setting))
        settings = get_settings()
        source = get_source(args.source)
        if settings.gates and "great_expectations" not in sys.modules:
            # Great Expectations takes seconds to import: do it while the session starts and stages the rows.
            threading.Thread(target=importlib.import_module, args=("great_expectations",), daemon=True).start()
        own_session = spark is None
        if own_session:
            spark = get_spark(f"{self.layer}-{source.name}-{args.ingestion_date}", settings)
        session_ready = time.time()
        log = logging.getLogger(f"lakehouse.{self.layer}")
        try:
            with layer_lock(settings, self.layer, f"{self.layer} {source.name} {args.ingestion_date} {args.run_id}"):
                result = self.run(spark, settings, source, args.ingestion_date, args.run_id, **options)
        except ConfigurationError:
            raise
        except self.expected_errors as error:
            log.error("%s", error)
            raise RefusedInput(f"{self.layer} {source.name} {args.ingestion_date}: {error}") from error
        finally:
            if own_session and settings.runtime == "connect":
                from include.spark import release_session

                release_session(settings, spark=spark)
        log.info("%s %s", RESULT_MARK, json.dumps({
            "layer": self.layer, "source": source.name, "ingestion_date": args.ingestion_date.isoformat(),
            # Epoch seconds: the process that started the job (spark-submit's JVM, or this interpreter; in an
            # Airflow task on the Connect server, the job's call), the session ready, the work done. Start-up
            # is the first two apart, the work the last two.
            "started_at": _launched_at() if own_session else started_at, "session_ready_at": session_ready,
            "finished_at": time.time(), "result": _plain(result)}, default=str))
        return result


def _launched_at() -> float:
    """When the job's process started: spark-submit's JVM when it launched this interpreter (it is the
    parent; read from /proc where there is one), otherwise this interpreter."""
    for pid in (os.getppid(), os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().split(b"\0")
            if pid == os.getpid() or any(part.endswith(b"SparkSubmit") for part in command):
                with open(f"/proc/{pid}/stat") as handle:
                    ticks = int(handle.read().rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks
                with open("/proc/uptime") as handle:
                    uptime = float(handle.read().split()[0])
                return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError, IndexError):
            continue
    return _IMPORTED_AT


def _plain(result):
    """A job's result (a dataclass, or a list of them) as JSON-ready values."""
    if isinstance(result, list):
        return [_plain(item) for item in result]
    return dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result



def replace_partition(
    frame, path: str, predicate: str, partition_by: list[str], table_properties: dict[str, str] | None = None,
    merge_schema: bool = False,
) -> None:
    """Replace the rows matching `predicate` with `frame` in one Delta commit; `path` is a table location
    (a path, or a catalog name: see spark_jobs/tables.py).

    `table_properties` (`delta.*` keys) are set when the write creates the table; `merge_schema` adds
    columns the frame has and the table does not yet (older rows read them as null).
    """
    writer = frame.write.format("delta").mode("overwrite").option("replaceWhere", predicate)
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    for key, value in (table_properties or {}).items():
        writer = writer.option(key, value)
    from spark_jobs import tables

    tables.save(frame.sparkSession, writer.partitionBy(*partition_by), path)


def observed(observation, frame, *metrics) -> dict:
    """The metrics an `Observation` collected while `frame.observe(observation, *metrics)` was written, or,
    where the write ran the rows in a nested query the observation does not see (creating or replacing a
    table addressed by catalog name), the same metrics computed from `frame` (cached by the caller)."""
    try:
        values = observation.get
    except Exception as error:  # py4j's error on a classic session, a PySpark error through Connect
        logging.getLogger("lakehouse.jobs").debug("observation unavailable (%s): computing the metrics", error)
        values = None
    # Through Spark Connect an observation the write did not see comes back empty rather than failing.
    return values or frame.agg(*metrics).first().asDict()
