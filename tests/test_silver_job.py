"""The silver job over several dates: duplicates keep the earliest date's copy and the dimensions' history
comes out the same in any processing order. The whole-order builds (in order against reverse order, and
out of order with a rerun) are marked `slow` (`make test-slow`); `make test` keeps the single-date and
rerun tests here and in tests/test_bronze.py and tests/test_gates.py."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import date, datetime
from decimal import Decimal

import pytest

from include.sources import ORDERS
from spark_jobs.bronze import run_bronze
from spark_jobs.silver import run_silver
from tests.helpers import ORDERS_HEADER, deliver

A = "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom"
B = '536366,22633,"HAND WARMER, UNION JACK",6,2010-12-01 08:28:00,1.85,,United Kingdom'
MOVED = "536400,85123A,CREAM HANGING HEART T-LIGHT HOLDER,2,2010-12-02 10:00:00,2.95,17850.0,France"
C = "C536379,D,Discount,-1,2010-12-01 09:41:00,27.50,14527.0,United Kingdom"
BAD_PRICE = "A563185,B,Adjust bad debt,1,2010-12-01 14:50:00,-11062.06,,United Kingdom"
DAYS = {
    date(2010, 12, 1): [A, B, A, BAD_PRICE],       # A twice in one delivery
    date(2010, 12, 2): [B, C, "x,y", MOVED],       # B again, a day later; a malformed line; 17850 moves
    date(2010, 12, 3): [A, C, "536367,84879,BIRD,0,2010-12-01 08:34:00,1.69,13047.0,United Kingdom"],
}


def tables(spark, settings):
    def rows(table, drop=()):
        frame = spark.read.format("delta").load(settings.table_path("silver", table))
        return sorted(tuple(row) for row in frame.drop(*drop).collect())
    return (rows("orders"), rows("quarantine", ("_run_id",)), rows("dim_customer"), rows("dim_product"),
            rows("fingerprints"))


def build(spark, settings, order):
    shutil.rmtree(settings.warehouse / "silver", ignore_errors=True)
    for day in order:
        run_silver(spark, settings, ORDERS, day, f"run-{day}")
    return tables(spark, settings)


@pytest.fixture
def lakehouse(lakehouse):
    """The transforms' own tests (their hand-written days quarantine most rows): the gates are tested in
    test_gates.py and end to end."""
    return dataclasses.replace(lakehouse, gates=False)


@pytest.fixture
def delivered(spark, lakehouse):
    for day, lines in DAYS.items():
        deliver(lakehouse, "orders", day.isoformat(), "day.csv", "\n".join([ORDERS_HEADER, *lines]) + "\n")
        run_bronze(spark, lakehouse, ORDERS, day, "bronze")
    return lakehouse, sorted(DAYS)


@pytest.mark.slow
def test_in_order_and_reverse_order_give_the_same_tables(spark, delivered):
    lakehouse, days = delivered
    in_order = build(spark, lakehouse, days)
    silver, quarantine, customers, products, index = in_order
    assert len(silver) == 4, "A and B kept on 12-01, C and MOVED on 12-02"
    rules = sorted((row[0], row[1], row[4]) for row in quarantine)
    assert rules == [
        ("orders", "duplicate", date(2010, 12, 1)),
        ("orders", "duplicate", date(2010, 12, 2)),
        ("orders", "duplicate", date(2010, 12, 3)),
        ("orders", "duplicate", date(2010, 12, 3)),
        ("orders", "invalid_quantity", date(2010, 12, 3)),
        ("orders", "malformed", date(2010, 12, 2)),
        ("orders", "non_positive_price", date(2010, 12, 1)),
    ]
    # The index counts every passing row of a date: kept in silver, or quarantined as a duplicate.
    for day in days:
        passing = (sum(row[-1] == day for row in silver)
                   + sum(row[1] == "duplicate" and row[4] == day for row in quarantine))
        assert sum(entry[2] for entry in index if entry[3] == day) == passing, day
    reasons = {row[2] for row in quarantine if row[1] == "duplicate"}
    assert reasons == {"identical to another row of the same ingestion date",
                       "identical to a row kept from ingestion date 2010-12-01",
                       "identical to a row kept from ingestion date 2010-12-02"}
    at = datetime.fromisoformat
    assert customers == [
        (14527, "United Kingdom", at("2010-12-01 09:41"), None, True, 1),
        (17850, "France", at("2010-12-02 10:00"), None, True, 2),
        (17850, "United Kingdom", at("2010-12-01 08:26"), at("2010-12-02 10:00"), False, 1),
    ]
    assert products == [
        ("22633", "HAND WARMER, UNION JACK", Decimal("1.850"), at("2010-12-01 08:28"), None, True, 1),
        ("85123A", "CREAM HANGING HEART T-LIGHT HOLDER", Decimal("2.950"), at("2010-12-02 10:00"), None, True, 2),
        ("85123A", "WHITE HANGING HEART T-LIGHT HOLDER", Decimal("2.950"), at("2010-12-01 08:26"),
         at("2010-12-02 10:00"), False, 1),
        ("D", "Discount", Decimal("27.500"), at("2010-12-01 09:41"), None, True, 1),
    ]
    assert build(spark, lakehouse, list(reversed(days))) == in_order


@pytest.mark.slow
def test_out_of_order_with_a_rerun_gives_the_same_tables(spark, delivered, monkeypatch):
    lakehouse, days = delivered
    in_order = build(spark, lakehouse, days)
    # Past the broadcast limit (a backfill re-deciding many large dates) the fingerprint index is joined by
    # a shuffle instead: same decisions.
    monkeypatch.setattr("spark_jobs.silver.BROADCAST_FINGERPRINTS", 0)
    assert build(spark, lakehouse, [days[1], days[2], days[0], days[0]]) == in_order
