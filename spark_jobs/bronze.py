"""Bronze job: one source's delivery for one ingestion date -> `bronze/<source>`, replaced atomically.

    spark-submit spark_jobs/bronze.py --source orders --ingestion-date 2010-12-01

Every data line of every delivered file becomes exactly one row. The rows are validated (suite
`bronze.<source>`: as many rows as delivered data lines) with the delivery's manifest (suite
`bronze.ingested_files`) before anything is written; then the date is replaced in `bronze/<source>`
and its files recorded in `bronze/ingested_files`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import reduce
from pathlib import Path

from expectations.gate import GateFailed
from include.config import INGESTED_FILES_TABLE, Settings
from include.landing import EMPTY_MARKER, DeliveredFile, DeliveryError, inspect_file, list_delivery
from include.sources import Source
from spark_jobs import tables as store
from spark_jobs.common import LayerJob, observed, replace_partition
from spark_jobs.publish import Output, publish
from spark_jobs.transforms.bronze import without_carriage_return

log = logging.getLogger("lakehouse.bronze")

# Bronze is read a whole ingestion date at a time, never searched by value: per-column min/max
# statistics would only slow every write (they doubled the write time of a 1M-line day).
BRONZE_TABLE_PROPERTIES = {"delta.dataSkippingNumIndexedCols": "0"}


@dataclass(frozen=True)
class BronzeResult:
    source: str
    ingestion_date: date
    files: int
    rows: int
    malformed_rows: int
    seconds: float
    table: str
    validation_seconds: float = 0.0  # of `seconds`: the gate


def run_bronze(spark, settings: Settings, source: Source, ingestion_date: date, run_id: str) -> BronzeResult:
    """Load one delivery into bronze, replacing whatever an earlier run wrote for that date."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from spark_jobs.transforms.bronze import add_ingestion_metadata, parse_lines

    started = time.monotonic()
    folder = settings.landing_dir(source.name, ingestion_date)
    if not folder.is_dir():
        raise DeliveryError(f"no {source.name} delivery for {ingestion_date}: {folder} does not exist")
    paths, ignored = list_delivery(folder)
    for entry in ignored:
        if entry.name != EMPTY_MARKER:
            log.warning("ignoring %s: only .csv and .csv.gz files are deliveries", entry)
    if not paths:
        log.warning("%s holds no .csv or .csv.gz file: an empty delivery", folder)

    delivered = [inspect_file(path, source, settings.landing) for path in paths]
    inspected = time.monotonic()
    expected_rows = sum(item.data_lines for item in delivered)
    if expected_rows == 0:
        _refuse_to_empty(spark, settings, source, ingestion_date, folder, len(delivered))
    for item in delivered:
        log.info("%s: %s bytes, %s data lines, sha256 %s", item.relative_path, f"{item.size_bytes:,}",
                 f"{item.data_lines:,}", item.sha256)

    ingested_at = datetime.now(UTC)
    lines = _read_lines(spark, delivered)
    bronze = add_ingestion_metadata(parse_lines(lines, source), source, ingestion_date, ingested_at, run_id)
    manifest = _manifest(spark, source, ingestion_date, delivered, ingested_at, run_id)

    # Audit, then publish: the date's rows (one per delivered data line, every file's header the source's
    # layout) and its manifest are validated; only then are bronze and the manifest written.
    table = settings.table_location("bronze", source.name)
    counts = (F.count(F.lit(1)).alias("rows"), F.count_if(F.col("_is_malformed")).alias("malformed"))
    metrics = {}

    def write_bronze(rows) -> None:
        observation = Observation(f"bronze_{source.name}")
        replace_partition(rows.observe(observation, *counts), table,
                          f"_ingestion_date = '{ingestion_date.isoformat()}'", ["_ingestion_date"],
                          BRONZE_TABLE_PROPERTIES)
        metrics.update(observed(observation, rows, *counts))

    def write_manifest(rows) -> None:
        _warn_about_repeated_files(spark, settings, source, ingestion_date, delivered)
        replace_partition(rows, settings.table_location(*INGESTED_FILES_TABLE),
                          f"source = '{source.name}' AND ingestion_date = '{ingestion_date.isoformat()}'", ["source"],
                          merge_schema=True)

    published = publish(spark, settings, "bronze", source.name, ingestion_date, [
        Output(bronze, write_bronze, source.name, parameters={"delivered_lines": expected_rows}),
        # A few rows made on the driver: not worth keeping. Written once bronze holds the date's rows.
        Output(manifest, write_manifest, "ingested_files", keep=False, round=1,
               parameters={"delivered_files": len(delivered), "layout": [source.header]}),
    ])
    result = BronzeResult(
        source=source.name,
        ingestion_date=ingestion_date,
        files=len(delivered),
        rows=metrics["rows"],
        malformed_rows=metrics["malformed"],
        seconds=time.monotonic() - started,
        table=table,
        validation_seconds=published.validation_seconds,
    )
    log.info(
        "bronze %s %s: %s rows (%s malformed) from %d file(s) in %.1f s -> %s",
        result.source, result.ingestion_date, f"{result.rows:,}", f"{result.malformed_rows:,}",
        result.files, result.seconds, result.table,
    )
    log.info("bronze %s %s: %.1f s checking files, %.1f s the gate, %.1f s writing", result.source,
             result.ingestion_date, inspected - started, published.validation_seconds, published.write_seconds)
    return result


def _refuse_to_empty(spark, settings: Settings, source: Source, ingestion_date: date, folder: Path,
                     files: int) -> None:
    """A delivery without data lines may not replace a date that holds rows, unless its folder says that the
    date is empty on purpose (EMPTY_MARKER): a sender's failed export looks just like that."""
    from pyspark.sql import functions as F

    table = settings.table_location("bronze", source.name)
    if (folder / EMPTY_MARKER).exists() or not store.exists(spark, table):
        return
    held = store.read(spark, table).where(F.col("_ingestion_date") == F.lit(ingestion_date)).count()
    if held:
        raise DeliveryError(
            f"the {source.name} delivery for {ingestion_date} has no data lines ({files} file(s) in {folder}) but "
            f"bronze holds {held:,} rows for that date: refusing to replace them with nothing. If the date is "
            f"empty on purpose, put an empty file named {EMPTY_MARKER} in {folder} and run the date again")


def _read_lines(spark, delivered: list[DeliveredFile]):
    """Every line of every file but its header, with the file it came from."""
    from pyspark.sql import functions as F

    frames = []
    for item in delivered:
        lines = (
            spark.read.option("lineSep", "\n")
            .text(_literal_path(item.path))
            .where(without_carriage_return(F.col("value")) != F.lit(item.header_line))
        )
        if item.repeated_headers:
            # Lines identical to the header were filtered with it; give the repeats back as rows.
            repeats = spark.range(item.repeated_headers).select(F.lit(item.header_line).alias("value"))
            lines = lines.unionByName(repeats)
        frames.append(lines.withColumn("_source_file", F.lit(item.relative_path)))
    if not frames:  # an empty delivery still replaces the date, with no rows
        return spark.range(0).select(F.lit("").alias("value"), F.lit("").alias("_source_file"))
    return reduce(lambda left, right: left.unionByName(right), frames)


def _literal_path(path: Path) -> str:
    """Hadoop reads paths as glob patterns; escape the characters it would expand."""
    return "".join(f"\\{char}" if char in "[]{}*?\\" else char for char in str(path))


def _manifest(spark, source, ingestion_date, delivered, ingested_at, run_id):
    """The date's entries of `bronze/ingested_files`: one row per delivered file, with its header line."""
    schema = (
        "source STRING, ingestion_date DATE, file STRING, path STRING, size_bytes BIGINT, sha256 STRING, "
        "data_lines BIGINT, ingested_at TIMESTAMP, run_id STRING, header STRING"
    )
    rows = [
        (source.name, ingestion_date, item.relative_path, str(item.path), item.size_bytes, item.sha256,
         item.data_lines, ingested_at, run_id, item.header_line)
        for item in delivered
    ]
    return spark.createDataFrame(rows, schema)


def _warn_about_repeated_files(spark, settings, source, ingestion_date, delivered) -> None:
    """Warn about files already ingested for another date, or twice in this delivery."""
    from pyspark.sql import functions as F

    path = settings.table_location(*INGESTED_FILES_TABLE)
    checksums = [item.sha256 for item in delivered]
    seen = {}
    if checksums and store.exists(spark, path):
        earlier = (
            store.read(spark, path)
            .where((F.col("source") == source.name) & (F.col("ingestion_date") != F.lit(ingestion_date)))
            .where(F.col("sha256").isin(checksums))
            .select("sha256", "file", "ingestion_date")
            .collect()
        )
        for row in earlier:
            seen.setdefault(row.sha256, []).append(f"{row.file} (ingested for {row.ingestion_date})")
    first_in_delivery = {}
    for item in delivered:
        for other in seen.get(item.sha256, []):
            log.warning("%s is identical (sha256 %s) to %s", item.relative_path, item.sha256[:12], other)
        if item.sha256 in first_in_delivery:
            log.warning("%s is identical (sha256 %s) to %s in the same delivery",
                        item.relative_path, item.sha256[:12], first_in_delivery[item.sha256])
        first_in_delivery.setdefault(item.sha256, item.relative_path)


JOB = LayerJob("bronze", "Load one source's delivery for one ingestion date into bronze.", run_bronze,
               expected_errors=(DeliveryError, GateFailed))


def main(argv: list[str] | None = None) -> None:
    JOB.main(argv)


if __name__ == "__main__":
    main()
