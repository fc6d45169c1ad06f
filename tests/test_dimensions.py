"""Type 2 history of customers and products, derived from hand-written silver order lines."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from spark_jobs.transforms.dimensions import DIM_CUSTOMER, DIM_PRODUCT, customer_versions, product_versions

SCHEMA = ("invoice_no STRING, stock_code STRING, description STRING, unit_price DECIMAL(12,3), "
          "invoice_ts TIMESTAMP, invoice_date DATE, customer_id BIGINT, country STRING")


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def lines(spark, rows):
    """Silver order lines from (invoice_no, stock_code, description, price, 'YYYY-MM-DD HH:MM', customer, country)."""
    data = [(invoice, code, description, Decimal(price), ts(at), ts(at).date(), customer, country)
            for invoice, code, description, price, at, customer, country in rows]
    return spark.createDataFrame(data, SCHEMA)


def collected(frame, columns):
    assert tuple(frame.columns) == columns
    return sorted((tuple(row) for row in frame.collect()), key=lambda row: (row[0], row[-1]))  # key, version


def customers(spark, rows):
    return collected(customer_versions(lines(spark, rows)), DIM_CUSTOMER.columns)


def products(spark, rows):
    return collected(product_versions(lines(spark, rows)), DIM_PRODUCT.columns)


def test_a_customer_who_moves_and_moves_back_has_three_versions(spark):
    rows = [
        ("1", "A", "a", "1", "2010-12-01 08:00", 1, "United Kingdom"),
        ("2", "A", "a", "1", "2010-12-01 09:00", 1, "United Kingdom"),
        ("3", "A", "a", "1", "2010-12-02 10:00", 1, "France"),
        ("4", "A", "a", "1", "2010-12-05 10:00", 1, "United Kingdom"),
        ("5", "A", "a", "1", "2010-12-03 10:00", 2, "EIRE"),
        ("6", "A", "a", "1", "2010-12-04 10:00", None, "Spain"),  # a guest is not a customer
    ]
    assert customers(spark, rows) == [
        (1, "United Kingdom", ts("2010-12-01 08:00"), ts("2010-12-02 10:00"), False, 1),
        (1, "France", ts("2010-12-02 10:00"), ts("2010-12-05 10:00"), False, 2),
        (1, "United Kingdom", ts("2010-12-05 10:00"), None, True, 3),
        (2, "EIRE", ts("2010-12-03 10:00"), None, True, 1),
    ]


def test_the_history_does_not_depend_on_the_order_lines_arrive_in(spark):
    rows = [
        ("4", "A", "a", "1", "2010-12-05 10:00", 1, "United Kingdom"),
        ("3", "A", "a", "1", "2010-12-02 10:00", 1, "France"),
        ("1", "A", "a", "1", "2010-12-01 08:00", 1, "United Kingdom"),
    ]
    assert customers(spark, rows) == customers(spark, list(reversed(rows))) == customers(spark, sorted(rows))
    assert [row[1] for row in customers(spark, rows)] == [
        "United Kingdom", "France", "United Kingdom"]


def test_lines_of_one_invoice_time_that_disagree_take_the_highest_invoice_number(spark):
    rows = [
        ("536401", "A", "a", "1", "2010-12-01 08:00", 1, "Austria"),
        ("536400", "A", "a", "1", "2010-12-01 08:00", 1, "Cyprus"),
        ("536402", "A", "a", "1", "2010-12-01 09:00", 1, "Austria"),
    ]
    assert customers(spark, rows) == [(1, "Austria", ts("2010-12-01 08:00"), None, True, 1)]


def test_products_keep_description_history_and_one_list_price_on_every_version(spark):
    rows = [
        ("1", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "2.55", "2010-12-01 08:00", 1, "UK"),
        ("2", "85123A", "CREAM HANGING HEART T-LIGHT HOLDER", "2.95", "2010-12-03 08:00", 1, "UK"),
        # The latest day: 2.55 twice, 2.95 once, so the list price is 2.55.
        ("3", "85123A", "CREAM HANGING HEART T-LIGHT HOLDER", "2.55", "2010-12-04 08:00", 1, "UK"),
        ("4", "85123A", "CREAM HANGING HEART T-LIGHT HOLDER", "2.95", "2010-12-04 09:00", 1, "UK"),
        ("5", "85123A", "CREAM HANGING HEART T-LIGHT HOLDER", "2.55", "2010-12-04 10:00", 1, "UK"),
        # A tie on the latest day goes to the higher price.
        ("6", "22633", "HAND WARMER UNION JACK", "1.85", "2010-12-01 08:00", None, "UK"),
        ("7", "22633", "HAND WARMER UNION JACK", "2.10", "2010-12-01 09:00", None, "UK"),
    ]
    assert products(spark, rows) == [
        ("22633", "HAND WARMER UNION JACK", Decimal("2.100"), ts("2010-12-01 08:00"), None, True, 1),
        ("85123A", "WHITE HANGING HEART T-LIGHT HOLDER", Decimal("2.550"), ts("2010-12-01 08:00"),
         ts("2010-12-03 08:00"), False, 1),
        ("85123A", "CREAM HANGING HEART T-LIGHT HOLDER", Decimal("2.550"), ts("2010-12-03 08:00"), None, True, 2),
    ]


@pytest.mark.parametrize("descriptions, expected", [
    (["a", None, "a"], [("a", 1)]),              # an empty description is not a change
    (["a", "", "b"], [("a", 1), ("b", 2)]),
    ([None, "a", None], [(None, 1), ("a", 2)]),  # unknown at first, then known
    ([None, None], [(None, 1)]),
])
def test_empty_descriptions_carry_the_value_before_them(spark, descriptions, expected):
    rows = [(str(index), "P", description, "1", f"2010-12-0{index + 1} 08:00", None, "UK")
            for index, description in enumerate(descriptions)]
    assert [(row[1], row[6]) for row in products(spark, rows)] == expected
