"""LAKEHOUSE_CATALOG: the jobs address their tables as `<catalog>.<layer>.<table>` (Unity Catalog names on
Databricks) instead of paths, with the same results. Here the catalog is the local session's own
(`spark_catalog`, Delta's catalog), its schemas placed under the test's folder."""

from __future__ import annotations

from datetime import date

import pytest

from include.config import Settings
from include.sources import ORDERS, PUBLISHED_TABLES
from include.tools import stage_orders
from spark_jobs import tables
from spark_jobs.bronze import run_bronze
from spark_jobs.gold import run_gold
from spark_jobs.silver import run_silver
from tests.conftest import TEST_SPARK_ENV
from tests.helpers import published_tables

DAY = date(2010, 12, 1)
CATALOG = "spark_catalog"


@pytest.fixture
def schemas(spark, tmp_path):
    for layer in ("bronze", "silver", "gold"):
        spark.sql(f"CREATE SCHEMA {CATALOG}.{layer} LOCATION '{tmp_path / 'catalog' / layer}'")
    yield
    for layer in ("bronze", "silver", "gold"):
        spark.sql(f"DROP SCHEMA IF EXISTS {CATALOG}.{layer} CASCADE")


def test_settings_give_names_with_a_catalog_and_paths_without():
    named = Settings.from_env({"LAKEHOUSE_CATALOG": "main"})
    assert named.table_location("silver", "orders") == "main.silver.orders"
    assert tables.is_name(named.table_location("silver", "orders"))
    plain = Settings.from_env({"LAKEHOUSE_WAREHOUSE": "/data/wh"})
    assert plain.table_location("silver", "orders") == "/data/wh/silver/orders"
    assert not tables.is_name(plain.table_location("silver", "orders"))
    with pytest.raises(ValueError, match="LAKEHOUSE_CATALOG"):
        Settings.from_env({"LAKEHOUSE_CATALOG": "main; DROP"})


def test_a_day_through_catalog_tables_equals_the_same_day_through_paths(spark, schemas, tmp_path):
    landing = tmp_path / "landing"
    stage_orders.main(["--from", DAY.isoformat(), "--days", "1", "--landing", str(landing)])
    common = {**TEST_SPARK_ENV, "LAKEHOUSE_GATES": "false", "LAKEHOUSE_LANDING": str(landing)}
    by_path = Settings.from_env({**common, "LAKEHOUSE_WAREHOUSE": str(tmp_path / "warehouse")})
    by_name = Settings.from_env({**common, "LAKEHOUSE_WAREHOUSE": str(tmp_path / "unused"),
                                 "LAKEHOUSE_CATALOG": CATALOG})
    for settings in (by_path, by_name):
        for run in (run_bronze, run_silver, run_gold):
            run(spark, settings, ORDERS, DAY, f"run-{DAY}")
    # A second run of the day replaces it, by name as by path.
    run_silver(spark, by_name, ORDERS, DAY, f"rerun-{DAY}")
    run_gold(spark, by_name, ORDERS, DAY, f"rerun-{DAY}")

    assert not (tmp_path / "unused").exists(), "a job wrote to a path although the tables have names"
    for layer, table in ((layer, table) for (layer, source), names in PUBLISHED_TABLES.items()
                         if source == "orders" for table in names):
        assert spark.catalog.tableExists(f"{CATALOG}.{layer}.{table}"), f"{layer}.{table} not in the catalog"
        assert (tmp_path / "catalog" / layer / table / "_delta_log").is_dir()
    # The change feed silver turns on for gold is a table property of the named table too.
    properties = dict(spark.sql(f"SHOW TBLPROPERTIES {CATALOG}.silver.orders").collect())
    assert properties.get("delta.enableChangeDataFeed") == "true"
    assert published_tables(spark, tmp_path / "catalog", "orders") == \
        published_tables(spark, by_path.warehouse, "orders")
