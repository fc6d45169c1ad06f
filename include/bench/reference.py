"""The lakehouse's bronze -> silver -> gold work again, in DuckDB: the benchmark's reference engine.

The benchmark times a second engine on the same deliveries as the Spark jobs and checks that both come
to the same gold numbers. `Reference` is that engine: one in-memory DuckDB connection that reads the
landing zone and writes every layer as Parquet under its own output folder, with the rules of the
Spark jobs restated in SQL:

    out/bronze/<source>/_ingestion_date=<day>/part-0.parquet        one row per delivered data line
    out/silver/<source>/_ingestion_date=<day>/part-0.parquet        typed rows that passed every rule
    out/silver/quarantine/source=<source>/_ingestion_date=<day>/part-0.parquet
    out/silver/fingerprints/source=<source>/_ingestion_date=<day>/part-0.parquet
    out/silver/dim_customer.parquet, out/silver/dim_product.parquet  (orders: SCD type 2, rebuilt)
    out/gold/<mart>.parquet                                          every mart, rebuilt from all of silver

    reference = Reference(Path("data/landing"), Path("/tmp/reference"))
    for day in days:                      # in ingestion-date order
        reference.bronze("events", day); reference.silver("events", day); reference.gold("events", day)
    reference.gold_table("funnel_daily")  # a pyarrow.Table, as written

Each call reads its inputs from what the layer before wrote (the landing files, bronze Parquet, silver
Parquet), never from memory, so it times the same work as the Spark job of that layer.

What it reproduces, and from where:

- bronze (spark_jobs/bronze.py, spark_jobs/transforms/bronze.py, include/landing.py): the delivery's
  `.csv` and `.csv.gz` files in name order, each header checked against the source layout first (the
  same error, from include.landing.check_header); lines split on \\n only, one trailing \\r removed,
  the first line (the header) dropped, an empty last piece after a final \\n not a line. Fields are
  split as Spark's CSV parser (univocity, as `from_csv` calls it) splits them: on commas outside
  double quotes, `""` a quote inside a quoted field, spaces after a closing quote dropped, a value
  with text after its closing quote kept as delivered, an unclosed quote running to the end of the
  line, quotes inside an unquoted value kept. A line is malformed when it is not UTF-8, empty, the
  header again, or has another field count than the layout; the reasons are Spark's texts.
- silver (spark_jobs/silver.py, spark_jobs/transforms/silver.py, spark_jobs/transforms/dimensions.py):
  rules 1-4 of each source in order, the first broken one named with the same reason text; the
  typed columns with Spark's types (decimal(12,3) prices rounded half up, timestamps in UTC, ISO day
  of week); the duplicate rule on the same SHA-256 fingerprints of the source fields: a passing row
  whose fingerprint a row kept on an earlier date holds is a duplicate, and within one date the first
  copy by `_source_file` stays. For orders, `dim_customer` and `dim_product` are rebuilt from all of
  silver orders as the Spark silver job rebuilds them.
- gold (spark_jobs/transforms/gold.py): all seven marts with Spark's columns and types, rebuilt from
  all of silver on every call (the Spark job merges touched keys, which by design gives what a full
  rebuild gives). `product_conversion` and `user_engagement` are aggregated from silver directly:
  the daily rollups the Spark job keeps them over give exactly that (a session seen on two dates
  counts once, money is rounded once after summing). Money is rounded half up to cents once after
  summing exact decimals; rates (4 places) and shares (6 places) are exact integer divisions
  rounded half up; RFM scores are 1 + floor(5 x percent rank) over the same double arithmetic.
  Timestamps are TIMESTAMP without time zone holding UTC (Spark's session time zone is UTC).

Limits:

- Silver must see a source's dates in ingestion-date order (the benchmark processes them so): a date
  older than one silver already decided raises ValueError. Deciding it again (a rerun of the latest
  date) is fine. Bronze and gold do not depend on the order.
- A file that is not UTF-8 throughout is read as bytes (slower); its lines that are not UTF-8 are
  flagged as Spark flags them, with their exact bytes in `_raw_bytes` and their text made valid
  with U+FFFD by a Python function (Spark's make_valid_utf8 gives the same text). Neither the
  project's generated events nor the real orders hold such lines.
- The CSV field splitting follows univocity on every case the deliveries have and on the odd ones
  tried against Spark (quotes inside values, text after a closing quote, unclosed quotes); a
  stranger quote sequence than those may split differently. Spark's Java regular expressions let
  `$` match before one final line terminator (\\r, U+0085, U+2028, U+2029), so a numeric field
  ending in one of those still counts as a number; the patterns here are widened the same way.
- `.csv.gz` files are decompressed to a scratch folder under `out` first (DuckDB reads plain text
  files whole); one file must stay under DuckDB's 4 GB string limit.
- Quarantine `record`s of rows that bronze did not flag are rebuilt as Spark's `to_csv` would write
  them (values trimmed, quoted when they hold a comma, a quote or a line break, empty as `""`); the
  benchmark compares rule names and counts, not these texts.

Checked (2026-12-01) against the Spark jobs run in-process (local[1], gates off) on two generated event
days (20,000 lines, --defect-rate 0.02), the real order days 2010-12-01 and 2010-12-02, and hand-written
deliveries of odd lines (CRLF, BOM, repeated headers, empty lines, quotes, bytes that are not UTF-8,
prices and times at their limits): bronze, silver, quarantine, fingerprints, both dimensions and all
seven marts equal row for row. Over all 305 real order days silver and the dimensions come to the
figures of docs/layers.md's "Silver" section. A generated 2M-line event day takes about 6 s in bronze,
11 s in silver and 1.5 s in gold on the project's 2-core machine (while busy), at 1.6 GB peak memory.
"""

from __future__ import annotations

import gzip
import shutil
import time
import zlib
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb

from include.landing import BOM, DeliveryError, HeaderMismatchError, check_header, list_delivery
from include.sources import PUBLISHED_TABLES, Source, get_source
from spark_jobs.transforms import gold as marts
from spark_jobs.transforms import silver as rules
from spark_jobs.transforms.dimensions import CUSTOMER_COLUMNS, PRODUCT_COLUMNS

RUN_ID = "reference"
PART = "part-0.parquet"

# A field as univocity reads it, matched from the comma before it (each line gets one in front):
# a quoted value that never closes runs to the end of the line; a quoted value, with whatever
# follows its closing quote up to the next comma; or an unquoted value up to the next comma.
CSV_FIELD = r',("(?:[^"]|"")*$|"(?:[^"]|"")*"[^,]*|[^,]*)'
# A quoted field that closes where it should: only whitespace (univocity: any char up to ' ') after it.
CLOSED_QUOTED = r'"(?:[^"]|"")*"[\x01-\x20]*'
UNCLOSED_QUOTED = r'"(?:[^"]|"")*'
# Java's `$` (not multiline) also matches before a final line terminator.
JAVA_END = r"(?:\r\n|[\n\r\x{85}\x{2028}\x{2029}])?$"

_MACROS = (
    # One CSV field's value from its token: quotes taken off and "" undone as univocity does.
    f"""csv_field(token) AS CASE
        WHEN NOT starts_with(token, '"') THEN token
        WHEN regexp_full_match(token, '{CLOSED_QUOTED}')
            THEN replace(regexp_extract(token, '^"(.*)"[\\x01-\\x20]*$', 1), '""', '"')
        WHEN regexp_full_match(token, '{UNCLOSED_QUOTED}') THEN replace(substr(token, 2), '""', '"')
        ELSE token END""",
    # A value as Spark's to_csv writes it (univocity's writer): trimmed, "" when that leaves nothing,
    # quoted when the value holds a comma, a quote or a line break; a null is nothing.
    """csv_written(value, trimmed) AS CASE
        WHEN value IS NULL THEN ''
        WHEN trimmed = '' THEN '""'
        WHEN regexp_matches(value, '[,"\\n\\r]') THEN '"' || replace(trimmed, '"', '""') || '"'
        ELSE trimmed END""",
    r"csv_out(value) AS csv_written(value, regexp_replace(value, '^[\x00-\x20]+|[\x00-\x20]+$', '', 'g'))",
    # One line without the \r a CRLF file leaves at its end.
    r"without_cr(line) AS CASE WHEN ends_with(line, chr(13)) THEN regexp_replace(line, '\r$', '') ELSE line END",
    # n / d rounded half up (away from zero) to a whole number, exactly; null when d is 0.
    """half_up_div(n, d) AS CASE
        WHEN CAST(d AS HUGEINT) = 0 THEN NULL
        WHEN (CAST(n AS HUGEINT) < 0) = (CAST(d AS HUGEINT) < 0)
            THEN (2 * abs(CAST(n AS HUGEINT)) + abs(CAST(d AS HUGEINT))) // (2 * abs(CAST(d AS HUGEINT)))
        ELSE -((2 * abs(CAST(n AS HUGEINT)) + abs(CAST(d AS HUGEINT))) // (2 * abs(CAST(d AS HUGEINT)))) END""",
    f"money(amount) AS CAST(round(amount, 2) AS {marts.MONEY_TYPE})",
    "cents(amount) AS CAST(amount * 100 AS HUGEINT)",
    # numerator / denominator of two counts, half up to 4 places; null when the denominator is 0.
    f"""rate(numerator, denominator) AS CASE WHEN denominator <> 0 THEN
        CAST(CAST(half_up_div(CAST(numerator AS HUGEINT) * 10000, denominator) AS DECIMAL(38,0)) * 0.0001
             AS {marts.RATE_TYPE}) END""",
)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _name(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def _files(paths: list[Path]) -> str:
    """A read_parquet of exactly these files (the partition folders' names are not columns)."""
    return f"read_parquet([{', '.join(_literal(str(path)) for path in paths)}], hive_partitioning = false)"


def _partition(base: Path, day: date) -> Path:
    return base / f"_ingestion_date={day.isoformat()}"


def _partition_days(base: Path) -> list[date]:
    if not base.is_dir():
        return []
    return sorted(date.fromisoformat(folder.name.split("=", 1)[1]) for folder in base.iterdir()
                  if folder.name.startswith("_ingestion_date=") and (folder / PART).is_file())


# --- the rules of spark_jobs/transforms/silver.py, as SQL ------------------------------------------

def _java(pattern: str) -> str:
    """A Spark `rlike` pattern for DuckDB's RE2: `$` as Java reads it."""
    return pattern[:-1] + JAVA_END if pattern.endswith("$") else pattern


def _trim(column: str) -> str:
    """The source column trimmed, computed once per row (see _trimmed)."""
    return _name(f"_t_{column}")


def _present(column: str) -> str:
    return f"(coalesce({_trim(column)}, '') <> '')"


def _not_matching(column: str, pattern: str) -> str:
    return f"({_present(column)} AND NOT regexp_matches({_trim(column)}, {_literal(_java(pattern))}))"


def _quoted(column: str) -> str:
    """A source value as it reads in a reason: 'value' or (empty)."""
    return f"CASE WHEN coalesce({_name(column)}, '') = '' THEN '(empty)' ELSE '''' || {_name(column)} || '''' END"


def _timestamp(text: str) -> str:
    """Spark's try_to_timestamp(text, 'yyyy-MM-dd HH:mm:ss') in UTC: null for an impossible date or time, and
    for anything after the seconds (DuckDB's strptime would skip trailing whitespace such as a \\r)."""
    return f"(CASE WHEN length({text}) = 19 THEN try_strptime({text}, '%Y-%m-%d %H:%M:%S') END)"


def _trimmed(source: Source) -> str:
    return ", ".join(f"trim({_name(column)}, ' ') AS {_trim(column)}" for column in source.columns)  # spaces only


# The values the rules and the typed columns read, parsed once per row from the trimmed fields.
PARSED = {
    "orders": {
        "_quantity": f"TRY_CAST({_trim('Quantity')} AS INTEGER)",
        "_unit_price": f"TRY_CAST({_trim('UnitPrice')} AS {rules.PRICE_TYPE})",
        "_invoice_ts": _timestamp(_trim("InvoiceDate")),
        "_cancellation": f"coalesce(starts_with({_trim('InvoiceNo')}, 'C'), false)",
    },
    "events": {
        "_event_ts": _timestamp(f"regexp_replace({_trim('event_time')}, ' UTC$', '')"),
        "_price": f"TRY_CAST({_trim('price')} AS {rules.PRICE_TYPE})",
        **{f"_{column}": f"TRY_CAST({_trim(column)} AS BIGINT)" for column in ("product_id", "category_id", "user_id")},
    },
}
QUANTITY, UNIT_PRICE, INVOICE_TS, CANCELLATION = "_quantity", "_unit_price", "_invoice_ts", "_cancellation"
EVENT_TS, EVENT_PRICE = "_event_ts", "_price"
BRONZE_MALFORMED = ("malformed", "_is_malformed", "'the line is malformed: ' || _malformed_reason")


def _orders_checks() -> list[tuple[str, str, str]]:
    """(rule, broken, reason) of orders rules 1-4, in the order classify_orders checks them."""
    return [
        BRONZE_MALFORMED,
        ("malformed",
         f"({_not_matching('Quantity', rules.INTEGER)} OR ({_present('Quantity')} AND {QUANTITY} IS NULL))",
         f"'Quantity ' || {_quoted('Quantity')} || ' is not an integer'"),
        ("malformed", f"NOT {_present('Quantity')}", "'Quantity is empty'"),
        ("malformed",
         f"({_not_matching('UnitPrice', rules.DECIMAL)} OR ({_present('UnitPrice')} AND {UNIT_PRICE} IS NULL))",
         f"'UnitPrice ' || {_quoted('UnitPrice')} || ' is not a decimal number'"),
        ("malformed", f"NOT {_present('UnitPrice')}", "'UnitPrice is empty'"),
        ("malformed",
         f"(NOT regexp_matches(coalesce({_trim('InvoiceDate')}, ''), {_literal(_java(rules.INVOICE_DATE))})"
         f" OR {INVOICE_TS} IS NULL)",
         f"'InvoiceDate ' || {_quoted('InvoiceDate')} || ' is not a yyyy-MM-dd HH:mm:ss time'"),
        ("malformed", _not_matching("CustomerID", rules.WHOLE_NUMBER),
         f"'CustomerID ' || {_quoted('CustomerID')} || ' is not a whole number'"),
        ("missing_key", f"NOT {_present('InvoiceNo')}", "'InvoiceNo is empty'"),
        ("missing_key", f"NOT {_present('StockCode')}", "'StockCode is empty'"),
        ("non_positive_price", f"{UNIT_PRICE} <= 0", f"'UnitPrice ' || {_quoted('UnitPrice')} || ' is not positive'"),
        ("invalid_quantity", f"{QUANTITY} = 0", "'Quantity is 0'"),
        ("invalid_quantity", f"({QUANTITY} < 0 AND NOT {CANCELLATION})",
         f"'Quantity ' || {_quoted('Quantity')} || ' is negative on invoice ' || {_quoted('InvoiceNo')}"
         " || ', which is not a cancellation (C...)'"),
        ("invalid_quantity", f"({QUANTITY} > 0 AND {CANCELLATION})",
         f"'Quantity ' || {_quoted('Quantity')} || ' is positive on cancellation invoice ' || {_quoted('InvoiceNo')}"),
    ]


def _events_checks() -> list[tuple[str, str, str]]:
    """(rule, broken, reason) of events rules 1-4, in the order classify_events checks them."""
    checks = [
        BRONZE_MALFORMED,
        ("malformed", f"({_present('event_time')} AND (NOT regexp_matches({_trim('event_time')}, "
                      f"{_literal(_java(rules.EVENT_TIME))}) OR {EVENT_TS} IS NULL))",
         f"'event_time ' || {_quoted('event_time')} || ' is not a yyyy-MM-dd HH:mm:ss UTC time'"),
    ]
    for column in ("product_id", "category_id", "user_id"):
        checks.append((
            "malformed",
            f"({_not_matching(column, rules.INTEGER)} OR ({_present(column)} AND _{column} IS NULL))",
            f"'{column} ' || {_quoted(column)} || ' is not a 64-bit integer'"))
    checks.append(("malformed",
                   f"({_not_matching('price', rules.DECIMAL)} OR ({_present('price')} AND {EVENT_PRICE} IS NULL))",
                   f"'price ' || {_quoted('price')} || ' is not a decimal number'"))
    for column in ("event_time", "event_type", "product_id", "user_id", "user_session"):
        checks.append(("missing_key", f"NOT {_present(column)}", f"'{column} is empty'"))
    types = ", ".join(_literal(kind) for kind in rules.EVENT_TYPES)
    checks += [
        ("unknown_event_type", f"{_trim('event_type')} NOT IN ({types})",
         f"'event_type ' || {_quoted('event_type')} || ' is not one of {', '.join(rules.EVENT_TYPES)}'"),
        ("negative_price", f"{EVENT_PRICE} < 0", f"'price ' || {_quoted('price')} || ' is negative'"),
    ]
    return checks


def _first_rule(checks: list[tuple[str, str, str]]) -> tuple[str, str]:
    """(rule, reason) of the first check that holds, or nulls (a null condition does not hold)."""
    rule = " ".join(f"WHEN {broken} THEN {_literal(name)}" for name, broken, _ in checks)
    reason = " ".join(f"WHEN {broken} THEN {because}" for _, broken, because in checks)
    return f"CASE {rule} END", f"CASE {reason} END"


SILVER_SELECT = {
    "orders": {
        "invoice_no": _trim("InvoiceNo"),
        "stock_code": _trim("StockCode"),
        "description": _name("Description"),
        "quantity": QUANTITY,
        "unit_price": UNIT_PRICE,
        "line_total": f"TRY_CAST(CAST({QUANTITY} AS DECIMAL(38,3)) * {UNIT_PRICE} AS {rules.AMOUNT_TYPE})",
        "invoice_ts": INVOICE_TS,
        "invoice_date": f"CAST({INVOICE_TS} AS DATE)",
        "customer_id": f"CASE WHEN {_present('CustomerID')} THEN "
                       f"TRY_CAST(TRY_CAST({_trim('CustomerID')} AS DECIMAL(20,0)) AS BIGINT) END",
        "country": _name("Country"),
        "is_cancellation": CANCELLATION,
        "hour_of_day": f"CAST(hour({INVOICE_TS}) AS INTEGER)",
        "day_of_week": f"CAST(isodow({INVOICE_TS}) AS INTEGER)",
        "month": f"CAST(month({INVOICE_TS}) AS INTEGER)",
        "year": f"CAST(year({INVOICE_TS}) AS INTEGER)",
        "_ingestion_date": "_ingestion_date",
    },
    "events": {
        "event_ts": EVENT_TS,
        "event_date": f"CAST({EVENT_TS} AS DATE)",
        "event_type": _trim("event_type"),
        "product_id": "_product_id",
        "category_id": "_category_id",
        "category_code": f"CASE WHEN {_present('category_code')} THEN {_name('category_code')} END",
        "brand": f"CASE WHEN {_present('brand')} THEN {_name('brand')} END",
        "price": EVENT_PRICE,
        "user_id": "_user_id",
        "user_session": _trim("user_session"),
        "hour_of_day": f"CAST(hour({EVENT_TS}) AS INTEGER)",
        "day_of_week": f"CAST(isodow({EVENT_TS}) AS INTEGER)",
        "_ingestion_date": "_ingestion_date",
    },
}
assert tuple(SILVER_SELECT["orders"]) == rules.ORDERS_COLUMNS
assert tuple(SILVER_SELECT["events"]) == rules.EVENTS_COLUMNS
CHECKS = {"orders": _orders_checks(), "events": _events_checks()}


# --- the marts of spark_jobs/transforms/gold.py, as SQL --------------------------------------------

def _quintile(order: str) -> str:
    """1 + floor(5 x percent rank), at most 5, with Spark's percent rank: (rank - 1) / (rows - 1) in doubles."""
    percent_rank = (f"CASE WHEN count(*) OVER () > 1 THEN CAST(rank() OVER (ORDER BY {order}) - 1 AS DOUBLE) "
                    f"/ CAST(count(*) OVER () - 1 AS DOUBLE) ELSE 0 END")
    return f"CAST(least(5, floor(({percent_rank}) * 5) + 1) AS INTEGER)"


def _segment() -> str:
    cases = " ".join(f"WHEN r_score IN ({', '.join(map(str, r))}) AND f_score IN ({', '.join(map(str, f))}) "
                     f"THEN {_literal(name)}" for name, r, f in marts.SEGMENTS)
    return f"CASE {cases} END"


def _value_tier() -> str:
    cases = " ".join(f"WHEN r_score + f_score + m_score >= {lowest} THEN {_literal(name)}"
                     for name, lowest in marts.VALUE_TIERS)
    return f"CASE {cases} END"


def _product_tier() -> str:
    # _above < _total x limit, in whole cents x 100 so the comparison stays exact.
    cases = " ".join(f"WHEN cents(_above) * 100 < cents(_total) * {int(Decimal(limit) * 100)} THEN {_literal(name)}"
                     for name, limit in marts.PRODUCT_TIERS)
    return f"CASE {cases} ELSE {_literal(marts.SLOW_TIER)} END"


def _latest(column: str) -> str:
    """The last non-null value in event time, the greater value on a tie (Spark: max of struct(event_ts, value))."""
    return f"(max({{'ts': event_ts, 'value': {column}}}) FILTER (WHERE {column} IS NOT NULL)).value"


def _count_of(event_type: str) -> str:
    return f"CAST(count_if(event_type = {_literal(event_type)}) AS BIGINT)"


MART_SQL = {
    "daily_sales": f"""
        WITH sales AS (
            SELECT invoice_date AS sales_date, country, count(DISTINCT invoice_no) AS orders,
                   count(*) AS order_lines, CAST(sum(quantity) AS BIGINT) AS units,
                   money(sum(line_total)) AS revenue, count(DISTINCT customer_id) AS customers
            FROM silver WHERE NOT is_cancellation GROUP BY invoice_date, country)
        SELECT *, CAST(CAST(half_up_div(cents(revenue), orders) AS DECIMAL(38,0)) * 0.01 AS {marts.MONEY_TYPE})
                  AS avg_order_value
        FROM sales""",
    "customer_rfm": f"""
        WITH totals AS (
            SELECT customer_id, min(invoice_date) AS first_purchase, max(invoice_date) AS last_purchase,
                   count(DISTINCT invoice_no) AS frequency, money(sum(line_total)) AS monetary
            FROM silver WHERE NOT is_cancellation AND customer_id IS NOT NULL GROUP BY customer_id),
        as_of AS (SELECT max(invoice_date) AS as_of_date FROM silver),
        recency AS (
            SELECT totals.*, as_of_date, CAST(date_diff('day', last_purchase, as_of_date) AS INTEGER) AS recency_days
            FROM totals CROSS JOIN as_of),
        scored AS (
            SELECT *, {_quintile('recency_days DESC')} AS r_score, {_quintile('frequency ASC')} AS f_score,
                   {_quintile('monetary ASC')} AS m_score
            FROM recency)
        SELECT *, {_segment()} AS segment, {_value_tier()} AS value_tier FROM scored""",
    "product_performance": f"""
        WITH totals AS (
            SELECT stock_code, CAST(sum(quantity) AS BIGINT) AS units, money(sum(line_total)) AS revenue,
                   count(DISTINCT invoice_no) AS orders
            FROM silver WHERE NOT is_cancellation GROUP BY stock_code),
        ranked AS (
            SELECT *, sum(revenue) OVER () AS _total,
                   sum(revenue) OVER (ORDER BY revenue DESC RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
                   - sum(revenue) OVER (PARTITION BY revenue) AS _above
            FROM totals)
        SELECT *, CASE WHEN _total <> 0 THEN CAST(CAST(half_up_div(cents(revenue) * 1000000, cents(_total))
                       AS DECIMAL(38,0)) * 0.000001 AS {marts.SHARE_TYPE}) END AS revenue_share,
               {_product_tier()} AS tier
        FROM ranked""",
    "funnel_daily": f"""
        WITH counts AS (
            SELECT event_date, {_count_of('view')} AS views, {_count_of('cart')} AS carts,
                   {_count_of('remove_from_cart')} AS removals, {_count_of('purchase')} AS purchases,
                   count(DISTINCT user_session) AS sessions
            FROM silver GROUP BY event_date)
        SELECT *, rate(carts, views) AS view_to_cart_rate, rate(purchases, carts) AS cart_to_purchase_rate,
               rate(purchases, views) AS view_to_purchase_rate
        FROM counts""",
    "product_conversion": f"""
        WITH products AS (
            SELECT product_id, {_latest('brand')} AS brand, {_latest('category_id')} AS category_id,
                   {_latest('category_code')} AS category_code, {_count_of('view')} AS views,
                   {_count_of('cart')} AS carts, {_count_of('purchase')} AS purchases,
                   coalesce(money(sum(price) FILTER (WHERE event_type = 'purchase')), CAST(0 AS {marts.MONEY_TYPE}))
                   AS revenue
            FROM silver GROUP BY product_id)
        SELECT *, rate(purchases, views) AS conversion_rate FROM products""",
    "user_engagement": f"""
        WITH as_of AS (SELECT max(event_date) AS as_of_date FROM silver),
        users AS (
            SELECT user_id, count(DISTINCT user_session) AS sessions, count(*) AS events,
                   {_count_of('purchase')} AS purchases,
                   coalesce(money(sum(price) FILTER (WHERE event_type = 'purchase')), CAST(0 AS {marts.MONEY_TYPE}))
                   AS revenue,
                   min(event_ts) AS first_seen, max(event_ts) AS last_seen
            FROM silver GROUP BY user_id)
        SELECT users.*, CAST(date_diff('day', CAST(last_seen AS DATE), as_of_date) AS INTEGER) AS days_since_last_seen,
               as_of_date
        FROM users CROSS JOIN as_of""",
    "hourly_sales": f"""
        SELECT event_date, hour_of_day, count(*) AS purchases,
               coalesce(money(sum(price)), CAST(0 AS {marts.MONEY_TYPE})) AS revenue
        FROM silver WHERE event_type = 'purchase' GROUP BY event_date, hour_of_day""",
}
MART_COLUMNS = {
    "daily_sales": marts.DAILY_SALES_COLUMNS, "customer_rfm": marts.CUSTOMER_RFM_COLUMNS,
    "product_performance": marts.PRODUCT_PERFORMANCE_COLUMNS, "funnel_daily": marts.FUNNEL_DAILY_COLUMNS,
    "product_conversion": marts.PRODUCT_CONVERSION_COLUMNS, "user_engagement": marts.USER_ENGAGEMENT_COLUMNS,
    "hourly_sales": marts.HOURLY_SALES_COLUMNS,
}


def _history(key: str, attribute: str) -> str:
    """SCD2 versions of `attribute` per `key` from silver orders (spark_jobs/transforms/dimensions.py)."""
    return f"""
        WITH seen AS (
            -- per key and invoice time: the value of the highest invoice number; an empty value loses to any
            SELECT {key}, invoice_ts,
                   max({{'present': _value IS NOT NULL, 'invoice': invoice_no, 'value': _value}}).value AS _value
            FROM (SELECT {key}, invoice_ts, invoice_no,
                         CASE WHEN trim({attribute}, ' ') <> '' THEN {attribute} END AS _value
                  FROM silver WHERE {key} IS NOT NULL)
            GROUP BY {key}, invoice_ts),
        carried AS (
            -- an empty value is not a change: it carries the value before it
            SELECT {key}, invoice_ts,
                   coalesce(_value, last_value(_value IGNORE NULLS) OVER (PARTITION BY {key} ORDER BY invoice_ts
                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) AS _value
            FROM seen),
        starts AS (
            SELECT * FROM (
                SELECT *, lag(_value) OVER (PARTITION BY {key} ORDER BY invoice_ts) AS _previous,
                       row_number() OVER (PARTITION BY {key} ORDER BY invoice_ts) AS _position
                FROM carried)
            WHERE _position = 1 OR _value IS DISTINCT FROM _previous)
        SELECT {key}, _value AS {attribute}, invoice_ts AS valid_from,
               lead(invoice_ts) OVER (PARTITION BY {key} ORDER BY invoice_ts) AS valid_to,
               lead(invoice_ts) OVER (PARTITION BY {key} ORDER BY invoice_ts) IS NULL AS is_current,
               CAST(row_number() OVER (PARTITION BY {key} ORDER BY invoice_ts) AS INTEGER) AS version
        FROM starts"""


DIMENSION_SQL = {
    "dim_customer": _history("customer_id", "country"),
    # list_price (type 1): the most frequent unit price on the product's latest invoice day, the higher on a tie
    "dim_product": f"""
        WITH history AS ({_history("stock_code", "description")}),
        latest AS (
            SELECT stock_code, unit_price FROM (
                SELECT stock_code, unit_price, invoice_date,
                       max(invoice_date) OVER (PARTITION BY stock_code) AS _latest FROM silver)
            WHERE invoice_date = _latest),
        prices AS (
            SELECT stock_code, max({{'count': copies, 'price': unit_price}}).price AS list_price
            FROM (SELECT stock_code, unit_price, count(*) AS copies FROM latest GROUP BY stock_code, unit_price)
            GROUP BY stock_code)
        SELECT history.*, CAST(list_price AS {rules.PRICE_TYPE}) AS list_price
        FROM history JOIN prices USING (stock_code)""",
}
DIMENSION_COLUMNS = {"dim_customer": CUSTOMER_COLUMNS, "dim_product": PRODUCT_COLUMNS}


class Reference:
    """The lakehouse's three layers in DuckDB, writing Parquet under `out` (see the module's docstring)."""

    def __init__(self, landing: Path, out: Path, threads: int | None = None):
        """`landing` as $LAKEHOUSE_LANDING, `out` the folder every layer is written under; `threads` for
        DuckDB (default: one per core)."""
        self.landing = Path(landing).expanduser().resolve()
        self.out = Path(out).expanduser().resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        config = {"temp_directory": str(self.out / "_duckdb_tmp"), "preserve_insertion_order": False}
        if threads is not None:
            config["threads"] = threads
        self.con = duckdb.connect(":memory:", config=config)
        for macro in _MACROS:
            self.con.execute(f"CREATE OR REPLACE TEMP MACRO {macro}")
        # Spark's make_valid_utf8 (each invalid sequence -> U+FFFD, as Python's "replace" does: checked on
        # truncated, overlong, surrogate and out-of-range sequences); called only for lines that are not UTF-8.
        self.con.create_function("make_valid_utf8", lambda raw: raw.decode("utf-8", "replace"),
                                 [duckdb.sqltypes.BLOB], duckdb.sqltypes.VARCHAR)

    # --- bronze -----------------------------------------------------------------------------------

    def bronze(self, source: str, day: date) -> dict:
        """One delivery -> out/bronze/<source>/_ingestion_date=<day>/: one row per data line, malformed flagged."""
        started = time.monotonic()
        source = get_source(source)
        folder = self.landing / source.name / day.isoformat()
        if not folder.is_dir():
            raise DeliveryError(f"no {source.name} delivery for {day}: {folder} does not exist")
        paths, _ignored = list_delivery(folder)
        scratch = self.out / "_scratch" / f"{source.name}-{day.isoformat()}"
        target = _partition(self.out / "bronze" / source.name, day) / PART
        try:
            self.con.execute("CREATE OR REPLACE TEMP TABLE bronze_lines "
                             "(_source_file VARCHAR, _text VARCHAR, _valid BOOLEAN, _bytes BLOB)")
            # Every file's header first, as the Spark job checks them before it reads any data.
            relative = [path.relative_to(self.landing).as_posix() for path in paths]
            for path, name in zip(paths, relative):
                _check_header(path, source, name)
            for number, (path, name) in enumerate(zip(paths, relative)):
                self._load_lines(self._readable(path, scratch, number), name)
            ingested_at = datetime.now(UTC).replace(tzinfo=None)
            self._write(self._bronze_rows(source, day, ingested_at), target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            self.con.execute("DROP TABLE IF EXISTS bronze_lines")
        rows, malformed = self.con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE _is_malformed) FROM {_files([target])}").fetchone()
        return {"rows": rows, "malformed": malformed, "seconds": time.monotonic() - started}

    def _readable(self, path: Path, scratch: Path, number: int) -> Path:
        """A plain-text file DuckDB can read whole: the file itself, or its decompressed copy."""
        if not path.name.endswith(".gz") and not any(char in str(path) for char in "*?[]{}"):
            return path
        scratch.mkdir(parents=True, exist_ok=True)
        copy = scratch / f"{number}.csv"  # a name without glob characters, which DuckDB would expand
        if path.name.endswith(".gz"):
            try:
                with gzip.open(path) as compressed, copy.open("wb") as plain:
                    shutil.copyfileobj(compressed, plain, 1 << 20)
            except (OSError, EOFError, zlib.error) as error:
                raise DeliveryError(f"{path}: cannot be read as gzip-compressed CSV: {error}") from error
        else:
            copy.symlink_to(path)
        return copy

    def _load_lines(self, path: Path, relative: str) -> None:
        """Append the file's data lines to bronze_lines: split on \\n, a trailing \\r removed, the header
        (first line) dropped, and no line for the empty piece after a final \\n."""
        lines = "range(2, len(f.pieces) + CASE WHEN f.pieces[-1] = '' THEN 0 ELSE 1 END) AS r(i)"
        try:
            # Valid UTF-8 (every delivery so far): the whole file as text, one list element per line. (A
            # lateral range over the list, not unnest, which is quadratic on a list of millions.)
            self.con.execute(f"""INSERT INTO bronze_lines
                SELECT {_literal(relative)}, without_cr(f.pieces[r.i]), true, NULL
                FROM (SELECT string_split(content, chr(10)) AS pieces FROM read_text({_literal(str(path))})) AS f,
                     {lines}""")
        except duckdb.InvalidInputException as error:
            if "UTF-8" not in str(error):
                raise
            # Not UTF-8 somewhere: read the bytes. DuckDB renders a blob as text with \xNN escapes (a
            # backslash too), so the newline's escape splits lines exactly and each piece casts back
            # to its bytes; lines that do not decode are flagged, their bytes kept, their text Spark's.
            self.con.execute(f"""INSERT INTO bronze_lines
                SELECT {_literal(relative)}, without_cr(coalesce(text, make_valid_utf8(CAST(piece AS BLOB)))),
                       text IS NOT NULL, CASE WHEN text IS NULL THEN CAST(piece AS BLOB) END
                FROM (SELECT f.pieces[r.i] AS piece, try(decode(CAST(f.pieces[r.i] AS BLOB))) AS text
                      FROM (SELECT string_split(CAST(content AS VARCHAR), '\\x0A') AS pieces
                            FROM read_blob({_literal(str(path))})) AS f,
                           {lines})""")

    @staticmethod
    def _bronze_rows(source: Source, day: date, ingested_at: datetime) -> str:
        """bronze_lines as bronze rows: the source columns as delivered, the malformed flag and reason, the raw
        text of malformed lines, the bytes of lines that are not UTF-8, and the ingestion metadata."""
        expected = len(source.columns)
        quotes = "(length(_text) - length(replace(_text, '\"', '')))"
        # Spark's count for the reason: commas with an even number of quotes after them, plus one.
        split_count = ("(1 + list_sum(list_transform(string_split(_text, '\"'), lambda piece, i: "
                       "CASE WHEN i % 2 = 1 THEN length(piece) - length(replace(piece, ',', '')) ELSE 0 END)))")
        fields = ",\n".join(
            f"CASE WHEN _malformed_reason IS NULL THEN csv_field(_tokens[{index}]) "
            f"ELSE nullif(csv_field(_tokens[{index}]), '') END AS {_name(column)}"
            for index, column in enumerate(source.columns, 1))
        return f"""WITH tokenized AS (
                SELECT *, CASE WHEN contains(_text, '"') THEN regexp_extract_all(',' || _text, {_literal(CSV_FIELD)}, 1)
                               ELSE string_split(_text, ',') END AS _tokens
                FROM bronze_lines),
            flagged AS (
                SELECT *, CASE
                    WHEN NOT _valid THEN 'line is not valid UTF-8 (raw bytes kept in _raw_bytes)'
                    WHEN _text = '' THEN 'empty line'
                    WHEN _text = {_literal(source.header)} THEN 'header line repeated inside the file'
                    WHEN len(_tokens) <> {expected} AND {quotes} % 2 = 1 THEN 'unbalanced quotes'
                    WHEN len(_tokens) <> {expected} AND {split_count} <> {expected}
                        THEN 'wrong field count: expected {expected}, found ' || {split_count}
                    WHEN len(_tokens) <> {expected} THEN 'cannot be parsed as CSV'
                END AS _malformed_reason
                FROM tokenized)
            SELECT {fields},
                   _malformed_reason IS NOT NULL AS _is_malformed, _malformed_reason,
                   CASE WHEN _malformed_reason IS NOT NULL THEN _text END AS _raw_line, _bytes AS _raw_bytes,
                   DATE '{day.isoformat()}' AS _ingestion_date, _source_file,
                   TIMESTAMP '{ingested_at.isoformat(sep=" ")}' AS _ingested_at, {_literal(RUN_ID)} AS _run_id
            FROM flagged"""

    # --- silver -----------------------------------------------------------------------------------

    def silver(self, source: str, day: date) -> dict:
        """One date's bronze rows -> silver or quarantine (rules 1-4, then duplicates against earlier dates)."""
        started = time.monotonic()
        source = get_source(source)
        bronze = _partition(self.out / "bronze" / source.name, day) / PART
        if not bronze.is_file():
            raise RuntimeError(f"{bronze} does not exist: run bronze for {source.name} {day} first")
        index = self.out / "silver" / "fingerprints" / f"source={source.name}"
        later = [decided for decided in _partition_days(index) if decided > day]
        if later:
            raise ValueError(
                f"silver {source.name} {day}: {', '.join(map(str, later))} already decided; the reference applies "
                f"the duplicate rule in ingestion-date order, so process dates oldest first (a fresh output folder "
                f"to start again)")
        earlier = [_partition(index, decided) / PART for decided in _partition_days(index) if decided < day]
        rule, reason = _first_rule(CHECKS[source.name])
        parsed = ", ".join(f"{expression} AS {column}" for column, expression in PARSED[source.name].items())
        fingerprint = ("sha256(concat_ws(chr(1), "
                       + ", ".join(f"coalesce({_name(column)}, chr(0))" for column in source.columns) + "))")
        try:
            # 1. The date's bronze rows with the first of rules 1-4 they break, their typed silver columns, and the
            # fingerprint of the passing ones (only what the writes below read is kept).
            self.con.execute(f"""CREATE OR REPLACE TEMP TABLE classified AS
                WITH trimmed AS (SELECT *, {_trimmed(source)} FROM {_files([bronze])}),
                checked AS (SELECT *, {rule} AS _checked_rule FROM (SELECT *, {parsed} FROM trimmed))
                SELECT {', '.join(map(_name, source.columns))}, _raw_line, _source_file,
                       {', '.join(f"{expression} AS {_name('_silver_' + column)}"
                                  for column, expression in SILVER_SELECT[source.name].items())},
                       _checked_rule, CASE WHEN _checked_rule IS NOT NULL THEN {reason} END AS _checked_reason,
                       CASE WHEN _checked_rule IS NULL THEN {fingerprint} END AS _fingerprint
                FROM checked""")
            # 2. Per passing fingerprint: its copies on this date and the one that stays (the first by _source_file;
            # copies in one file are identical); then the earliest earlier date that kept it, if any.
            self.con.execute("""CREATE OR REPLACE TEMP TABLE copies AS
                SELECT _fingerprint, count(*) AS copies, arg_min(rowid, _source_file) AS _first_row
                FROM classified WHERE _checked_rule IS NULL GROUP BY _fingerprint""")
            self.con.execute(f"""CREATE OR REPLACE TEMP TABLE owners AS
                SELECT fingerprint, min(_ingestion_date) AS _kept_on FROM {_files(earlier)}
                WHERE fingerprint IN (SELECT _fingerprint FROM copies) GROUP BY fingerprint""" if earlier else
                "CREATE OR REPLACE TEMP TABLE owners (fingerprint VARCHAR, _kept_on DATE)")
            self.con.execute("""CREATE OR REPLACE TEMP TABLE kept AS
                SELECT _first_row AS _row FROM copies ANTI JOIN owners ON owners.fingerprint = copies._fingerprint""")
            # 3. Kept rows to silver, every other row to the quarantine, the date's fingerprints to the index.
            typed = ", ".join(f"{_name('_silver_' + column)} AS {column}" for column in SILVER_SELECT[source.name])
            kept = self._write(f"SELECT {typed} FROM classified SEMI JOIN kept ON kept._row = classified.rowid",
                               _partition(self.out / "silver" / source.name, day) / PART)
            record = " || ',' || ".join(f"csv_out({_name(column)})" for column in source.columns)
            quarantined = self._write(f"""
                SELECT {_literal(source.name)} AS source, coalesce(_checked_rule, 'duplicate') AS rule,
                       CASE WHEN _checked_rule IS NOT NULL THEN _checked_reason
                            WHEN _kept_on IS NOT NULL
                                THEN 'identical to a row kept from ingestion date ' || CAST(_kept_on AS VARCHAR)
                            ELSE 'identical to another row of the same ingestion date' END AS reason,
                       coalesce(_raw_line, {record}) AS record, DATE '{day.isoformat()}' AS _ingestion_date,
                       {_literal(RUN_ID)} AS _run_id
                FROM (SELECT * FROM classified ANTI JOIN kept ON kept._row = classified.rowid) AS rejected
                LEFT JOIN owners ON owners.fingerprint = rejected._fingerprint""",
                _partition(self.out / "silver" / "quarantine" / f"source={source.name}", day) / PART)
            # Every passing fingerprint of the date, duplicates of earlier dates included (as the Spark index holds).
            self._write(f"SELECT {_literal(source.name)} AS source, _fingerprint AS fingerprint, copies, "
                        f"DATE '{day.isoformat()}' AS _ingestion_date FROM copies", _partition(index, day) / PART)
        finally:
            for table in ("classified", "copies", "owners", "kept"):
                self.con.execute(f"DROP TABLE IF EXISTS {table}")
        if source.name == "orders":
            with self._silver_view(source.name):
                for table, sql in DIMENSION_SQL.items():
                    columns = ", ".join(DIMENSION_COLUMNS[table])
                    self._write(f"SELECT {columns} FROM ({sql})", self.out / "silver" / f"{table}.parquet")
        return {"rows": kept, "quarantined": quarantined, "seconds": time.monotonic() - started}

    # --- gold -------------------------------------------------------------------------------------

    def gold(self, source: str, day: date) -> dict:
        """Every mart of the source, rebuilt from all of its silver rows (`day` names the run only)."""
        started = time.monotonic()
        source = get_source(source)
        rows = {}
        with self._silver_view(source.name):
            for mart in PUBLISHED_TABLES[("gold", source.name)]:
                columns = ", ".join(MART_COLUMNS[mart])
                rows[mart] = self._write(f"SELECT {columns} FROM ({MART_SQL[mart]})",
                                         self.out / "gold" / f"{mart}.parquet")
        return {"marts": rows, "seconds": time.monotonic() - started}

    def gold_table(self, name: str):
        """The mart `name` as written, a pyarrow.Table."""
        import pyarrow.parquet

        path = self.out / "gold" / f"{name}.parquet"
        if name not in MART_COLUMNS or not path.is_file():
            raise KeyError(f"no gold table {name!r} under {self.out / 'gold'} (run gold for its source first)")
        return pyarrow.parquet.read_table(path)

    # --- plumbing ---------------------------------------------------------------------------------

    @contextmanager
    def _silver_view(self, source: str):
        """The view `silver` over every date's silver rows of `source` as written, for the duration."""
        base = self.out / "silver" / source
        files = [_partition(base, day) / PART for day in _partition_days(base)]
        if not files:
            raise RuntimeError(f"{base} holds no silver rows: run silver for {source} first")
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW silver AS SELECT * FROM {_files(files)}")
        try:
            yield
        finally:
            self.con.execute("DROP VIEW IF EXISTS silver")

    def _write(self, query: str, path: Path) -> int:
        """Write the query's rows to one Parquet file (replacing it); the number of rows."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        [(rows,)] = self.con.execute(f"COPY ({query}) TO {_literal(str(partial))} (FORMAT parquet)").fetchall()
        partial.replace(path)
        return rows


def _check_header(path: Path, source: Source, relative: str) -> None:
    """The file's first line against the source layout, as include.landing.inspect_file checks it."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            first = handle.readline()
    except (OSError, EOFError, zlib.error) as error:
        kind = "gzip-compressed CSV" if path.name.endswith(".gz") else "CSV"
        raise DeliveryError(f"{relative}: cannot be read as {kind}: {error}") from error
    if not first:
        raise HeaderMismatchError(f"{relative}: the file is empty; expected the {source.name} header {source.header!r}")
    header = first.removesuffix(b"\n").removesuffix(b"\r").removeprefix(BOM.encode("utf-8"))
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HeaderMismatchError(f"{relative}: the header line is not valid UTF-8 ({error})") from None
    check_header(text, source, relative)
