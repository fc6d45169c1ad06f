"""Bronze rows -> typed silver rows, or the first cleaning rule they break with a reason in words.

Rules are checked in the documented order and a row takes the first it breaks. The duplicate rule
needs rows of other dates, so it is applied by the silver job; these transforms decide the rest.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

ORDERS_RULES = ("malformed", "missing_key", "non_positive_price", "invalid_quantity", "duplicate")
EVENTS_RULES = ("malformed", "missing_key", "unknown_event_type", "negative_price", "duplicate")
EVENT_TYPES = ("view", "cart", "remove_from_cart", "purchase")

INTEGER = r"^[+-]?[0-9]+$"
DECIMAL = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$"
WHOLE_NUMBER = r"^[+-]?[0-9]+(\.0*)?$"
INVOICE_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$"
EVENT_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} UTC$"

# unit_price keeps the source's three decimals (prices such as 0.001 exist); 64-bit ids fit bigint.
PRICE_TYPE = "decimal(12,3)"
AMOUNT_TYPE = "decimal(18,3)"

ORDERS_COLUMNS = (
    "invoice_no", "stock_code", "description", "quantity", "unit_price", "line_total", "invoice_ts",
    "invoice_date", "customer_id", "country", "is_cancellation", "hour_of_day", "day_of_week", "month",
    "year", "_ingestion_date",
)
EVENTS_COLUMNS = (
    "event_ts", "event_date", "event_type", "product_id", "category_id", "category_code", "brand", "price",
    "user_id", "user_session", "hour_of_day", "day_of_week", "_ingestion_date",
)


def _quoted(column: str) -> Column:
    """A source value as it reads in a reason: 'value' or (empty)."""
    value = F.col(column)
    quoted = F.concat(F.lit("'"), value, F.lit("'"))
    return F.when(F.coalesce(value, F.lit("")) == "", F.lit("(empty)")).otherwise(quoted)


def _present(column: str) -> Column:
    return F.coalesce(F.trim(F.col(column)), F.lit("")) != ""


def _not_matching(column: str, pattern: str) -> Column:
    return _present(column) & ~F.trim(F.col(column)).rlike(pattern)


def _first_rule(checks: list[tuple[str, Column, Column]]) -> tuple[Column, Column]:
    """(rule, reason) of the first check that holds, or nulls."""
    rule, reason = F.lit(None).cast("string"), F.lit(None).cast("string")
    for name, broken, because in reversed(checks):
        rule = F.when(broken, F.lit(name)).otherwise(rule)
        reason = F.when(broken, because).otherwise(reason)
    return rule, reason


def _iso_day_of_week(ts: Column) -> Column:
    """Monday = 1 ... Sunday = 7 (Spark's dayofweek counts from Sunday = 1)."""
    return ((F.dayofweek(ts) + 5) % 7 + 1).cast("int")


def _order_quantity() -> Column:
    return F.trim("Quantity").try_cast("int")


def _order_price() -> Column:
    return F.trim("UnitPrice").try_cast(PRICE_TYPE)


def _invoice_ts() -> Column:
    return F.try_to_timestamp(F.trim("InvoiceDate"), F.lit("yyyy-MM-dd HH:mm:ss"))


def _is_cancellation() -> Column:
    return F.coalesce(F.trim("InvoiceNo").startswith("C"), F.lit(False))


def _event_ts() -> Column:
    return F.try_to_timestamp(F.regexp_replace(F.trim("event_time"), " UTC$", ""), F.lit("yyyy-MM-dd HH:mm:ss"))


def _event_price() -> Column:
    return F.trim("price").try_cast(PRICE_TYPE)


def classify_orders(bronze: DataFrame) -> DataFrame:
    """Bronze orders with `_rule` and `_reason`: the first of rules 1-4 broken, or null."""
    quantity, price, invoice_ts, cancellation = _order_quantity(), _order_price(), _invoice_ts(), _is_cancellation()
    checks = [
        ("malformed", F.col("_is_malformed"), F.concat(F.lit("the line is malformed: "), F.col("_malformed_reason"))),
        ("malformed", _not_matching("Quantity", INTEGER) | (_present("Quantity") & quantity.isNull()),
         F.concat(F.lit("Quantity "), _quoted("Quantity"), F.lit(" is not an integer"))),
        ("malformed", ~_present("Quantity"), F.lit("Quantity is empty")),
        ("malformed", _not_matching("UnitPrice", DECIMAL) | (_present("UnitPrice") & price.isNull()),
         F.concat(F.lit("UnitPrice "), _quoted("UnitPrice"), F.lit(" is not a decimal number"))),
        ("malformed", ~_present("UnitPrice"), F.lit("UnitPrice is empty")),
        ("malformed", ~F.coalesce(F.trim("InvoiceDate"), F.lit("")).rlike(INVOICE_DATE) | invoice_ts.isNull(),
         F.concat(F.lit("InvoiceDate "), _quoted("InvoiceDate"), F.lit(" is not a yyyy-MM-dd HH:mm:ss time"))),
        ("malformed", _not_matching("CustomerID", WHOLE_NUMBER),
         F.concat(F.lit("CustomerID "), _quoted("CustomerID"), F.lit(" is not a whole number"))),
        ("missing_key", ~_present("InvoiceNo"), F.lit("InvoiceNo is empty")),
        ("missing_key", ~_present("StockCode"), F.lit("StockCode is empty")),
        ("non_positive_price", price <= 0,
         F.concat(F.lit("UnitPrice "), _quoted("UnitPrice"), F.lit(" is not positive"))),
        ("invalid_quantity", quantity == 0, F.lit("Quantity is 0")),
        ("invalid_quantity", (quantity < 0) & ~cancellation,
         F.concat(F.lit("Quantity "), _quoted("Quantity"), F.lit(" is negative on invoice "), _quoted("InvoiceNo"),
                  F.lit(", which is not a cancellation (C...)"))),
        ("invalid_quantity", (quantity > 0) & cancellation,
         F.concat(F.lit("Quantity "), _quoted("Quantity"), F.lit(" is positive on cancellation invoice "),
                  _quoted("InvoiceNo"))),
    ]
    rule, reason = _first_rule(checks)
    return bronze.select("*", rule.alias("_rule"), reason.alias("_reason"))


def silver_orders(rows: DataFrame) -> DataFrame:
    """Typed silver columns of bronze order rows that passed the rules."""
    quantity, price, invoice_ts = _order_quantity(), _order_price(), _invoice_ts()
    customer = F.when(_present("CustomerID"), F.trim("CustomerID").try_cast("decimal(20,0)").try_cast("bigint"))
    return rows.select(
        F.trim("InvoiceNo").alias("invoice_no"),
        F.trim("StockCode").alias("stock_code"),
        F.col("Description").alias("description"),
        quantity.alias("quantity"),
        price.alias("unit_price"),
        (quantity.try_cast(AMOUNT_TYPE) * price).try_cast(AMOUNT_TYPE).alias("line_total"),
        invoice_ts.alias("invoice_ts"),
        F.to_date(invoice_ts).alias("invoice_date"),
        customer.alias("customer_id"),
        F.col("Country").alias("country"),
        _is_cancellation().alias("is_cancellation"),
        F.hour(invoice_ts).alias("hour_of_day"),
        _iso_day_of_week(invoice_ts).alias("day_of_week"),
        F.month(invoice_ts).alias("month"),
        F.year(invoice_ts).alias("year"),
        "_ingestion_date",
    )


def classify_events(bronze: DataFrame) -> DataFrame:
    """Bronze events with `_rule` and `_reason`: the first of rules 1-4 broken, or null."""
    event_ts, price = _event_ts(), _event_price()
    checks = [
        ("malformed", F.col("_is_malformed"), F.concat(F.lit("the line is malformed: "), F.col("_malformed_reason"))),
        ("malformed", _present("event_time") & (~F.trim("event_time").rlike(EVENT_TIME) | event_ts.isNull()),
         F.concat(F.lit("event_time "), _quoted("event_time"), F.lit(" is not a yyyy-MM-dd HH:mm:ss UTC time"))),
    ]
    for column in ("product_id", "category_id", "user_id"):
        checks.append((
            "malformed",
            _not_matching(column, INTEGER) | (_present(column) & F.trim(column).try_cast("bigint").isNull()),
            F.concat(F.lit(f"{column} "), _quoted(column), F.lit(" is not a 64-bit integer")),
        ))
    checks.append(("malformed", _not_matching("price", DECIMAL) | (_present("price") & price.isNull()),
                   F.concat(F.lit("price "), _quoted("price"), F.lit(" is not a decimal number"))))
    for column in ("event_time", "event_type", "product_id", "user_id", "user_session"):
        checks.append(("missing_key", ~_present(column), F.lit(f"{column} is empty")))
    checks += [
        ("unknown_event_type", ~F.trim("event_type").isin(*EVENT_TYPES),
         F.concat(F.lit("event_type "), _quoted("event_type"), F.lit(f" is not one of {', '.join(EVENT_TYPES)}"))),
        ("negative_price", price < 0, F.concat(F.lit("price "), _quoted("price"), F.lit(" is negative"))),
    ]
    rule, reason = _first_rule(checks)
    return bronze.select("*", rule.alias("_rule"), reason.alias("_reason"))


def silver_events(rows: DataFrame) -> DataFrame:
    """Typed silver columns of bronze event rows that passed the rules."""
    event_ts = _event_ts()
    return rows.select(
        event_ts.alias("event_ts"),
        F.to_date(event_ts).alias("event_date"),
        F.trim("event_type").alias("event_type"),
        F.trim("product_id").try_cast("bigint").alias("product_id"),
        F.trim("category_id").try_cast("bigint").alias("category_id"),
        F.when(_present("category_code"), F.col("category_code")).alias("category_code"),
        F.when(_present("brand"), F.col("brand")).alias("brand"),
        _event_price().alias("price"),
        F.trim("user_id").try_cast("bigint").alias("user_id"),
        F.trim("user_session").alias("user_session"),
        F.hour(event_ts).alias("hour_of_day"),
        _iso_day_of_week(event_ts).alias("day_of_week"),
        "_ingestion_date",
    )


def classify(source, bronze: DataFrame) -> DataFrame:
    """The source's rules 1-4 on its bronze rows: `_rule` and `_reason` added."""
    return _TRANSFORMS[source.name][0](bronze)


def to_silver(source, rows: DataFrame) -> DataFrame:
    """The source's typed silver columns of rows that passed every rule."""
    return _TRANSFORMS[source.name][1](rows)


def fingerprint(source, rows: DataFrame) -> DataFrame:
    """Add `_fingerprint`: a hash of the source fields, equal exactly when every field is equal."""
    fields = [F.coalesce(F.col(f"`{column}`"), F.lit("\u0000")) for column in source.columns]
    return rows.withColumn("_fingerprint", F.sha2(F.concat_ws("\u0001", *fields), 256))


def duplicate_suspects(index: DataFrame, dates, broadcast: bool = False) -> DataFrame:
    """The passing rows of `dates` that may be duplicates, by `_ingestion_date` and `_fingerprint`, with
    `_kept_on`: the earlier date that keeps their copy, or null where the date holds the first copies (and
    `_suspect`, always true: a row joined to no suspect has it null).

    `index` is the fingerprint index as it will stand (`fingerprint`, `copies`, `_ingestion_date`: the passing
    rows of every date, these dates included). A fingerprint is suspect on a date when that date holds it
    twice or more, or an earlier date holds it too; every other passing row is kept without a look at its
    neighbours. Only the index is read: its entries for `dates` narrow the history to their fingerprints,
    so the aggregate is the size of the dates decided, not of history. With `broadcast` (the caller knows
    those entries fit in memory) they are shipped to the scan of history, which then is a filter, with no
    shuffle of the index.
    """
    from pyspark.sql import Window

    on_dates = F.col("_ingestion_date").isin(*dates)
    wanted = index.where(on_dates).select("fingerprint")
    history = index.join(F.broadcast(wanted) if broadcast else wanted, "fingerprint", "left_semi")
    first_on = F.min("_ingestion_date").over(Window.partitionBy("fingerprint"))
    return (history.withColumn("_first_on", first_on)
            .where(on_dates & ((F.col("copies") > 1) | (F.col("_first_on") < F.col("_ingestion_date"))))
            .select("_ingestion_date", F.col("fingerprint").alias("_fingerprint"),
                    F.when(F.col("_first_on") < F.col("_ingestion_date"), F.col("_first_on")).alias("_kept_on"),
                    F.lit(True).alias("_suspect")))


def split_duplicates(source, rows: DataFrame, suspects: DataFrame, run_id: str,
                     broadcast: bool = False) -> tuple[DataFrame, DataFrame]:
    """(silver rows, quarantine rows) of one or more ingestion dates.

    `rows` are classified and fingerprinted bronze rows; `suspects` what `duplicate_suspects` found for their
    dates. A passing row is a duplicate when an earlier date holds the same fields (the earliest date keeps
    its copy), or when it is a second copy within its own date. Only the suspect rows are compared with
    each other; with `broadcast` (the caller knows the suspects fit in memory) they are shipped to every
    task, and the other rows go to silver with no shuffle at all.
    """
    from pyspark.sql import Window

    passing = rows.where(F.col("_rule").isNull())
    marked = passing.join(F.broadcast(suspects) if broadcast else suspects,
                          ["_ingestion_date", "_fingerprint"], "left_outer")
    suspect = marked.where(F.col("_suspect"))
    copies = Window.partitionBy("_ingestion_date", "_fingerprint").orderBy("_source_file")
    compared = suspect.withColumn("_copy", F.row_number().over(copies))
    duplicate = F.col("_kept_on").isNotNull() | (F.col("_copy") > 1)
    reason = (F.when(F.col("_kept_on").isNotNull(),
                     F.concat(F.lit("identical to a row kept from ingestion date "), F.col("_kept_on").cast("string")))
              .otherwise(F.lit("identical to another row of the same ingestion date")))
    helpers = ("_kept_on", "_suspect", "_copy")
    kept = (marked.where(F.col("_suspect").isNull()).drop(*helpers)
            .unionByName(compared.where(~duplicate).drop(*helpers)))
    repeated = compared.where(duplicate).withColumn("_rule", F.lit("duplicate")).withColumn("_reason", reason)
    rejected = rows.where(F.col("_rule").isNotNull()).unionByName(repeated.drop(*helpers))
    return to_silver(source, kept), quarantine(source, rejected, run_id)


def quarantine(source, rejected: DataFrame, run_id: str) -> DataFrame:
    """One quarantine row per rejected bronze row, with the raw row as delivered (or as parsed, as CSV)."""
    fields = F.struct(*[F.col(f"`{column}`") for column in source.columns])
    return rejected.select(
        F.lit(source.name).alias("source"),
        F.col("_rule").alias("rule"),
        F.col("_reason").alias("reason"),
        F.coalesce(F.col("_raw_line"), F.to_csv(fields, {"quote": '"', "escape": '"'})).alias("record"),
        "_ingestion_date",
        F.lit(run_id).alias("_run_id"),
    )


_TRANSFORMS = {"orders": (classify_orders, silver_orders), "events": (classify_events, silver_events)}
