"""Silver order lines -> slowly changing dimensions (type 2) of customers and products.

A dimension's history is a function of the silver rows alone, never of the order the ingestion dates
were processed in: for each key, the attribute seen at each invoice time, in invoice time order,
starts a new version whenever it differs from the one before. The silver job rebuilds the history
from silver orders on every orders run, so a backfill of an older date rewrites the history it
changes instead of appending to it.

- `silver/dim_customer`: `customer_id`, with `country` kept as history (type 2). Guest lines (no
  customer) are not customers.
- `silver/dim_product`: `stock_code`, with `description` kept as history (type 2) and `list_price`
  overwritten on every version (type 1): the most frequent unit price on the product's latest invoice
  day, the higher price on a tie.

Each version has `valid_from` (the invoice time the value was first seen), `valid_to` (when the next
version starts; null for the current one), `is_current` and `version` (1 for the oldest). Lines of
one invoice time that disagree count once, with the value of the highest invoice number (then the
highest value). An empty attribute is not a change: it carries the value before it; a key seen only
with empty values has one version with a null attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from spark_jobs.transforms.silver import PRICE_TYPE

VERSION_COLUMNS = ("valid_from", "valid_to", "is_current", "version")
CUSTOMER_COLUMNS = ("customer_id", "country", *VERSION_COLUMNS)
PRODUCT_COLUMNS = ("stock_code", "description", "list_price", *VERSION_COLUMNS)


def _history(orders: DataFrame, key: str, attribute: str) -> DataFrame:
    """(key, attribute, valid_from, valid_to, is_current, version) per version of each key."""
    value = F.when(F.trim(F.col(attribute)) != "", F.col(attribute))
    seen = (orders.where(F.col(key).isNotNull())
            .select(key, "invoice_ts", "invoice_no", value.alias("_value"))
            .groupBy(key, "invoice_ts")
            # The value of the highest invoice number of that time; nulls sort lowest and lose to any value.
            .agg(F.max(F.struct(F.col("_value").isNotNull(), "invoice_no", "_value")).alias("_seen"))
            .select(key, "invoice_ts", F.col("_seen._value").alias("_value")))
    in_time = Window.partitionBy(key).orderBy("invoice_ts")
    before = in_time.rowsBetween(Window.unboundedPreceding, -1)
    carried = seen.withColumn("_value", F.coalesce("_value", F.last("_value", ignorenulls=True).over(before)))
    starts = (carried.withColumn("_previous", F.lag("_value").over(in_time))
              .withColumn("_first", F.row_number().over(in_time) == 1)
              .where(F.col("_first") | ~F.col("_value").eqNullSafe(F.col("_previous"))))
    return (starts.select(
        key,
        F.col("_value").alias(attribute),
        F.col("invoice_ts").alias("valid_from"),
        F.lead("invoice_ts").over(in_time).alias("valid_to"),
        F.row_number().over(in_time).cast("int").alias("version"),
    ).withColumn("is_current", F.col("valid_to").isNull()))


def customer_versions(orders: DataFrame) -> DataFrame:
    """`silver/dim_customer` rows of every customer in `orders` (all of their silver lines)."""
    return _history(orders, "customer_id", "country").select(*CUSTOMER_COLUMNS)


def product_versions(orders: DataFrame) -> DataFrame:
    """`silver/dim_product` rows of every product in `orders` (all of their silver lines)."""
    latest_day = Window.partitionBy("stock_code")
    prices = (orders.withColumn("_latest", F.max("invoice_date").over(latest_day))
              .where(F.col("invoice_date") == F.col("_latest"))
              .groupBy("stock_code", "unit_price").count()
              .groupBy("stock_code")
              .agg(F.max(F.struct("count", "unit_price")).alias("_most"))
              .select("stock_code", F.col("_most.unit_price").cast(PRICE_TYPE).alias("list_price")))
    return (_history(orders, "stock_code", "description")
            .join(prices, "stock_code")
            .select(*PRODUCT_COLUMNS))


@dataclass(frozen=True)
class Dimension:
    table: str
    key: str
    columns: tuple[str, ...]  # in table order
    versions: Callable[[DataFrame], DataFrame]  # silver orders -> the table's rows


DIM_CUSTOMER = Dimension("dim_customer", "customer_id", CUSTOMER_COLUMNS, customer_versions)
DIM_PRODUCT = Dimension("dim_product", "stock_code", PRODUCT_COLUMNS, product_versions)
DIMENSIONS = (DIM_CUSTOMER, DIM_PRODUCT)
