"""An incremental gold run that touches most of a mart's keys rebuilds the mart from its inputs, and the
mart it publishes is the one a full refresh builds."""

from __future__ import annotations

import dataclasses
import math
from datetime import date

from include.sources import EVENTS
from include.tools import generate_events
from spark_jobs.bronze import run_bronze
from spark_jobs.gold import run_gold
from spark_jobs.silver import run_silver
from tests.helpers import gold_tables

DAYS = [date(2019, 10, 1), date(2019, 10, 2)]


def test_a_run_touching_most_keys_rebuilds_and_equals_a_full_refresh(spark, lakehouse, monkeypatch):
    from pyspark.sql import functions as F

    ungated = dataclasses.replace(lakehouse, gates=False)  # bronze and silver are not what this test is about
    generate_events.main(["--from", DAYS[0].isoformat(), "--days", str(len(DAYS)), "--events-per-day", "300",
                          "--late-rate", "0.05", "--landing", str(lakehouse.landing)])
    for day in DAYS:
        run_bronze(spark, ungated, EVENTS, day, f"bronze-{day}")
        run_silver(spark, ungated, EVENTS, day, f"silver-{day}")
        if day == DAYS[0]:
            assert {result.refresh for result in run_gold(spark, lakehouse, EVENTS, day, "first")} == {"full"}

    # Three hundred events a day: the second day touches far more than a quarter of every mart's keys.
    results = run_gold(spark, lakehouse, EVENTS, DAYS[1], "second")
    assert {result.refresh for result in results} == {"rebuilt"}
    assert all(result.keys > 0 for result in results)
    rebuilt = gold_tables(spark, lakehouse, "events")

    progress = spark.read.format("delta").load(lakehouse.table_path("gold", "mart_progress"))
    recorded = {row.mart: (row.refresh, row.keys_recomputed)
                for row in progress.where(F.col("run_id") == "second").collect()}
    assert recorded == {result.table: ("rebuilt", result.keys) for result in results}

    full = run_gold(spark, lakehouse, EVENTS, DAYS[1], "full", refresh="full")
    assert {result.refresh for result in full} == {"full"}
    assert gold_tables(spark, lakehouse, "events") == rebuilt

    # Below the share, the same kind of run recomputes the touched keys only.
    monkeypatch.setattr("spark_jobs.gold.REBUILD_SHARE", None)
    run_silver(spark, ungated, EVENTS, DAYS[1], "silver-again")  # the date decided again: its rows are new versions
    assert {result.refresh for result in run_gold(spark, lakehouse, EVENTS, DAYS[1], "third")} == {"incremental"}
    assert gold_tables(spark, lakehouse, "events") == rebuilt

    # Whatever the share, a mart kept over a rollup that would be rewritten whole is rebuilt from the rollup;
    # the marts over silver recompute the touched keys (their dates, where silver's files are skipped).
    monkeypatch.setattr("spark_jobs.gold.REBUILD_SHARE", math.inf)  # never by the share of touched keys
    run_silver(spark, ungated, EVENTS, DAYS[1], "silver-once-more")
    refreshes = {result.table: result.refresh for result in run_gold(spark, lakehouse, EVENTS, DAYS[1], "fourth")}
    assert refreshes == {"funnel_daily": "incremental", "hourly_sales": "incremental",
                         "product_conversion": "rebuilt", "user_engagement": "rebuilt"}
    assert gold_tables(spark, lakehouse, "events") == rebuilt
