"""Silver job: one source's bronze rows for one ingestion date -> typed silver rows or quarantine.

    spark-submit spark_jobs/silver.py --source orders --ingestion-date 2010-12-01

Every bronze row of the date ends in exactly one of `silver/<source>` and `silver/quarantine`: the
date's rows are validated with the silver suites (that accounting among them) before anything is
written, the fingerprint index included. The duplicate rule keeps the copy of the earliest ingestion
date, whatever order the dates are processed in: `silver/fingerprints` records which passing rows each
date holds, and a date processed after later ones also rewrites the later dates that share rows with it.
For orders, the job then rebuilds the type 2 history of customers and products (`silver/dim_customer`,
`silver/dim_product`) from silver orders as they stand.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date

from expectations.gate import GateFailed
from include.config import ConfigurationError, Settings
from include.sources import Source
from spark_jobs import tables as store
from spark_jobs.common import LayerJob, observed, replace_partition
from spark_jobs.publish import Output, publish
from spark_jobs.transforms.dimensions import DIMENSIONS

log = logging.getLogger("lakehouse.silver")

# Up to this many bronze rows decided in one run (a day of 1M events, or a few smaller days), the rows'
# fingerprints are broadcast to the fingerprint index scan; above it the index is joined by a shuffle,
# which spills. The same bound holds for the suspect duplicates, broadcast to the rows (a day has few;
# a day delivered again is all suspects). The broadcast is built in the driver: the 2M fingerprints of a
# 2M-event day ran the default 2g driver out of heap (the benchmark, 2026-12-01), where 1M-event days had
# passed with it.
BROADCAST_FINGERPRINTS = 1_000_000


@dataclass(frozen=True)
class SilverResult:
    source: str
    dates: tuple[date, ...]  # the ingestion date and the later dates it rewrote
    silver_rows: int
    quarantined_rows: int
    seconds: float
    validation_seconds: float = 0.0  # of `seconds`: the gate
    duplicate_rows: int = 0  # of `quarantined_rows`: copies of rows kept elsewhere, not defects


def run_silver(spark, settings: Settings, source: Source, ingestion_date: date, run_id: str,
               max_quarantine_share: float | None = None) -> SilverResult:
    """`max_quarantine_share`: this run's threshold instead of the source's setting (an operator accepting a
    date the setting refused: the run's param, logged and kept with the run)."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from spark_jobs.transforms.silver import classify, duplicate_suspects, fingerprint, split_duplicates

    started = time.monotonic()
    threshold = settings.max_quarantine_share[source.name]
    if max_quarantine_share is not None:
        if not 0 <= max_quarantine_share <= 1:
            raise ConfigurationError(f"--max-quarantine-share {max_quarantine_share}: expected a share between 0 and 1")
        log.warning("silver %s %s: quarantine threshold %s for this run (the run's max_quarantine_share), "
                    "instead of %s (LAKEHOUSE_MAX_QUARANTINE_SHARE_%s)", source.name, ingestion_date,
                    max_quarantine_share, threshold, source.name.upper())
        threshold = max_quarantine_share
    bronze_path = settings.table_location("bronze", source.name)
    if not store.exists(spark, bronze_path):
        raise RuntimeError(f"{bronze_path} is not a Delta table: run the bronze job for {source.name} first")
    bronze = store.read(spark, bronze_path)
    index_path = settings.table_location("silver", "fingerprints")

    # 1. The passing rows of this date, fingerprinted: the date's entries in the index (written with the
    # date's silver rows, once they pass the gate).
    day = classify(source, bronze.where(F.col("_ingestion_date") == F.lit(ingestion_date)))
    day = store.cache(fingerprint(source, day))
    entries = store.cache(_index_entries(source, day))

    # 2. Later dates that hold any row this date holds now, or held before, must be decided again.
    later, stored = [], None
    if store.exists(spark, index_path):
        stored = store.read(spark, index_path).where(F.col("source") == source.name)
        on_date = stored.where(F.col("_ingestion_date") == F.lit(ingestion_date)).select("fingerprint")
        touched = entries.select("fingerprint").union(on_date)
        later = sorted(row._ingestion_date for row in (
            stored.where(F.col("_ingestion_date") > F.lit(ingestion_date))
            .join(touched, "fingerprint", "left_semi").select("_ingestion_date").distinct().collect()))
    # Dates silver holds but the index does not (an index lost, or restored to an older version) would no
    # longer catch the duplicates of their rows: they are decided again from bronze, which rebuilds their entries.
    unindexed = _unindexed_dates(spark, settings, source, stored, ingestion_date)
    if unindexed:
        log.warning("silver %s %s: silver/fingerprints has no entries for %d date(s) silver holds (%s): deciding "
                    "them again from bronze, which rebuilds their entries", source.name, ingestion_date,
                    len(unindexed), ", ".join(map(str, unindexed)))
        later = sorted(set(later) | set(unindexed))
    dates = (ingestion_date, *later)

    # 3. Decide those dates together from their bronze rows and the index as it will stand: the other
    # dates' entries and theirs, taken afresh from bronze. Only the rows an earlier date or a second copy
    # may make duplicates are compared; the rest go to silver as they are.
    rows, decided, later_rows = day, entries, None
    if later:
        # Cached like the date's own rows: their entries are read by the duplicate rule and written to the index.
        later_bronze = bronze.where(F.col("_ingestion_date").isin(*later))
        later_rows = store.cache(fingerprint(source, classify(source, later_bronze)))
        rows, decided = day.unionByName(later_rows), entries.unionByName(_index_entries(source, later_rows))
    if stored is not None:
        index = stored.where(~F.col("_ingestion_date").isin(*dates)).unionByName(decided)
    else:
        index = decided
    bronze_rows = dict(rows.groupBy("_ingestion_date").count().collect())
    if later:
        _refuse_to_shrink(spark, settings, source, ingestion_date, run_id, bronze, later, bronze_rows)
    small = sum(bronze_rows.values()) <= BROADCAST_FINGERPRINTS
    suspects = store.cache(duplicate_suspects(index, dates, broadcast=small))
    kept, rejected = split_duplicates(source, rows, suspects, run_id,
                                      broadcast=suspects.count() <= BROADCAST_FINGERPRINTS)

    # 4. Audit, then publish: the dates' silver and quarantine rows (and, for orders, the dimensions' history
    # rebuilt from all silver orders as they will stand) are validated, the fingerprint index with them; only if
    # every suite passes are they written, so a refused date leaves every table as it was. The job keeps the
    # frames it validates itself: the suites of each read the others (staged views), and the dimensions are
    # built on the kept silver rows.
    if settings.gates:
        # Computed once, by the gate's first query of each: the gate reads them from memory, the writes too.
        kept, rejected = store.cache(kept), store.cache(rejected)
    staged = {"bronze_rows_by_date": spark.createDataFrame(
                  [(current, bronze_rows.get(current, 0), threshold) for current in dates],
                  "_ingestion_date DATE, bronze_rows BIGINT, max_quarantine_share DOUBLE"),
              "staged_quarantine": rejected}
    dimensions = []
    if source.name == "orders":
        orders = kept
        if store.exists(spark, settings.table_location("silver", "orders")):
            orders = (store.read(spark, settings.table_location("silver", "orders"))
                      .where(~F.col("_ingestion_date").isin(*dates)).unionByName(kept))
        dimensions = [(dimension, dimension.versions(orders)) for dimension in DIMENSIONS]
        if settings.gates:
            dimensions = [(dimension, store.cache(frame)) for dimension, frame in dimensions]
        staged.update({f"staged_{dimension.table}": frame for dimension, frame in dimensions})
    on_dates = f"_ingestion_date IN ({', '.join(repr(current.isoformat()) for current in dates)})"
    # The counts come from the writes themselves: no extra pass over the rows.
    today = F.count_if(F.col("_ingestion_date") == F.lit(ingestion_date)).alias("rows")
    duplicates = F.count_if((F.col("_ingestion_date") == F.lit(ingestion_date)) & (F.col("rule") == "duplicate")
                            ).alias("duplicates")
    figures = {}

    def write_silver(rows) -> None:
        # The change feed tells the gold job which rows each run inserted and removed.
        counts = Observation()
        replace_partition(rows.observe(counts, today), settings.table_location("silver", source.name), on_dates,
                          ["_ingestion_date"], {"delta.enableChangeDataFeed": "true"})
        figures.update(observed(counts, rows, today))

    def write_quarantine(rows) -> None:
        counts = Observation()
        replace_partition(rows.observe(counts, today, duplicates), settings.table_location("silver", "quarantine"),
                          f"source = '{source.name}' AND {on_dates}", ["source", "_ingestion_date"])
        quarantine = observed(counts, rows, today, duplicates)
        figures.update(quarantined=quarantine["rows"], duplicates=quarantine["duplicates"])

    def write_index(rows) -> None:
        # The later dates' entries are written again too: their silver rows now come from bronze as it stands.
        replace_partition(rows, index_path, f"source = '{source.name}' AND {on_dates}",
                          ["source", "_ingestion_date"])

    def overwrite(table: str):
        return lambda rows: store.save(spark, rows.write.format("delta").mode("overwrite"),
                                       settings.table_location("silver", table))

    # Three rounds, each of tables none of its writes reads. The dimensions first: they are built from silver
    # orders, so writing those first would make the server drop their cached rows and build them again for
    # their own writes. The index last: the silver and quarantine rows are decided from it.
    published = publish(spark, settings, "silver", source.name, ingestion_date, [
        Output(kept, write_silver, source.name, views=staged, keep=False, round=1),
        Output(rejected, write_quarantine, "quarantine", parameters={"source": [source.name]}, views=staged,
               keep=False, round=1),
        *(Output(frame, overwrite(dimension.table), dimension.table, views=staged, keep=False)
          for dimension, frame in dimensions),
        Output(decided, write_index, round=2),
    ], release=[*(frame for _, frame in reversed(dimensions)), rejected, kept, suspects,
                *([later_rows] if later else []), entries, day])
    silver_rows, quarantined, duplicated = figures["rows"], figures["quarantined"], figures["duplicates"]
    result = SilverResult(source.name, dates, silver_rows, quarantined, time.monotonic() - started,
                          published.validation_seconds, duplicated)
    log.info("silver %s %s: %s rows kept, %s quarantined (%s of them duplicates) in %.1f s (%.1f s the gate)%s",
             source.name, ingestion_date, f"{silver_rows:,}", f"{quarantined:,}", f"{duplicated:,}", result.seconds,
             published.validation_seconds,
             f"; later dates decided again: {', '.join(map(str, later))}" if later else "")
    return result


def _unindexed_dates(spark, settings: Settings, source: Source, stored, ingestion_date: date) -> list[date]:
    """The dates other than `ingestion_date` with rows in silver and no entry in the index (`stored`: the
    source's entries, None without an index table)."""
    from pyspark.sql import functions as F

    silver_path = settings.table_location("silver", source.name)
    if not store.exists(spark, silver_path):
        return []
    held = store.read(spark, silver_path).select("_ingestion_date").distinct()
    if stored is not None:
        held = held.join(stored.select("_ingestion_date").distinct(), "_ingestion_date", "left_anti")
    return sorted(row[0] for row in held.where(F.col("_ingestion_date") != F.lit(ingestion_date)).collect())


def _refuse_to_shrink(spark, settings: Settings, source: Source, ingestion_date: date, run_id: str, bronze,
                      again: list[date], bronze_rows: dict) -> None:
    """Dates decided again are rebuilt from bronze: where bronze now holds fewer rows of such a date than its
    silver and quarantine rows (bronze lost them: deleted, or a table restored by hand), rebuilding would
    delete published rows and the accounting gate, comparing with bronze, could not tell. Refused, unless
    this run ingested that date's bronze again itself."""
    from pyspark.sql import functions as F

    held: dict[date, int] = {}
    for table, where in ((source.name, None), ("quarantine", F.col("source") == source.name)):
        path = settings.table_location("silver", table)
        if not store.exists(spark, path):
            continue
        rows = store.read(spark, path).where(F.col("_ingestion_date").isin(*again))
        rows = rows.where(where) if where is not None else rows
        for day, count in rows.groupBy("_ingestion_date").count().collect():
            held[day] = held.get(day, 0) + count
    shrunk = {day: (held[day], bronze_rows.get(day, 0)) for day in again if bronze_rows.get(day, 0) < held.get(day, 0)}
    if not shrunk:
        return
    reingested = {row[0] for row in bronze.where(F.col("_ingestion_date").isin(*shrunk) & (F.col("_run_id") == run_id))
                  .select("_ingestion_date").distinct().collect()}
    lost = {day: figures for day, figures in shrunk.items() if day not in reingested}
    if lost:
        raise GateFailed(
            f"silver {source.name} {ingestion_date} not published: it shares rows with "
            f"{', '.join(map(str, sorted(lost)))}, which must be decided again from bronze, but bronze holds fewer "
            f"rows of " + "; ".join(f"{day} ({now:,} rows, where silver and quarantine hold {before:,})"
                                   for day, (before, now) in sorted(lost.items()))
            + ": deciding again would delete published rows. Load those dates into bronze again (their deliveries"
              " are in the landing zone), then run this date again")


def _index_entries(source: Source, rows):
    """The index entries of fingerprinted rows: per date, each fingerprint of a passing row and its copies."""
    from pyspark.sql import functions as F

    return (rows.where(F.col("_rule").isNull())
            .groupBy("_ingestion_date", "_fingerprint").count()
            .select(F.lit(source.name).alias("source"), F.col("_fingerprint").alias("fingerprint"),
                    F.col("count").alias("copies"), "_ingestion_date"))


def _arguments(parser) -> None:
    parser.add_argument("--max-quarantine-share", type=_share, default=None, metavar="SHARE",
                        help="this run's quarantine threshold, 0 to 1, instead of "
                             "LAKEHOUSE_MAX_QUARANTINE_SHARE_<SOURCE> (to accept a date the setting refused); "
                             "'default' or nothing: the setting")


def _share(text: str) -> float | None:
    return None if text in ("", "default", "None") else float(text)


JOB = LayerJob("silver", "Clean one source's bronze rows for one ingestion date into silver.", run_silver,
               expected_errors=(GateFailed,), extra_arguments=_arguments)


def main(argv: list[str] | None = None) -> None:
    JOB.main(argv)


if __name__ == "__main__":
    main()
