"""Gold job: bring one source's marts up to date with its silver table.

    spark-submit spark_jobs/gold.py --source orders --ingestion-date 2010-12-01
    spark-submit spark_jobs/gold.py --source orders --ingestion-date 2010-12-01 --refresh full

A mart is recomputed from silver, never patched with increments. Incrementally, the job reads the
silver table's change feed since the silver version the mart last reflected (`gold/mart_progress`),
takes the keys of every row inserted or removed since (an ingestion date's rows, later dates that
silver decided again, late events for earlier event dates), recomputes exactly those keys from
silver as it stands and merges them into the mart: keys with no silver rows left are deleted. Marts
kept over a daily rollup (products and users of the events) first recompute the rollup rows of the
event dates those changed rows belong to, from silver, then the touched keys from the rollup. Marts
with columns over the whole mart (RFM scores, revenue shares, recency) recompute those over the
already aggregated mart after the merge. A run whose changes touch a quarter or more of a mart's keys
(`REBUILD_SHARE`: a large day over a short history) rebuilds that mart from its inputs instead, which
is cheaper then and gives the same table; so does a mart kept over a rollup that would be rewritten whole
anyway, since finding its touched keys' rows reads every date of the rollup too. Such a refresh is
recorded as `rebuilt`. So a rerun, a backfill of an older date or a date processed twice gives the table
a full rebuild gives. `--refresh full` rebuilds the marts from all of silver; it is also what happens the
first time, and when the change feed no longer covers the versions a mart has not seen.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime

from expectations.gate import GateFailed
from include.config import ConfigurationError, Settings
from include.sources import Source
from spark_jobs import tables as store
from spark_jobs.common import LayerJob, replace_partition
from spark_jobs.publish import Output, publish

log = logging.getLogger("lakehouse.gold")

PROGRESS_TABLE = "mart_progress"
REFRESH_MODES = ("incremental", "full")
# Key columns with at most this many touched values are also filtered on those values, literally (file skipping).
LITERAL_KEYS_LIMIT = 1_000
# A mart up to this size is rewritten whole (its other keys' rows as stored, the touched keys' fresh) rather
# than merged: a Delta merge reads the mart twice and costs seconds whatever its size, where most marts are a
# few megabytes and a day of events touches most of the products and users they hold.
REWRITE_BYTES = 64 * 1024 * 1024
# An incremental run that touches at least this share of a mart's keys rebuilds the mart from its inputs
# (silver, or its rollup once the touched dates' rollup rows are recomputed) instead of recomputing those keys:
# finding the touched keys' rows, and keeping the other keys' stored rows, costs more than aggregating the rest.
# A 2M-event day touches every product, half the users and most event dates and hours of a short history:
# its day 2 gold job, two pairs in turn, took 62.9 and 60.7 s rebuilding against 62.5 and 68.0 s recomputing
# the touched keys (funnel_daily 7.8-8.4 s against 9.5-9.8, hourly_sales 3.3-4.1 against 4.9-5.3; the
# marts over rollups gain nothing there, their rollup's dates being most of the work). None: never.
REBUILD_SHARE: float | None = 0.25


@dataclass(frozen=True)
class MartResult:
    table: str
    refresh: str  # full | incremental | rebuilt (an incremental run that touched most keys) | unchanged
    silver_version: int
    keys: int | None  # keys silver changed since the mart's last run (incremental and rebuilt refreshes)
    seconds: float
    validation_seconds: float = 0.0  # of `seconds`: this mart's suite, and its share of the gate's set-up


def run_gold(spark, settings: Settings, source: Source, ingestion_date: date, run_id: str,
             refresh: str = "incremental", tables: list[str] | None = None) -> list[MartResult]:
    from spark_jobs.transforms.gold import marts_of

    if refresh not in REFRESH_MODES:
        raise ConfigurationError(f"refresh must be one of {', '.join(REFRESH_MODES)}, got {refresh!r}")
    marts = marts_of(source.name)
    unknown = sorted(set(tables or ()) - {mart.table for mart in marts})
    if unknown:
        raise ConfigurationError(f"no {source.name} gold table named {', '.join(unknown)}; "
                         f"its tables are {', '.join(mart.table for mart in marts)}")
    marts = [mart for mart in marts if not tables or mart.table in tables]

    silver_path = settings.table_location("silver", source.name)
    if not store.exists(spark, silver_path):
        raise RuntimeError(f"{silver_path} is not a Delta table: run the silver job for {source.name} first")
    # Every mart is brought to the same silver version, read as of that version throughout.
    version = store.version(spark, silver_path)
    silver_id = store.identity(spark, silver_path)
    silver = store.read(spark, silver_path, versionAsOf=version)
    seen, seen_ids = _progress(spark, settings)

    plans: dict[str, str] = {}
    for mart in marts:
        last = seen.get(mart.table)
        if refresh == "full":
            plans[mart.table] = "full"
        elif last is None or not all(store.exists(spark, settings.table_location("gold", table))
                                     for table in _tables_of(mart)):
            plans[mart.table] = "full"
            log.info("gold %s: first build, from all of silver %s", mart.table, source.name)
        elif seen_ids.get(mart.table) not in (None, silver_id):
            # Version numbers alone cannot tell: a silver table made again may have grown past the mart's version.
            plans[mart.table] = "full"
            log.warning("gold %s reflects silver %s table %s, but silver is now table %s (deleted and made again): "
                        "rebuilding", mart.table, source.name, seen_ids[mart.table], silver_id)
        elif last > version:
            plans[mart.table] = "full"
            log.warning("gold %s reflects silver %s version %s but silver is at %s (recreated?): rebuilding",
                        mart.table, source.name, last, version)
        else:
            plans[mart.table] = "unchanged" if last == version else "incremental"

    incremental = [mart for mart in marts if plans[mart.table] == "incremental"]
    changes = None
    if incremental:
        since = min(seen[mart.table] for mart in incremental) + 1
        changes = _changes(spark, silver_path, since, version, incremental)
        if changes is None:
            log.warning("gold %s: silver %s has no change feed for versions %s to %s (change data feed off, "
                        "or history vacuumed): rebuilding from all of silver", source.name, source.name, since, version)
            plans.update({mart.table: "full" for mart in incremental})

    # Stage every mart's new rows (cached), and the rollup rows they are built from, audit the marts together,
    # then write: a refused run publishes nothing, its rollups included.
    staged, seconds, counts, cached, rollup_writes = [], {}, {}, [], []  # rollups: Outputs with no suite
    for mart in marts:
        started = time.monotonic()
        path = settings.table_location("gold", mart.table)
        if plans[mart.table] == "full":
            inputs = silver
            if mart.rollup is not None:
                inputs = store.cache(mart.rollup.compute(silver))
                cached.append(inputs)
                rollup_path, column = settings.table_location("gold", mart.rollup.table), mart.rollup.date_column
                rollup_writes.append(Output(inputs, lambda rows, rollup_path=rollup_path, column=column:
                                            _overwrite(rows, rollup_path, [column]), round=1))
            staged.append(_whole(mart, inputs, path))
        elif plans[mart.table] == "incremental":
            touched = store.cache(_touched_keys(changes, mart, seen[mart.table]))
            cached.append(touched)
            counts[mart.table] = touched.count()
            if counts[mart.table]:
                inputs = silver
                if mart.rollup is not None:
                    inputs, rollup_write, frames = _refresh_rollup(spark, settings, mart.rollup, silver, changes,
                                                                   seen[mart.table])
                    cached.extend(frames)
                    if rollup_write is not None:
                        rollup_writes.append(rollup_write)
                if _rebuilds(spark, path, mart, counts[mart.table]):
                    plans[mart.table] = "rebuilt"
                    staged.append(_whole(mart, inputs, path))
                else:
                    staged.append((mart, *_stage_keys(spark, path, mart, inputs, touched, counts[mart.table])))
        seconds[mart.table] = time.monotonic() - started

    def timed(mart, write):
        def run(frame) -> None:
            started = time.monotonic()
            write(frame)
            seconds[mart.table] += time.monotonic() - started
        return run

    # The marts (each a table of its own) side by side, then their rollups: a mart staged over a rollup reads the
    # stored rollup, so writing the rollup first would make the server drop the mart's kept rows and compute
    # them again for its own write. A refused run publishes nothing, its rollups included.
    published = publish(spark, settings, "gold", source.name, ingestion_date, [
        *(Output(frame, timed(mart, write), mart.table, views={f"gate_silver_{source.name}": silver})
          for mart, frame, write in staged),
        *rollup_writes,
    ], release=[*reversed(cached), *([changes] if changes is not None else [])])
    validation = {outcome.suite.split(".", 1)[1]: outcome.seconds for outcome in published.outcomes}
    overhead = (published.validation_seconds - sum(validation.values())) / max(len(validation), 1)
    for table in validation:
        validation[table] += overhead
        seconds[table] += validation[table]
    results = []
    for mart in marts:
        keys = counts.get(mart.table) if plans[mart.table] in ("incremental", "rebuilt") else None
        results.append(MartResult(mart.table, plans[mart.table], version, keys, seconds[mart.table],
                                  validation.get(mart.table, 0.0)))
        done = "touched" if plans[mart.table] == "rebuilt" else "recomputed"
        log.info("gold %s %s: %s refresh to silver version %s%s in %.1f s", source.name, mart.table,
                 plans[mart.table], version, "" if keys is None else f", {keys:,} keys {done}", results[-1].seconds)
    _record_progress(spark, settings, source, ingestion_date, run_id, results, silver_id)
    return results


def _whole(mart, inputs, path: str):
    """The whole mart built from all of its inputs (silver, or the whole rollup), and its writer: a full
    refresh's staging, and a rebuild's."""
    return mart, mart.build_from(inputs), lambda frame: _overwrite(frame, path)


def _rebuilds(spark, path: str, mart, touched: int) -> bool:
    """Whether to rebuild the mart at `path` from its inputs rather than recompute its `touched` keys: they are
    a large share of its rows, or the mart is kept over a rollup and would be rewritten whole anyway: finding
    the touched keys' rows reads every date of the rollup (its partitions are dates, not keys), and the
    rewrite then reads the stored mart as well (gold of day 31 of 100,000 events a day, four pairs in turn:
    0.87 to 0.99 times the wall, median 0.94; `user_engagement` 11.2 s rebuilt, 12.7 s recomputed by key)."""
    if REBUILD_SHARE is None:
        return False
    if mart.rollup is not None and _rewritten_whole(spark, path, mart):
        return True
    rows = store.read(spark, path).count()  # Delta answers from its log's file statistics
    return touched >= REBUILD_SHARE * rows


def _rewritten_whole(spark, path: str, mart) -> bool:
    """Whether recomputing some keys of the mart at `path` rewrites the whole mart rather than merging them:
    its columns over the whole mart need every row, or it is small (its size from the Delta log)."""
    return mart.finish is not None or store.size_bytes(spark, path) <= REWRITE_BYTES


def _tables_of(mart) -> list[str]:
    """The gold tables a mart keeps: itself, and its rollup if it has one."""
    return [mart.table] + ([mart.rollup.table] if mart.rollup is not None else [])


def _overwrite(frame, path: str, partition_by: list[str] = ()) -> None:
    store.save(frame.sparkSession, frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
                .partitionBy(*partition_by), path)


def _refresh_rollup(spark, settings: Settings, rollup, silver, changes, last_version: int):
    """The rollup as it will stand once the rows of every date with silver rows changed since `last_version`
    are recomputed from silver as it stands (a date left without silver rows loses its rollup rows); the output
    that replaces those dates in one commit, after the gate (None when no date changed); and the frames cached
    for both (to release)."""
    from pyspark.sql import functions as F

    path = settings.table_location("gold", rollup.table)
    column = rollup.date_column
    dates = [row[0] for row in changes.where(F.col("_commit_version") > last_version).select(column).distinct()
             .collect()]
    present = sorted(day for day in dates if day is not None)
    stored = store.read(spark, path)
    if not present:
        return stored, None, []
    rows = store.cache(rollup.compute(silver.where(F.col(column).isin(present))))
    listed = ", ".join(f"DATE'{day.isoformat()}'" for day in present)
    staged = store.cache(stored.where(~F.col(column).isin(present)).unionByName(rows))

    def write(rows) -> None:
        replace_partition(rows, path, f"`{column}` IN ({listed})", [column])
        log.info("gold %s: rollup rows of %s %s date(s) recomputed", rollup.table, len(present), column)

    return staged, Output(rows, write, round=1), [rows, staged]


def _progress(spark, settings: Settings) -> tuple[dict[str, int], dict[str, str | None]]:
    """The silver version each mart reflects, and the id of the silver table it was (None where a progress
    table from before the ids were recorded says nothing), from `gold/mart_progress`."""
    from pyspark.sql import functions as F

    path = settings.table_location("gold", PROGRESS_TABLE)
    if not store.exists(spark, path):
        return {}, {}
    progress = store.read(spark, path)
    table_id = F.col("silver_table_id") if "silver_table_id" in progress.columns else F.lit(None).cast("string")
    rows = (progress.groupBy("mart").agg(F.max_by("silver_version", "recorded_at").alias("silver_version"),
                                         F.max_by(table_id, "recorded_at").alias("silver_table_id")).collect())
    return {row.mart: row.silver_version for row in rows}, {row.mart: row.silver_table_id for row in rows}


def _record_progress(spark, settings: Settings, source: Source, ingestion_date: date, run_id: str,
                     results: list[MartResult], silver_id: str) -> None:
    """One row per mart and run, appended: which silver table and version the mart now reflects, and how."""
    from pyspark.sql import types as T

    schema = T.StructType([
        T.StructField("mart", T.StringType(), False),
        T.StructField("source", T.StringType(), False),
        T.StructField("silver_version", T.LongType(), False),
        T.StructField("refresh", T.StringType(), False),
        T.StructField("keys_recomputed", T.LongType(), True),
        T.StructField("seconds", T.DoubleType(), False),
        T.StructField("ingestion_date", T.DateType(), False),
        T.StructField("run_id", T.StringType(), False),
        T.StructField("recorded_at", T.TimestampType(), False),
        T.StructField("silver_table_id", T.StringType(), True),
    ])
    now = datetime.now(UTC)
    rows = [(result.table, source.name, result.silver_version, result.refresh, result.keys, round(result.seconds, 3),
             ingestion_date, run_id, now, silver_id) for result in results]
    # mergeSchema: a progress table from before the table ids were recorded gets the column (null in old rows).
    store.save(spark, spark.createDataFrame(rows, schema).write.format("delta").mode("append")
               .option("mergeSchema", "true"), settings.table_location("gold", PROGRESS_TABLE))


def _changes(spark, silver_path: str, since: int, until: int, marts):
    """Silver's changed rows (inserted or removed) in versions since..until, only the columns the
    marts' keys come from, cached; None when the change feed does not cover that range."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    columns = sorted({column for mart in marts for _, column in mart.keys}
                     | {mart.rollup.date_column for mart in marts if mart.rollup is not None})
    try:
        changes = store.cache(store.read(spark, silver_path, readChangeFeed="true", startingVersion=since,
                                         endingVersion=until).select(*columns, F.col("_commit_version")).distinct())
        changes.count()
    except AnalysisException as error:
        log.warning("change feed of %s unreadable: %s", silver_path, str(error).splitlines()[0])
        return None
    return changes


def _touched_keys(changes, mart, last_version: int):
    from pyspark.sql import functions as F

    return (changes.where(F.col("_commit_version") > last_version)
            .select(*[F.col(column).alias(key) for key, column in mart.keys]).distinct())


def _matching(rows, touched, columns: tuple[str, ...], how: str):
    """`rows` whose values of `columns` are (left_semi) or are not (left_anti) among `touched`; nulls match nulls."""
    from pyspark.sql import functions as F

    condition = [F.col(f"r.{column}").eqNullSafe(F.col(f"k.{column}")) for column in columns]
    return rows.alias("r").join(F.broadcast(touched.alias("k")), condition, how).select("r.*")


def _narrowed(silver, keys, count: int):
    """`silver` filtered on the literal values of each key column that has few of them (the touched event
    or sales dates, a day's customers), so Delta skips the files whose statistics rule them out instead of
    the join reading all of silver. The join on the keys that follows stays the exact test."""
    from pyspark.sql import functions as F

    if count > LITERAL_KEYS_LIMIT and len(keys.columns) == 1:
        return silver  # a single key column with too many values: nothing to collect
    for column in keys.columns:
        values = [row[0] for row in keys.select(column).distinct().limit(LITERAL_KEYS_LIMIT + 1).collect()]
        if len(values) > LITERAL_KEYS_LIMIT:
            continue
        present = [value for value in values if value is not None]
        condition = F.col(column).isin(present) if present else F.lit(False)
        silver = silver.where((condition | F.col(column).isNull()) if None in values else condition)
    return silver


def _stage_keys(spark, path: str, mart, inputs, touched, count: int):
    """The recomputed rows of `touched` keys of `mart` from its inputs (silver, or its rollup), and how to
    write them into the mart: (rows to validate, writer taking those rows)."""
    from pyspark.sql import functions as F

    on_silver = touched.select(*[F.col(key).alias(column) for key, column in mart.keys])
    columns = tuple(column for _, column in mart.keys)
    rows = _matching(_narrowed(inputs, on_silver, count), on_silver, columns, "left_semi")
    fresh = mart.aggregate(rows)
    keys = mart.key_columns
    if _rewritten_whole(spark, path, mart):
        # The other keys' stored rows and the fresh ones; for columns over the whole mart, finished together.
        stored = store.read(spark, path).select(*fresh.columns)
        whole = _matching(stored, touched, keys, "left_anti").unionByName(fresh)
        def overwrite(frame) -> None:
            store.save(spark, frame.write.format("delta").mode("overwrite"), path)

        return (mart.finish(whole, inputs) if mart.finish is not None else whole), overwrite

    def merge(frame) -> None:
        # Touched keys left without silver rows are deleted; the others updated or inserted.
        flagged = frame.withColumn("_fresh", F.lit(True))
        condition = [F.col(f"k.{key}").eqNullSafe(F.col(f"f.{key}")) for key in keys]
        updates = (touched.alias("k").join(flagged.alias("f"), condition, "left")
                   .select(*[F.col(f"k.{key}") for key in keys],
                           *[F.col(f"f.{column}") for column in mart.columns if column not in keys],
                           F.coalesce(F.col("f._fresh"), F.lit(False)).alias("_fresh")))
        columns = ", ".join(f"`{column}`" for column in mart.columns)
        values = ", ".join(f"s.`{column}`" for column in mart.columns)
        store.merge(spark, path, updates, " AND ".join(f"t.`{key}` <=> s.`{key}`" for key in keys), [
            "WHEN MATCHED AND NOT s._fresh THEN DELETE",
            "WHEN MATCHED AND s._fresh THEN UPDATE SET "
            + ", ".join(f"t.`{column}` = s.`{column}`" for column in mart.columns),
            f"WHEN NOT MATCHED AND s._fresh THEN INSERT ({columns}) VALUES ({values})",
        ])

    return fresh, merge


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--refresh", choices=REFRESH_MODES, default="incremental",
                        help="incremental: recompute the keys silver changed since the last run (default); "
                             "full: rebuild from all of silver")
    parser.add_argument("--table", dest="tables", action="append", metavar="TABLE",
                        help="only this gold table (repeatable; default: all of the source's tables)")


JOB = LayerJob("gold", "Bring one source's gold marts up to date with its silver table.", run_gold,
               expected_errors=(GateFailed,), extra_arguments=_arguments)


def main(argv: list[str] | None = None) -> None:
    JOB.main(argv)


if __name__ == "__main__":
    main()
