"""Silver rows -> the gold marts: what each mart is, per key, and what is derived over a whole mart.

Every mart is a function of silver alone. `Mart.aggregate` turns the silver rows of some keys into
those keys' rows, so the gold job can recompute just the keys a run touches; marts with columns that
depend on the whole mart (RFM quintiles, revenue shares, recency as of the latest date in silver)
also have `Mart.finish`, applied to the whole, already aggregated table. Amounts are rounded once,
at the end, half up: revenue to cents, shares to 6 places, rates to 4.

Two events marts keyed by entity (`product_conversion`, `user_engagement`) aggregate a daily rollup
instead of raw silver: partial aggregates per event date and product, or per event date, user and
session, each an exact function of that event date's silver rows. The gold job recomputes the
rollup rows of the event dates a run touches from silver, then the touched products and users from
their rollup rows, so a day's cost does not include re-reading every event of a user's history.
The partials are exact (decimal sums, counts, extremes, and sessions kept by id, so a session seen
on two dates counts once): aggregating the rollup gives what aggregating silver gives.

Orders marts count purchases: non-cancelled silver order lines (cancellations are returns).
Events marts count events by `event_type`; revenue is the price of `purchase` events.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

# The marts rank whole, small, already aggregated tables in one partition on purpose (Spark Connect's client
# says so at every such window; a classic session's log settings silence the same warning of Spark's).
warnings.filterwarnings("ignore", message="WARN WindowExpression: No Partition Defined", category=UserWarning)

MONEY_TYPE = "decimal(18,2)"
SHARE_TYPE = "decimal(9,6)"
RATE_TYPE = "decimal(12,4)"
COUNT_TYPE = "decimal(20,0)"

# RFM: segment by recency and frequency score, first match wins; the table in the README says the same.
SEGMENTS = (
    # (segment, R scores, F scores)
    ("Champions", (5,), (4, 5)),
    ("Loyal", (3, 4), (4, 5)),
    ("Potential Loyalists", (4, 5), (2, 3)),
    ("New", (5,), (1,)),
    ("Promising", (4,), (1,)),
    ("Need Attention", (3,), (1, 2, 3)),
    ("Cannot Lose Them", (1, 2), (5,)),
    ("At Risk", (1, 2), (3, 4)),
    ("Hibernating", (2,), (1, 2)),
    ("Lost", (1,), (1, 2)),
)
# Value tier by R + F + M (3 to 15): the lowest total of each tier.
VALUE_TIERS = (("VIP", 13), ("Premium", 10), ("Standard", 7), ("Basic", 3))
# Product tier by the share of revenue of the products that sold more: under 50% Star, under 80% Strong,
# under 95% Steady, under 99% Weak, the rest Slow (the long tail that makes the last 1%).
PRODUCT_TIERS = (("Star", "0.50"), ("Strong", "0.80"), ("Steady", "0.95"), ("Weak", "0.99"))
SLOW_TIER = "Slow"

DAILY_SALES_COLUMNS = ("sales_date", "country", "orders", "order_lines", "units", "revenue", "customers",
                       "avg_order_value")
CUSTOMER_RFM_COLUMNS = ("customer_id", "first_purchase", "last_purchase", "frequency", "monetary", "recency_days",
                        "r_score", "f_score", "m_score", "segment", "value_tier", "as_of_date")
PRODUCT_PERFORMANCE_COLUMNS = ("stock_code", "units", "revenue", "orders", "revenue_share", "tier")
FUNNEL_DAILY_COLUMNS = ("event_date", "views", "carts", "removals", "purchases", "sessions", "view_to_cart_rate",
                        "cart_to_purchase_rate", "view_to_purchase_rate")
PRODUCT_CONVERSION_COLUMNS = ("product_id", "brand", "category_id", "category_code", "views", "carts", "purchases",
                              "revenue", "conversion_rate")
USER_ENGAGEMENT_COLUMNS = ("user_id", "sessions", "events", "purchases", "revenue", "first_seen", "last_seen",
                           "days_since_last_seen", "as_of_date")
HOURLY_SALES_COLUMNS = ("event_date", "hour_of_day", "purchases", "revenue")


def _money(total: Column) -> Column:
    return F.round(total, 2).cast(MONEY_TYPE)


def _ratio(numerator: Column, denominator: Column, type_: str, places: int) -> Column:
    """numerator / denominator rounded half up, null when the denominator is 0."""
    return F.when(denominator != 0, F.round(numerator.cast(COUNT_TYPE) / denominator.cast(COUNT_TYPE), places)
                  ).cast(type_)


def _count_of(event_type: str) -> Column:
    return F.count_if(F.col("event_type") == event_type).cast("long")


def _purchases(orders: DataFrame) -> DataFrame:
    return orders.where(~F.col("is_cancellation"))


# --- orders ---------------------------------------------------------------------------------------

def daily_sales(orders: DataFrame) -> DataFrame:
    """Per invoice date and country: distinct invoices, lines, units, revenue, distinct customers."""
    return (_purchases(orders)
            .groupBy(F.col("invoice_date").alias("sales_date"), "country")
            .agg(F.count_distinct("invoice_no").alias("orders"),
                 F.count(F.lit(1)).alias("order_lines"),
                 F.sum("quantity").cast("long").alias("units"),
                 _money(F.sum("line_total")).alias("revenue"),
                 F.count_distinct("customer_id").alias("customers"))
            .withColumn("avg_order_value", F.round(F.col("revenue") / F.col("orders"), 2).cast(MONEY_TYPE))
            .select(*DAILY_SALES_COLUMNS))


def customer_totals(orders: DataFrame) -> DataFrame:
    """Per customer with at least one purchase: first and last purchase day, invoices, money spent."""
    return (_purchases(orders).where(F.col("customer_id").isNotNull())
            .groupBy("customer_id")
            .agg(F.min("invoice_date").alias("first_purchase"),
                 F.max("invoice_date").alias("last_purchase"),
                 F.count_distinct("invoice_no").alias("frequency"),
                 _money(F.sum("line_total")).alias("monetary")))


def _quintile(order: Column) -> Column:
    """1-5 by rank: 1 + floor(5 x percent rank), ties share a score, the top rank gets 5."""
    rank = F.percent_rank().over(Window.orderBy(order))
    return F.least(F.lit(5), F.floor(rank * 5) + 1).cast("int")


def _segment() -> Column:
    segment = F.lit(None).cast("string")
    for name, recency_scores, frequency_scores in reversed(SEGMENTS):
        segment = F.when(F.col("r_score").isin(*recency_scores) & F.col("f_score").isin(*frequency_scores),
                         F.lit(name)).otherwise(segment)
    return segment


def _value_tier() -> Column:
    total = F.col("r_score") + F.col("f_score") + F.col("m_score")
    tier = F.lit(None).cast("string")
    for name, lowest in reversed(VALUE_TIERS):
        tier = F.when(total >= lowest, F.lit(name)).otherwise(tier)
    return tier


def customer_rfm(totals: DataFrame, orders: DataFrame) -> DataFrame:
    """Recency, scores, segment and tier over all customers, as of the latest invoice date in silver."""
    as_of = orders.agg(F.max("invoice_date").alias("as_of_date"))
    return (totals.crossJoin(as_of)
            .withColumn("recency_days", F.datediff("as_of_date", "last_purchase"))
            # A recent purchase is good: the longest recency ranks first and scores lowest.
            .withColumn("r_score", _quintile(F.col("recency_days").desc()))
            .withColumn("f_score", _quintile(F.col("frequency").asc()))
            .withColumn("m_score", _quintile(F.col("monetary").asc()))
            .withColumn("segment", _segment())
            .withColumn("value_tier", _value_tier())
            .select(*CUSTOMER_RFM_COLUMNS))


def product_totals(orders: DataFrame) -> DataFrame:
    return (_purchases(orders)
            .groupBy("stock_code")
            .agg(F.sum("quantity").cast("long").alias("units"),
                 _money(F.sum("line_total")).alias("revenue"),
                 F.count_distinct("invoice_no").alias("orders")))


def product_performance(totals: DataFrame, orders: DataFrame) -> DataFrame:
    """Revenue share of every product and its tier by the revenue of the products that sold more."""
    everything = Window.partitionBy()
    at_least = Window.orderBy(F.col("revenue").desc()).rangeBetween(Window.unboundedPreceding, Window.currentRow)
    same = Window.partitionBy("revenue")
    ranked = (totals
              .withColumn("_total", F.sum("revenue").over(everything))
              .withColumn("_above", F.sum("revenue").over(at_least) - F.sum("revenue").over(same)))
    tier = F.lit(SLOW_TIER)
    for name, limit in reversed(PRODUCT_TIERS):
        share = F.col("_total") * F.lit(limit).cast("decimal(3,2)")
        tier = F.when(F.col("_above") < share, F.lit(name)).otherwise(tier)
    return (ranked
            .withColumn("revenue_share", F.when(F.col("_total") != 0, F.round(F.col("revenue") / F.col("_total"), 6))
                        .cast(SHARE_TYPE))
            .withColumn("tier", tier)
            .select(*PRODUCT_PERFORMANCE_COLUMNS))


# --- events ---------------------------------------------------------------------------------------

def funnel_daily(events: DataFrame) -> DataFrame:
    """Per event date: events of each type, distinct sessions, and the funnel's step rates."""
    return (events.groupBy("event_date")
            .agg(_count_of("view").alias("views"), _count_of("cart").alias("carts"),
                 _count_of("remove_from_cart").alias("removals"), _count_of("purchase").alias("purchases"),
                 F.count_distinct("user_session").alias("sessions"))
            .withColumn("view_to_cart_rate", _ratio(F.col("carts"), F.col("views"), RATE_TYPE, 4))
            .withColumn("cart_to_purchase_rate", _ratio(F.col("purchases"), F.col("carts"), RATE_TYPE, 4))
            .withColumn("view_to_purchase_rate", _ratio(F.col("purchases"), F.col("views"), RATE_TYPE, 4))
            .select(*FUNNEL_DAILY_COLUMNS))


def _purchase_value() -> Column:
    """The exact (unrounded) price total of purchase events; null when there are none."""
    return F.sum(F.when(F.col("event_type") == "purchase", F.col("price")))


def _seen(column: str) -> Column:
    """(event time, value) of the last non-empty `column` in event time, the greater value on a tie; the max
    of these over partials is the max over their rows, so `max(...)[column]` is the latest value overall."""
    return F.max(F.when(F.col(column).isNotNull(), F.struct("event_ts", column)))


def product_events_daily(events: DataFrame) -> DataFrame:
    """Rollup per event date and product: counts by type, exact purchase value, latest brand and category."""
    return (events.groupBy("event_date", "product_id")
            .agg(_seen("brand").alias("brand_seen"), _seen("category_id").alias("category_id_seen"),
                 _seen("category_code").alias("category_code_seen"),
                 _count_of("view").alias("views"), _count_of("cart").alias("carts"),
                 _count_of("purchase").alias("purchases"), _purchase_value().alias("purchase_value")))


def product_conversion(rollup: DataFrame) -> DataFrame:
    """Per product: its latest known brand and category, views, carts, purchases, revenue, purchases per view."""
    return (rollup.groupBy("product_id")
            .agg(F.max("brand_seen")["brand"].alias("brand"),
                 F.max("category_id_seen")["category_id"].alias("category_id"),
                 F.max("category_code_seen")["category_code"].alias("category_code"),
                 F.sum("views").cast("long").alias("views"), F.sum("carts").cast("long").alias("carts"),
                 F.sum("purchases").cast("long").alias("purchases"),
                 _money(F.sum("purchase_value")).alias("revenue"))
            .withColumn("revenue", F.coalesce("revenue", F.lit(0).cast(MONEY_TYPE)))
            .withColumn("conversion_rate", _ratio(F.col("purchases"), F.col("views"), RATE_TYPE, 4))
            .select(*PRODUCT_CONVERSION_COLUMNS))


def user_sessions_daily(events: DataFrame) -> DataFrame:
    """Rollup per event date, user and session: events, purchases, exact purchase value, first and last event."""
    return (events.groupBy("event_date", "user_id", "user_session")
            .agg(F.count(F.lit(1)).alias("events"), _count_of("purchase").alias("purchases"),
                 _purchase_value().alias("purchase_value"),
                 F.min("event_ts").alias("first_seen"), F.max("event_ts").alias("last_seen")))


def user_totals(rollup: DataFrame) -> DataFrame:
    return (rollup.groupBy("user_id")
            .agg(F.count_distinct("user_session").alias("sessions"), F.sum("events").cast("long").alias("events"),
                 F.sum("purchases").cast("long").alias("purchases"), _money(F.sum("purchase_value")).alias("revenue"),
                 F.min("first_seen").alias("first_seen"), F.max("last_seen").alias("last_seen"))
            .withColumn("revenue", F.coalesce("revenue", F.lit(0).cast(MONEY_TYPE))))


def user_engagement(totals: DataFrame, events: DataFrame) -> DataFrame:
    """Days since each user was last seen, as of the latest event date in silver (`events`: silver events or
    their rollup, which has the same dates)."""
    as_of = events.agg(F.max("event_date").alias("as_of_date"))
    return (totals.crossJoin(as_of)
            .withColumn("days_since_last_seen", F.datediff("as_of_date", F.to_date("last_seen")))
            .select(*USER_ENGAGEMENT_COLUMNS))


def hourly_sales(events: DataFrame) -> DataFrame:
    """Per event date and hour (UTC) with purchases: purchases and their revenue."""
    return (events.where(F.col("event_type") == "purchase")
            .groupBy("event_date", "hour_of_day")
            .agg(F.count(F.lit(1)).alias("purchases"), _money(F.sum("price")).alias("revenue"))
            .withColumn("revenue", F.coalesce("revenue", F.lit(0).cast(MONEY_TYPE)))
            .select(*HOURLY_SALES_COLUMNS))


@dataclass(frozen=True)
class Rollup:
    """Partial aggregates of a mart per silver date: `compute` of a date's silver rows gives that date's rows."""

    table: str  # a gold table, partitioned by `date_column`
    date_column: str  # a column of silver and of the rollup
    compute: Callable[[DataFrame], DataFrame]


@dataclass(frozen=True)
class Mart:
    table: str
    source: str  # the silver table it is built from
    # (mart key column, the silver column it comes from; a rollup has the silver column under the same name)
    keys: tuple[tuple[str, str], ...]
    columns: tuple[str, ...]  # in table order
    # the rows of some keys (silver's, or the rollup's when there is one) -> those keys' rows
    aggregate: Callable[[DataFrame], DataFrame]
    # (all keys' aggregated rows, all inputs: silver or the whole rollup) -> the mart; None when `aggregate`
    # gives the mart's rows as they are.
    finish: Callable[[DataFrame, DataFrame], DataFrame] | None = None
    rollup: Rollup | None = None

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(column for column, _ in self.keys)

    def build(self, silver: DataFrame) -> DataFrame:
        """The whole mart from all of silver."""
        return self.build_from(self.rollup.compute(silver) if self.rollup else silver)

    def build_from(self, inputs: DataFrame) -> DataFrame:
        """The whole mart from all of its inputs (silver, or the whole rollup)."""
        rows = self.aggregate(inputs)
        return self.finish(rows, inputs) if self.finish else rows


MARTS = (
    Mart("daily_sales", "orders", (("sales_date", "invoice_date"), ("country", "country")), DAILY_SALES_COLUMNS,
         daily_sales),
    Mart("customer_rfm", "orders", (("customer_id", "customer_id"),), CUSTOMER_RFM_COLUMNS, customer_totals,
         customer_rfm),
    Mart("product_performance", "orders", (("stock_code", "stock_code"),), PRODUCT_PERFORMANCE_COLUMNS,
         product_totals, product_performance),
    Mart("funnel_daily", "events", (("event_date", "event_date"),), FUNNEL_DAILY_COLUMNS, funnel_daily),
    Mart("product_conversion", "events", (("product_id", "product_id"),), PRODUCT_CONVERSION_COLUMNS,
         product_conversion, rollup=Rollup("rollup_product_events", "event_date", product_events_daily)),
    Mart("user_engagement", "events", (("user_id", "user_id"),), USER_ENGAGEMENT_COLUMNS, user_totals,
         user_engagement, rollup=Rollup("rollup_user_sessions", "event_date", user_sessions_daily)),
    Mart("hourly_sales", "events", (("event_date", "event_date"), ("hour_of_day", "hour_of_day")),
         HOURLY_SALES_COLUMNS, hourly_sales),
)


def marts_of(source: str) -> tuple[Mart, ...]:
    return tuple(mart for mart in MARTS if mart.source == source)
