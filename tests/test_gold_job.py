"""The gold job over several generated event days with late arrivals and duplicates: each run's marts
equal a plain-Python recomputation over silver, late events move the event date they belong to, and
any processing order, rerun or full refresh gives the same tables.

The two builds take about 6 minutes on 2 cores: they are marked `slow` (`make test-slow`); `make test`
runs gold on hand-written rows (tests/test_gold_marts.py), and after silver in the DAG end to end.
"""

from __future__ import annotations

import shutil
from datetime import date

import pytest

from include.sources import EVENTS
from include.tools import generate_events
from spark_jobs.bronze import run_bronze
from spark_jobs.gold import run_gold
from spark_jobs.silver import run_silver
from tests.helpers import gold_tables
from tests.reference import events_marts_reference

pytestmark = pytest.mark.xdist_group("gold_events")
DAYS = [date(2019, 10, 1), date(2019, 10, 2), date(2019, 10, 3)]


@pytest.fixture(scope="module")
def event_days(spark_session, tmp_path_factory):
    from include.config import Settings
    from tests.conftest import TEST_SPARK_ENV

    root = tmp_path_factory.mktemp("gold-events")
    # The transforms' own tests: the gates are tested in test_gates.py and end to end.
    settings = Settings.from_env({**TEST_SPARK_ENV, "LAKEHOUSE_GATES": "false",
                                  "LAKEHOUSE_LANDING": str(root / "landing"),
                                  "LAKEHOUSE_WAREHOUSE": str(root / "warehouse")})
    generate_events.main(["--from", DAYS[0].isoformat(), "--days", str(len(DAYS)), "--events-per-day", "600",
                          "--duplicate-rate", "0.03", "--late-rate", "0.05", "--negative-price-rate", "0.01",
                          "--landing", str(settings.landing)])
    for day in DAYS:
        run_bronze(spark_session, settings, EVENTS, day, f"bronze-{day}")
    return settings


def run_day(spark, settings, day, **options):
    run_silver(spark, settings, EVENTS, day, f"silver-{day}")
    return run_gold(spark, settings, EVENTS, day, f"gold-{day}", **options)


def recomputed(spark, settings) -> dict[str, list[tuple]]:
    return events_marts_reference(spark.read.format("delta").load(settings.table_path("silver", "events")).collect())


def fresh(settings):
    for layer in ("silver", "gold"):
        shutil.rmtree(settings.warehouse / layer, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("rewrite_bytes", [None, 0], ids=["small-marts-rewritten", "marts-merged"])
def test_each_run_equals_a_recomputation_and_late_events_move_their_date(spark, event_days, rewrite_bytes,
                                                                         monkeypatch):
    settings = event_days
    monkeypatch.setattr("spark_jobs.gold.REBUILD_SHARE", None)  # 600 events a day touch most keys: recompute them
    if rewrite_bytes is not None:  # every mart without columns over the whole mart is merged, however small
        monkeypatch.setattr("spark_jobs.gold.REWRITE_BYTES", rewrite_bytes)
    fresh(settings)
    assert {result.refresh for result in run_day(spark, settings, DAYS[0])} == {"full"}
    first = gold_tables(spark, settings, "events")
    assert first == recomputed(spark, settings)

    results = run_day(spark, settings, DAYS[1])
    assert {result.refresh for result in results} == {"incremental"}
    second = gold_tables(spark, settings, "events")
    assert second == recomputed(spark, settings)
    # The second delivery holds late events of the first date: its funnel row changed, and the first
    # run's row for it was replaced, not added to.
    silver = spark.read.format("delta").load(settings.table_path("silver", "events"))
    assert silver.where(f"_ingestion_date = '{DAYS[1]}' AND event_date = '{DAYS[0]}'").count() > 0
    funnel_first = {row[0]: row for row in first["funnel_daily"]}
    funnel_second = {row[0]: row for row in second["funnel_daily"]}
    assert funnel_second[DAYS[0]] != funnel_first[DAYS[0]]
    assert funnel_second[DAYS[0]][1] > funnel_first[DAYS[0]][1], "late views count on their own event date"
    funnel_keys = next(result.keys for result in results if result.table == "funnel_daily")
    assert funnel_keys < len(funnel_second), "only the event dates the delivery touched were recomputed"

    run_day(spark, settings, DAYS[2])
    in_order = gold_tables(spark, settings, "events")
    assert in_order == recomputed(spark, settings)

    # Nothing changed in silver: nothing to do.
    assert {result.refresh for result in run_gold(spark, settings, EVENTS, DAYS[2], "again")} == {"unchanged"}
    assert {result.refresh for result in run_gold(spark, settings, EVENTS, DAYS[2], "full", refresh="full")} == {"full"}
    assert gold_tables(spark, settings, "events") == in_order

    fresh(settings)
    for day in (DAYS[1], DAYS[2], DAYS[0], DAYS[0]):  # out of order, the oldest date last and twice
        run_day(spark, settings, day)
    assert gold_tables(spark, settings, "events") == in_order


@pytest.mark.slow
def test_a_skipped_gold_run_is_caught_up_by_the_next(spark, event_days):
    """Gold reads every silver change since the version a mart reflects, not only the run's own date."""
    settings = event_days
    fresh(settings)
    run_day(spark, settings, DAYS[0])
    run_silver(spark, settings, EVENTS, DAYS[1], "silver-only")
    run_day(spark, settings, DAYS[2])
    assert gold_tables(spark, settings, "events") == recomputed(spark, settings)
    progress = spark.read.format("delta").load(settings.table_path("gold", "mart_progress"))
    assert {row.mart for row in progress.collect()} == {"funnel_daily", "product_conversion", "user_engagement",
                                                        "hourly_sales"}


def test_unknown_tables_and_refresh_modes_are_refused(spark, event_days):
    with pytest.raises(ValueError, match="no events gold table named daily_sales"):
        run_gold(spark, event_days, EVENTS, DAYS[0], "r", tables=["daily_sales"])
    with pytest.raises(ValueError, match="refresh must be one of"):
        run_gold(spark, event_days, EVENTS, DAYS[0], "r", refresh="sometimes")
