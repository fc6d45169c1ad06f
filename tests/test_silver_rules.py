"""The cleaning rules on hand-written bronze rows: first broken rule wins, reasons name field and value."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest
from pyspark.sql import functions as F

from include.sources import EVENTS, ORDERS
from spark_jobs.transforms.silver import (
    EVENTS_COLUMNS,
    EVENTS_RULES,
    ORDERS_COLUMNS,
    ORDERS_RULES,
    classify_events,
    classify_orders,
    silver_events,
    silver_orders,
)

pytestmark = pytest.mark.xdist_group("silver_rules")

DAY = date(2010, 12, 1)
GOOD_ORDER = ("536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "6", "2010-12-01 08:26:00", "2.55",
              "17850.0", "United Kingdom")
GOOD_EVENT = ("2019-10-01 00:00:04 UTC", "view", "1004237", "2053013555631882655", "electronics.smartphone", "apple",
              "1081.98", "535871217", "c6bd7419-2748-4c56-95b4-8cec9ff8b80d")


def bronze(spark, source, rows, malformed=None):
    schema = ", ".join(f"`{column}` STRING" for column in source.columns)
    schema += ", _is_malformed BOOLEAN, _malformed_reason STRING, _ingestion_date DATE"
    data = [(*row, malformed is not None and index == 0, malformed if index == 0 else None, DAY)
            for index, row in enumerate(rows)]
    return spark.createDataFrame(data, schema)


def order(**changes):
    values = dict(zip(ORDERS.columns, GOOD_ORDER))
    values.update(changes)
    return tuple(values[column] for column in ORDERS.columns)


def event(**changes):
    values = dict(zip(EVENTS.columns, GOOD_EVENT))
    values.update(changes)
    return tuple(values[column] for column in EVENTS.columns)


def order_rule(spark, row, malformed=None):
    [result] = classify_orders(bronze(spark, ORDERS, [row], malformed)).select("_rule", "_reason").collect()
    return result._rule, result._reason


ORDER_CASES = [
    (order(), None, None),
    (order(Quantity="6x"), "malformed", "Quantity '6x' is not an integer"),
    (order(Quantity="6.0"), "malformed", "Quantity '6.0' is not an integer"),
    (order(Quantity=""), "malformed", "Quantity is empty"),
    (order(UnitPrice="2,55"), "malformed", "UnitPrice '2,55' is not a decimal number"),
    (order(InvoiceDate="01/12/2010 08:26"), "malformed",
     "InvoiceDate '01/12/2010 08:26' is not a yyyy-MM-dd HH:mm:ss time"),
    (order(InvoiceDate="2010-13-01 08:26:00"), "malformed",
     "InvoiceDate '2010-13-01 08:26:00' is not a yyyy-MM-dd HH:mm:ss time"),
    (order(CustomerID="abc"), "malformed", "CustomerID 'abc' is not a whole number"),
    (order(CustomerID="17850.5"), "malformed", "CustomerID '17850.5' is not a whole number"),
    (order(InvoiceNo=""), "missing_key", "InvoiceNo is empty"),
    (order(StockCode="  "), "missing_key", "StockCode is empty"),
    (order(UnitPrice="0"), "non_positive_price", "UnitPrice '0' is not positive"),
    (order(InvoiceNo="A563185", StockCode="B", Quantity="1", UnitPrice="-11062.06", CustomerID=""),
     "non_positive_price", "UnitPrice '-11062.06' is not positive"),
    (order(Quantity="0"), "invalid_quantity", "Quantity is 0"),
    (order(Quantity="-6"), "invalid_quantity",
     "Quantity '-6' is negative on invoice '536365', which is not a cancellation (C...)"),
    (order(InvoiceNo="C536379", Quantity="6"), "invalid_quantity",
     "Quantity '6' is positive on cancellation invoice 'C536379'"),
    (order(InvoiceNo="C536379", Quantity="-1"), None, None),
    (order(UnitPrice="0.001"), None, None),
    (order(CustomerID=""), None, None),
    # Two rules broken: the first in the documented order wins.
    (order(Quantity="x", InvoiceNo=""), "malformed", "Quantity 'x' is not an integer"),
    (order(InvoiceNo="", UnitPrice="-1"), "missing_key", "InvoiceNo is empty"),
    (order(UnitPrice="0", Quantity="0"), "non_positive_price", "UnitPrice '0' is not positive"),
]
EVENT_CASES = [
    (event(), None, None),
    (event(event_time="2019-10-01T00:00:04Z"), "malformed",
     "event_time '2019-10-01T00:00:04Z' is not a yyyy-MM-dd HH:mm:ss UTC time"),
    (event(product_id="10042x7"), "malformed", "product_id '10042x7' is not a 64-bit integer"),
    (event(category_id="99999999999999999999"), "malformed",
     "category_id '99999999999999999999' is not a 64-bit integer"),
    (event(price="9x54"), "malformed", "price '9x54' is not a decimal number"),
    (event(event_time=""), "missing_key", "event_time is empty"),
    (event(user_session=""), "missing_key", "user_session is empty"),
    (event(event_type="wishlist"), "unknown_event_type",
     "event_type 'wishlist' is not one of view, cart, remove_from_cart, purchase"),
    (event(price="-5.00"), "negative_price", "price '-5.00' is negative"),
    (event(price="0"), None, None),
    (event(brand="", category_code=""), None, None),
    (event(user_id="", event_type="click"), "missing_key", "user_id is empty"),
    (event(event_type="VIEW", price="-1"), "unknown_event_type",
     "event_type 'VIEW' is not one of view, cart, remove_from_cart, purchase"),
]


def classified(spark, source, classify, cases):
    """(rule, reason) per case, from one Spark query over all of them."""
    frame = bronze(spark, source, [row for row, _, _ in cases])
    frame = frame.withColumn("_case", F.monotonically_increasing_id())
    ordered = classify(frame).orderBy("_case").select("_rule", "_reason").collect()
    return [(row._rule, row._reason) for row in ordered]


def test_cases_use_only_the_documented_rules():
    assert {rule for _, rule, _ in ORDER_CASES} - {None} <= set(ORDERS_RULES)
    assert {rule for _, rule, _ in EVENT_CASES} - {None} <= set(EVENTS_RULES)


@pytest.fixture(scope="module")
def order_results(spark_session):
    return classified(spark_session, ORDERS, classify_orders, ORDER_CASES)


@pytest.fixture(scope="module")
def event_results(spark_session):
    return classified(spark_session, EVENTS, classify_events, EVENT_CASES)


@pytest.mark.parametrize("case", range(len(ORDER_CASES)), ids=lambda i: str(ORDER_CASES[i][0]))
def test_orders_rules(order_results, case):
    _, rule, reason = ORDER_CASES[case]
    assert order_results[case] == (rule, reason)


def test_a_line_malformed_in_bronze_keeps_its_reason(spark):
    assert order_rule(spark, order(Quantity="", UnitPrice="0"), "wrong field count: expected 8, found 7") == (
        "malformed", "the line is malformed: wrong field count: expected 8, found 7")


def test_silver_orders_types_and_derived_columns(spark):
    rows = [order(Description="HAND WARMER, UNION JACK", UnitPrice="0.001", Quantity="12"),
            order(InvoiceNo="C536379", Quantity="-2", CustomerID="", InvoiceDate="2010-12-05 23:59:59")]
    frame = silver_orders(classify_orders(bronze(spark, ORDERS, rows)))
    assert tuple(frame.columns) == ORDERS_COLUMNS
    got = frame.collect()
    assert [row.asDict() for row in got] == [
        {"invoice_no": "536365", "stock_code": "85123A", "description": "HAND WARMER, UNION JACK", "quantity": 12,
         "unit_price": Decimal("0.001"), "line_total": Decimal("0.012"), "invoice_ts": datetime(2010, 12, 1, 8, 26),
         "invoice_date": date(2010, 12, 1), "customer_id": 17850, "country": "United Kingdom",
         "is_cancellation": False, "hour_of_day": 8, "day_of_week": 3, "month": 12, "year": 2010,
         "_ingestion_date": DAY},
        {"invoice_no": "C536379", "stock_code": "85123A", "description": "WHITE HANGING HEART T-LIGHT HOLDER",
         "quantity": -2, "unit_price": Decimal("2.550"), "line_total": Decimal("-5.100"),
         "invoice_ts": datetime(2010, 12, 5, 23, 59, 59), "invoice_date": date(2010, 12, 5), "customer_id": None,
         "country": "United Kingdom", "is_cancellation": True, "hour_of_day": 23, "day_of_week": 7, "month": 12,
         "year": 2010, "_ingestion_date": DAY},
    ]


@pytest.mark.parametrize("case", range(len(EVENT_CASES)), ids=lambda i: str(EVENT_CASES[i][0]))
def test_events_rules(event_results, case):
    _, rule, reason = EVENT_CASES[case]
    assert event_results[case] == (rule, reason)


def test_silver_events_types(spark):
    frame = silver_events(classify_events(bronze(spark, EVENTS, [event(brand="")])))
    assert tuple(frame.columns) == EVENTS_COLUMNS
    [got] = frame.collect()
    assert got.asDict() == {
        "event_ts": datetime(2019, 10, 1, 0, 0, 4), "event_date": date(2019, 10, 1), "event_type": "view",
        "product_id": 1004237, "category_id": 2053013555631882655, "category_code": "electronics.smartphone",
        "brand": None, "price": Decimal("1081.980"), "user_id": 535871217,
        "user_session": "c6bd7419-2748-4c56-95b4-8cec9ff8b80d", "hour_of_day": 0, "day_of_week": 2,
        "_ingestion_date": DAY,
    }
