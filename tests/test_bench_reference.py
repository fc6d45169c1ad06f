"""The benchmark's reference engine (DuckDB, include/bench/reference.py) does the lakehouse's work:
on the same deliveries its bronze, silver and quarantine counts and every gold mart equal the Spark
jobs', compared by the benchmark's own comparison (include/bench/benchmark.compare_gold)."""

from __future__ import annotations

from datetime import date

import pytest

from include.bench import benchmark as bench
from include.sources import EVENTS, ORDERS
from include.tools import generate_events, stage_orders
from spark_jobs.bronze import run_bronze
from spark_jobs.gold import run_gold
from spark_jobs.silver import run_silver

pytestmark = pytest.mark.slow  # about 2 minutes of Spark on 2 cores: `make test-slow`
DAYS = {ORDERS.name: [date(2010, 12, 1), date(2010, 12, 2)], EVENTS.name: [date(2019, 10, 1), date(2019, 10, 2)]}


@pytest.fixture(scope="module")
def both_engines(spark_session, tmp_path_factory):
    from include.bench.reference import Reference
    from include.config import Settings
    from tests.conftest import TEST_SPARK_ENV

    root = tmp_path_factory.mktemp("bench-reference")
    settings = Settings.from_env({**TEST_SPARK_ENV, "LAKEHOUSE_GATES": "false",
                                  "LAKEHOUSE_LANDING": str(root / "landing"),
                                  "LAKEHOUSE_WAREHOUSE": str(root / "warehouse")})
    # Every kind of defect the generator makes, duplicates across the two days and late events included.
    generate_events.main(["--from", "2019-10-01", "--days", "2", "--events-per-day", "1500", "--defect-rate", "0.06",
                          "--landing", str(settings.landing)])
    stage_orders.main(["--from", "2010-12-01", "--days", "2", "--landing", str(settings.landing)])
    reference = Reference(settings.landing, root / "duckdb", threads=1)
    counts = {"spark": {}, "duckdb": {}}
    for source in (ORDERS, EVENTS):
        for day in DAYS[source.name]:
            bronze = run_bronze(spark_session, settings, source, day, f"bronze-{day}")
            silver = run_silver(spark_session, settings, source, day, f"silver-{day}")
            run_gold(spark_session, settings, source, day, f"gold-{day}")
            counts["spark"][(source, day)] = (bronze.rows, bronze.malformed_rows, silver.silver_rows,
                                              silver.quarantined_rows)
            theirs = reference.bronze(source.name, day), reference.silver(source.name, day)
            reference.gold(source.name, day)
            counts["duckdb"][(source, day)] = (theirs[0]["rows"], theirs[0]["malformed"], theirs[1]["rows"],
                                               theirs[1]["quarantined"])
    return settings, reference, counts


def test_bronze_and_silver_counts_equal_the_spark_jobs(both_engines):
    _, _, counts = both_engines
    assert counts["duckdb"] == counts["spark"]
    malformed = sum(count[1] for (source, _), count in counts["spark"].items() if source is EVENTS)
    quarantined = sum(count[3] for (source, _), count in counts["spark"].items() if source is EVENTS)
    assert malformed > 0 and quarantined > malformed, "the generated days hold defects of every kind"


def test_every_gold_mart_equals_the_spark_jobs(both_engines, spark):
    settings, reference, _ = both_engines
    verdicts = bench.compare_gold(settings, reference, DAYS)
    assert set(verdicts) == {"daily_sales", "customer_rfm", "product_performance", "funnel_daily",
                             "product_conversion", "user_engagement", "hourly_sales"}
    assert all(verdict.startswith("equal") for verdict in verdicts.values()), verdicts


def test_a_changed_number_is_reported_as_a_difference(both_engines):
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    settings, reference, _ = both_engines
    ours = DeltaTable(settings.table_path("gold", "daily_sales")).to_pyarrow_table()
    theirs = reference.gold_table("daily_sales")
    changed = theirs.set_column(theirs.column_names.index("units"), "units", pc.add(theirs["units"], 1))
    columns = [name for name in ours.column_names if not name.startswith("_")]
    assert bench._difference(ours.select(columns), changed.select(columns)).startswith("DIFFERENT")
    assert bench._difference(ours.select(columns), theirs.select(columns)).startswith("equal")
