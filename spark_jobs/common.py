"""What every layer job shares: its command line, the project on the import path, Delta writes."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import date, datetime, timezone

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def job_arguments(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """`--source` and `--ingestion-date`, the same under spark-submit and as a Databricks task."""
    from include.sources import SOURCES

    parser = argparse.ArgumentParser(description=description)
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
    args = parser.parse_args(argv)
    if args.run_id is None:
        args.run_id = f"manual__{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%S')}"
    return args


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stdout, force=True)
    # py4j logs every gateway call at INFO.
    logging.getLogger("py4j").setLevel(logging.WARNING)


def replace_partition(
    frame, path: str, predicate: str, partition_by: list[str], table_properties: dict[str, str] | None = None
) -> None:
    """Replace the rows matching `predicate` with `frame` in one Delta commit.

    `table_properties` (`delta.*` keys) are set when the write creates the table.
    """
    writer = frame.write.format("delta").mode("overwrite").option("replaceWhere", predicate)
    for key, value in (table_properties or {}).items():
        writer = writer.option(key, value)
    writer.partitionBy(*partition_by).save(path)
