"""Silver and gold over the first ten real order days, against the rules applied in plain Python.

Each day goes through silver and then gold, one by one, as the daily DAG runs them. In order, in
reverse order and with reruns, the silver, quarantine, dimension and gold tables must be the same, and
equal to what tests/reference.py derives from the delivered files; `gold/daily_sales` must equal the
definition applied to those days to the penny, and a full refresh must leave every mart as it was. All
of it is marked `slow`: `make test-slow` runs it; `make test` covers the
rules on real rows (tests/test_silver_rules.py), reruns of a date (tests/test_bronze.py,
tests/test_gates.py), and real days through Airflow (tests/test_airflow.py) and through a Spark
cluster (tests/test_spark_cluster.py).
"""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from include.sources import ORDERS
from include.tools import stage_orders
from spark_jobs.bronze import run_bronze
from spark_jobs.gold import run_gold
from spark_jobs.silver import run_silver
from tests.helpers import gold_tables
from tests.reference import daily_sales_reference, dimensions_reference, files_by_date, orders_reference

pytestmark = pytest.mark.xdist_group("ten_real_days")

FIRST, DAYS = "2010-12-01", 10
SILVER_COLUMNS = ("_ingestion_date", "invoice_no", "stock_code", "description", "quantity", "unit_price",
                  "line_total", "invoice_ts", "customer_id", "country", "is_cancellation")


@pytest.fixture(scope="module")
def ten_days(spark_session, tmp_path_factory):
    from include.config import Settings
    from tests.conftest import TEST_SPARK_ENV

    root = tmp_path_factory.mktemp("ten-days")
    # The transforms' own tests: the gates are tested in test_gates.py and end to end.
    settings = Settings.from_env({**TEST_SPARK_ENV, "LAKEHOUSE_GATES": "false",
                                  "LAKEHOUSE_LANDING": str(root / "landing"),
                                  "LAKEHOUSE_WAREHOUSE": str(root / "warehouse")})
    stage_orders.main(["--from", FIRST, "--days", str(DAYS), "--landing", str(settings.landing)])
    days = sorted(files_by_date(settings.landing / "orders"))
    assert len(days) == DAYS
    for day in days:
        run_bronze(spark_session, settings, ORDERS, day, f"bronze-{day}")
    return settings, days


def snapshot(spark, settings) -> dict[str, list[tuple]]:
    def rows(table, columns=None, drop=()):
        frame = spark.read.format("delta").load(settings.table_path("silver", table)).drop(*drop)
        return sorted((tuple(row) for row in frame.select(*(columns or frame.columns)).collect()), key=repr)
    return {
        "orders": rows("orders"),
        "quarantine": rows("quarantine", drop=("_run_id",)),
        "dim_customer": rows("dim_customer"),
        "dim_product": rows("dim_product"),
        **gold_tables(spark, settings, ORDERS.name),
    }


def run_day(spark, settings, day, run_id):
    run_silver(spark, settings, ORDERS, day, f"silver-{run_id}")
    results = run_gold(spark, settings, ORDERS, day, f"gold-{run_id}")
    return {result.table: result.refresh for result in results}


def build(spark, settings, order) -> dict[str, list[tuple]]:
    for layer in ("silver", "gold"):
        shutil.rmtree(settings.warehouse / layer, ignore_errors=True)
    with pytest.MonkeyPatch.context() as patch:  # a real day touches most of a short history's keys
        patch.setattr("spark_jobs.gold.REBUILD_SHARE", None)
        refreshes = [run_day(spark, settings, day, day) for day in order]
    # The first gold run builds the marts from silver; every later one merges the keys silver changed.
    assert set(refreshes[0].values()) == {"full"}
    assert all(set(refresh.values()) == {"incremental"} for refresh in refreshes[1:]), refreshes
    return snapshot(spark, settings)


@pytest.fixture(scope="module")
def in_order(spark_session, ten_days):
    settings, days = ten_days
    return build(spark_session, settings, days)


@pytest.mark.slow
def test_ten_real_days_follow_the_rules_exactly(spark, ten_days, in_order):
    settings, days = ten_days
    reference = orders_reference(files_by_date(settings.landing / "orders"))
    silver = spark.read.format("delta").load(settings.table_path("silver", "orders"))
    assert sorted((tuple(row) for row in silver.select(*SILVER_COLUMNS).collect()), key=repr) == \
        sorted(reference.silver, key=repr)

    quarantine = spark.read.format("delta").load(settings.table_path("silver", "quarantine"))
    counted = Counter({(row._ingestion_date, row.rule): row["count"]
                       for row in quarantine.groupBy("_ingestion_date", "rule").count().collect()})
    assert counted == reference.rules
    # What the rules find in these ten days (the full 305 days: 5,263 duplicates, 2,517 non-positive prices).
    by_rule = Counter()
    for (_, rule), rows in counted.items():
        by_rule[rule] += rows
    assert by_rule == {"duplicate": 407, "non_positive_price": 185}
    assert len(reference.silver) == 26_140 and sum(row[-1] for row in reference.silver) == 402

    bronze = spark.read.format("delta").load(settings.table_path("bronze", "orders"))
    bronze_rows = dict(bronze.groupBy("_ingestion_date").count().collect())
    quarantined = Counter()
    for (day, _), rows in counted.items():
        quarantined[day] += rows
    silver_rows = reference.silver_counts()
    assert {day: silver_rows.get(day, 0) + quarantined[day] for day in days} == bronze_rows

    dim_customer, dim_product = dimensions_reference(reference.silver)
    assert in_order["dim_customer"] == sorted(dim_customer, key=repr)
    assert in_order["dim_product"] == sorted(dim_product, key=repr)
    assert len(dim_product) > len({row[0] for row in dim_product}), "real products change description"

    # Gold, merged day by day: daily sales to the penny, and the same marts as a rebuild from all of silver.
    assert in_order["daily_sales"] == daily_sales_reference(reference.silver)
    assert len(in_order["daily_sales"]) == 56  # ten sales dates, 2 to 10 countries each
    buyers = {row[-3] for row in reference.silver if row[-3] is not None and not row[-1]}
    assert len(in_order["customer_rfm"]) == len(buyers)
    rebuilt = run_gold(spark, settings, ORDERS, days[-1], "gold-full-refresh", refresh="full")
    assert {result.refresh for result in rebuilt} == {"full"}
    assert snapshot(spark, settings) == in_order


@pytest.mark.slow
def test_reverse_order_gives_the_same_tables(spark, ten_days, in_order):
    settings, days = ten_days
    assert build(spark, settings, list(reversed(days))) == in_order


@pytest.mark.slow
def test_reruns_out_of_order_give_the_same_tables(spark, ten_days, in_order):
    settings, days = ten_days
    # On the tables the earlier tests left, which must equal the in-order build.
    assert snapshot(spark, settings) == in_order
    for day in (days[4], days[0]):
        run_day(spark, settings, day, f"rerun-{day}")
    assert snapshot(spark, settings) == in_order
