"""Each gold mart on hand-written silver rows, with the exact rows it must give."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest

from include.config import PROJECT_ROOT
from spark_jobs.transforms.gold import MARTS, PRODUCT_TIERS, SEGMENTS, SLOW_TIER, VALUE_TIERS

ORDERS_SCHEMA = ("invoice_no string, stock_code string, quantity int, unit_price decimal(12,3), "
                 "line_total decimal(18,3), invoice_date date, customer_id bigint, country string, "
                 "is_cancellation boolean")
EVENTS_SCHEMA = ("event_ts timestamp, event_date date, event_type string, product_id bigint, category_id bigint, "
                 "category_code string, brand string, price decimal(12,3), user_id bigint, user_session string, "
                 "hour_of_day int")
MART = {mart.table: mart for mart in MARTS}
D = Decimal


def line(invoice, stock, quantity, price, day, customer=None, country="United Kingdom"):
    """A silver order line invoiced on 2010-12-<day> (day 0 is 2010-11-30)."""
    price = D(price)
    return (invoice, stock, quantity, price, quantity * price, date(2010, 12, 1) + timedelta(days=day - 1),
            customer, country, invoice.startswith("C"))


def event(at, event_type, product=1, user=1, session="s1", price="10.000", brand=None, category=None, code=None):
    ts = datetime.fromisoformat(at)
    return (ts, ts.date(), event_type, product, category, code, brand, D(price) if price else None, user, session,
            ts.hour)


def build(spark, table, schema, rows):
    frame = spark.createDataFrame(rows, schema)
    built = MART[table].build(frame)
    assert tuple(built.columns) == MART[table].columns
    return sorted(tuple(row) for row in built.collect())


def test_daily_sales_counts_purchases_per_date_and_country_and_rounds_half_up(spark):
    rows = [
        line("1", "A", 3, "0.335", 1, 17850),   # 1.005 -> revenue 1.01 (half up, not to even)
        line("1", "B", 1, "2.000", 1, 17850),
        line("2", "A", 2, "0.500", 1),          # a guest: counted in orders, not in customers
        line("C3", "A", -1, "0.335", 1, 17850),  # a cancellation: not a sale
        line("4", "A", 1, "1.000", 1, 12345, "France"),
        line("5", "A", 1, "1.000", 2, 17850),
    ]
    assert build(spark, "daily_sales", ORDERS_SCHEMA, rows) == [
        (date(2010, 12, 1), "France", 1, 1, 1, D("1.00"), 1, D("1.00")),
        # 1.005 + 2.000 + 1.000 = 4.005 -> 4.01 over 2 invoices -> 2.005 -> 2.01
        (date(2010, 12, 1), "United Kingdom", 2, 3, 6, D("4.01"), 1, D("2.01")),
        (date(2010, 12, 2), "United Kingdom", 1, 1, 1, D("1.00"), 1, D("1.00")),
    ]


def _rfm_rows():
    """Five customers whose recency, frequency and money spent rank 1-5 in different orders."""
    rows = []
    spend = {1: ("100", 5, 2), 2: ("5", 1, 4), 3: ("30", 3, 6), 4: ("15", 2, 8), 5: ("60", 4, 10)}
    for customer, (total, invoices, last_day) in spend.items():
        for number in range(invoices):
            day = last_day - number
            rows.append(line(f"{customer}{number}", "A", 1, str(D(total) / invoices), day, customer))
    rows.append(line("C9", "A", -1, "5", 10, 2))   # a return does not make customer 2 recent
    rows.append(line("99", "A", 1, "1", 11))       # a guest line on 12-11: the latest invoice date in silver
    rows.append(line("C98", "A", -1, "1", 3, 6))   # customer 6 only returned goods: not in the mart
    return rows


def test_customer_rfm_scores_segments_and_tiers(spark):
    as_of = date(2010, 12, 11)
    got = build(spark, "customer_rfm", ORDERS_SCHEMA, _rfm_rows())
    assert got == [
        (1, date(2010, 11, 28), date(2010, 12, 2), 5, D("100.00"), 9, 1, 5, 5, "Cannot Lose Them", "Premium", as_of),
        (2, date(2010, 12, 4), date(2010, 12, 4), 1, D("5.00"), 7, 2, 1, 1, "Hibernating", "Basic", as_of),
        (3, date(2010, 12, 4), date(2010, 12, 6), 3, D("30.00"), 5, 3, 3, 3, "Need Attention", "Standard", as_of),
        (4, date(2010, 12, 7), date(2010, 12, 8), 2, D("15.00"), 3, 4, 2, 2, "Potential Loyalists", "Standard", as_of),
        (5, date(2010, 12, 7), date(2010, 12, 10), 4, D("60.00"), 1, 5, 4, 4, "Champions", "VIP", as_of),
    ]


def test_rfm_ties_share_a_score(spark):
    # Three customers with one invoice each and one with two: the three tie at the lowest frequency score.
    rows = [line(f"{c}", "A", 1, "1", 1, c) for c in (1, 2, 3)] + [line("40", "A", 1, "1", 1, 4),
                                                                   line("41", "A", 1, "1", 1, 4)]
    got = {row[0]: row[7] for row in build(spark, "customer_rfm", ORDERS_SCHEMA, rows)}
    assert got == {1: 1, 2: 1, 3: 1, 4: 5}


def test_every_pair_of_recency_and_frequency_scores_has_one_segment():
    names = {name for name, _, _ in SEGMENTS}
    assert len(names) == 10
    used = set()
    for recency in range(1, 6):
        for frequency in range(1, 6):
            matching = [name for name, r, f in SEGMENTS if recency in r and frequency in f]
            assert len(matching) == 1, f"R{recency} F{frequency}: {matching}"
            used.add(matching[0])
    assert used == names
    assert [lowest for _, lowest in VALUE_TIERS] == [13, 10, 7, 3]


def _scores(scores: tuple[int, ...]) -> str:
    return str(scores[0]) if len(scores) == 1 else f"{scores[0]}-{scores[-1]}"


def test_the_readme_states_the_segment_and_tier_rules_the_code_applies():
    readme = (PROJECT_ROOT / "docs" / "layers.md").read_text()
    for name, recency, frequency in SEGMENTS:
        row = rf"\|\s*{name}\s*\|\s*{_scores(recency)}\s*\|\s*{_scores(frequency)}\s*\|"
        assert re.search(row, readme), f"docs/layers.md has no segment row for {name}"
    for name, lowest in VALUE_TIERS:
        assert re.search(rf"\|\s*{name}\s*\|\s*{lowest}\b", readme), f"docs/layers.md has no value tier row for {name}"
    for name, limit in PRODUCT_TIERS:
        row = rf"\|\s*{name}\s*\|\s*under {int(D(limit) * 100)}\s*%"
        assert re.search(row, readme), f"docs/layers.md has no product tier row for {name}"
    assert re.search(rf"\|\s*{SLOW_TIER}\s*\|", readme)


def test_product_performance_shares_and_tiers(spark):
    revenue = {"P1": "100", "P2": "300", "P3": "150", "P4": "40", "P5": "9", "P6": "0.5", "P7": "0.5"}
    rows = [line(f"{n}", stock, 1, price, 1) for n, (stock, price) in enumerate(revenue.items())]
    rows += [line("90", "P1", 4, "100", 2), line("C91", "P1", -2, "250", 2)]  # a return adds nothing
    assert build(spark, "product_performance", ORDERS_SCHEMA, rows) == [
        ("P1", 5, D("500.00"), 2, D("0.500000"), "Star"),     # nothing sold more
        ("P2", 1, D("300.00"), 1, D("0.300000"), "Strong"),   # 50% sold more
        ("P3", 1, D("150.00"), 1, D("0.150000"), "Steady"),   # 80%
        ("P4", 1, D("40.00"), 1, D("0.040000"), "Weak"),      # 95%
        ("P5", 1, D("9.00"), 1, D("0.009000"), SLOW_TIER),    # 99%
        ("P6", 1, D("0.50"), 1, D("0.000500"), SLOW_TIER),    # ties: what sold more excludes each other
        ("P7", 1, D("0.50"), 1, D("0.000500"), SLOW_TIER),
    ]


EVENTS = [
    event("2019-10-01 09:00:00", "view", product=1, user=1, session="a", brand="acme", category=7, code="kids.toys"),
    event("2019-10-01 09:01:00", "view", product=1, user=1, session="a"),
    event("2019-10-01 09:02:00", "cart", product=1, user=1, session="a", brand="zeta"),
    event("2019-10-01 09:03:00", "purchase", product=1, user=1, session="a", price="10.005"),
    event("2019-10-01 23:59:59", "view", product=2, user=2, session="b", price="3.000"),
    event("2019-10-01 23:00:00", "remove_from_cart", product=2, user=2, session="b", price="3.000"),
    event("2019-10-01 23:30:00", "view", product=2, user=2, session="b", price="3.000"),
    event("2019-10-02 00:00:01", "purchase", product=2, user=2, session="b", price="3.000"),
    event("2019-10-03 10:00:00", "cart", product=1, user=1, session="c"),
]


def test_funnel_daily_counts_each_step_and_rates(spark):
    assert build(spark, "funnel_daily", EVENTS_SCHEMA, EVENTS) == [
        (date(2019, 10, 1), 4, 1, 1, 1, 2, D("0.2500"), D("1.0000"), D("0.2500")),
        (date(2019, 10, 2), 0, 0, 0, 1, 1, None, None, None),
        (date(2019, 10, 3), 0, 1, 0, 0, 1, None, D("0.0000"), None),
    ]


def test_product_conversion_keeps_the_latest_known_brand_and_category(spark):
    assert build(spark, "product_conversion", EVENTS_SCHEMA, EVENTS) == [
        # "zeta" at 09:02 replaces "acme"; a later event without a brand does not erase it.
        (1, "zeta", 7, "kids.toys", 2, 2, 1, D("10.01"), D("0.5000")),
        (2, None, None, None, 2, 0, 1, D("3.00"), D("0.5000")),
    ]


def test_user_engagement_as_of_the_latest_event_date(spark):
    at = datetime.fromisoformat
    assert build(spark, "user_engagement", EVENTS_SCHEMA, EVENTS) == [
        (1, 2, 5, 1, D("10.01"), at("2019-10-01 09:00:00"), at("2019-10-03 10:00:00"), 0, date(2019, 10, 3)),
        (2, 1, 4, 1, D("3.00"), at("2019-10-01 23:00:00"), at("2019-10-02 00:00:01"), 1, date(2019, 10, 3)),
    ]


def test_entity_marts_over_daily_rollups_round_once_and_count_a_session_once(spark):
    """product_conversion and user_engagement aggregate per-date partials: those stay exact (no rounding, sessions
    kept by id), so the result is the aggregation of the events themselves."""
    at = datetime.fromisoformat
    rows = [
        event("2019-10-01 23:59:00", "purchase", product=5, user=9, session="x", price="0.005", brand="old"),
        event("2019-10-02 00:01:00", "purchase", product=5, user=9, session="x", price="0.005"),
        event("2019-10-03 08:00:00", "view", product=5, user=9, session="y", brand="new"),
        event("2019-10-03 08:00:00", "view", product=5, user=8, session="z", brand="mid"),  # tie: greater wins
    ]
    # 0.005 + 0.005 = 0.010 -> 0.01 (rounding each day's 0.005 first would give 0.02)
    assert build(spark, "product_conversion", EVENTS_SCHEMA, rows) == [
        (5, "new", None, None, 2, 0, 2, D("0.01"), D("1.0000"))]
    assert build(spark, "user_engagement", EVENTS_SCHEMA, rows) == [
        (8, 1, 1, 0, D("0.00"), at("2019-10-03 08:00:00"), at("2019-10-03 08:00:00"), 0, date(2019, 10, 3)),
        (9, 2, 3, 2, D("0.01"), at("2019-10-01 23:59:00"), at("2019-10-03 08:00:00"), 0, date(2019, 10, 3)),
    ]


def test_hourly_sales_per_event_date_and_hour(spark):
    rows = EVENTS + [event("2019-10-01 09:59:59", "purchase", product=3, price="0.500"),
                     event("2019-10-01 10:00:00", "purchase", product=3, price=None)]
    assert build(spark, "hourly_sales", EVENTS_SCHEMA, rows) == [
        (date(2019, 10, 1), 9, 2, D("10.51")),  # 10.005 + 0.500 = 10.505 -> 10.51
        (date(2019, 10, 1), 10, 1, D("0.00")),  # a purchase without a price counts, adds nothing
        (date(2019, 10, 2), 0, 1, D("3.00")),
    ]


@pytest.mark.parametrize("table", [mart.table for mart in MARTS])
def test_every_mart_builds_from_empty_silver(spark, table):
    schema = ORDERS_SCHEMA if MART[table].source == "orders" else EVENTS_SCHEMA
    assert build(spark, table, schema, []) == []
