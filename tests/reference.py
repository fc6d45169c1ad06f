"""The orders cleaning rules and dimensions written again in plain Python, to check the Spark jobs against.

Independent of the jobs on purpose: it reads the delivered files with the csv module and applies
docs/architecture.md's rules line by line, in ingestion date order (which is how a reader of the rules
would apply them, and what any processing order must come out as).
"""

from __future__ import annotations

import csv
import gzip
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
INTEGER = re.compile(r"^[+-]?[0-9]+$")
DECIMAL = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$")
WHOLE_NUMBER = re.compile(r"^[+-]?[0-9]+(\.0*)?$")
THOUSANDTHS = Decimal("0.001")


@dataclass
class OrdersReference:
    silver: list[tuple] = field(default_factory=list)  # (ingestion date, invoice_no, ..., is_cancellation)
    rules: Counter = field(default_factory=Counter)  # (ingestion date, rule) -> rows

    def silver_counts(self) -> dict[date, int]:
        return dict(Counter(row[0] for row in self.silver))


def read_lines(path: Path) -> list[str]:
    """The data lines of a delivered file, split where Spark's text reader splits them."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        text = handle.read()
    lines = re.split(r"\r\n|\r|\n", text)
    return lines[1:-1] if lines[-1] == "" else lines[1:]


def fields_of(line: str) -> list[str] | None:
    """The CSV fields of one line, or None when a quote never closes."""
    if line.count('"') % 2:
        return None
    [fields] = csv.reader([line]) if line else [[]]
    return fields


def rule_of(fields: list[str] | None) -> str | None:
    if fields is None or len(fields) != len(COLUMNS):
        return "malformed"
    row = dict(zip(COLUMNS, (value.strip() for value in fields)))
    if not INTEGER.match(row["Quantity"]) or not DECIMAL.match(row["UnitPrice"]):
        return "malformed"
    try:
        datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return "malformed"
    if row["CustomerID"] and not WHOLE_NUMBER.match(row["CustomerID"]):
        return "malformed"
    if not row["InvoiceNo"] or not row["StockCode"]:
        return "missing_key"
    if Decimal(row["UnitPrice"]) <= 0:
        return "non_positive_price"
    quantity, cancellation = int(row["Quantity"]), row["InvoiceNo"].startswith("C")
    if quantity == 0 or (quantity < 0 and not cancellation) or (quantity > 0 and cancellation):
        return "invalid_quantity"
    return None


def orders_reference(files_by_date: dict[date, list[Path]]) -> OrdersReference:
    reference, kept = OrdersReference(), set()
    for day in sorted(files_by_date):
        for path in sorted(files_by_date[day]):
            for fields in map(fields_of, read_lines(path)):
                rule = rule_of(fields)
                if rule is None and tuple(fields) in kept:
                    rule = "duplicate"
                if rule is not None:
                    reference.rules[(day, rule)] += 1
                    continue
                kept.add(tuple(fields))
                row = dict(zip(COLUMNS, fields))
                quantity, price = int(row["Quantity"].strip()), Decimal(row["UnitPrice"].strip()).quantize(THOUSANDTHS)
                customer = row["CustomerID"].strip()
                reference.silver.append((
                    day, row["InvoiceNo"].strip(), row["StockCode"].strip(), row["Description"], quantity, price,
                    quantity * price, datetime.strptime(row["InvoiceDate"].strip(), "%Y-%m-%d %H:%M:%S"),
                    int(Decimal(customer)) if customer else None, row["Country"],
                    row["InvoiceNo"].strip().startswith("C"),
                ))
    return reference


def _versions(observations: dict) -> list[tuple]:
    """SCD2 rows (key, value, valid_from, valid_to, is_current, version) from {key: {ts: (invoice, value)}}."""
    rows = []
    for key, seen in observations.items():
        starts, last = [], None
        for ts in sorted(seen):
            value = seen[ts][1] if seen[ts][1] not in (None, "") else last
            if not starts or value != last:
                starts.append((ts, value))
            last = value
        for number, (ts, value) in enumerate(starts, 1):
            valid_to = starts[number][0] if number < len(starts) else None
            rows.append((key, value, ts, valid_to, valid_to is None, number))
    return rows


def _value(text: str | None) -> str | None:
    """An empty attribute is no value."""
    return text if text is not None and text.strip() else None


def dimensions_reference(silver: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """(dim_customer rows, dim_product rows) in table column order, from `OrdersReference.silver`."""
    customers, products = defaultdict(dict), defaultdict(dict)
    prices = defaultdict(Counter)  # (stock code, invoice day) -> Counter of unit prices
    for _, invoice, code, description, _, price, _, ts, customer, country, _ in silver:
        if customer is not None:
            customers[customer][ts] = max(customers[customer].get(ts, ("", None)), (invoice, _value(country)),
                                          key=lambda seen: (seen[1] is not None, seen))
        products[code][ts] = max(products[code].get(ts, ("", None)), (invoice, _value(description)),
                                 key=lambda seen: (seen[1] is not None, seen))
        prices[(code, ts.date())][price] += 1
    latest = {}
    for code, day in prices:
        latest[code] = max(latest.get(code, day), day)
    list_price = {code: max(prices[(code, day)].items(), key=lambda item: (item[1], item[0]))[0]
                  for code, day in latest.items()}
    dim_customer = _versions(customers)
    dim_product = [(code, description, list_price[code], *rest) for code, description, *rest in _versions(products)]
    return dim_customer, dim_product


def files_by_date(landing_orders: Path) -> dict[date, list[Path]]:
    return {date.fromisoformat(folder.name): sorted(folder.glob("*.csv*"))
            for folder in sorted(landing_orders.iterdir()) if folder.is_dir()}


EVENT_COLUMNS = ("event_time", "event_type", "product_id", "category_id", "category_code", "brand", "price", "user_id",
                 "user_session")
EVENT_TYPES = ("view", "cart", "remove_from_cart", "purchase")
LONG = range(-(2**63), 2**63)


def event_rule_of(line: str) -> str | None:
    """The first events rule one delivered line breaks, or None (the duplicate rule aside)."""
    fields = fields_of(line)
    if fields is None or len(fields) != len(EVENT_COLUMNS):
        return "malformed"
    row = dict(zip(EVENT_COLUMNS, (value.strip() for value in fields)))
    if row["event_time"]:
        if not row["event_time"].endswith(" UTC"):
            return "malformed"
        try:
            datetime.strptime(row["event_time"], "%Y-%m-%d %H:%M:%S UTC")
        except ValueError:
            return "malformed"
    for column in ("product_id", "category_id", "user_id"):
        if row[column] and (not INTEGER.match(row[column]) or int(row[column]) not in LONG):
            return "malformed"
    if row["price"] and not DECIMAL.match(row["price"]):
        return "malformed"
    if any(not row[column] for column in ("event_time", "event_type", "product_id", "user_id", "user_session")):
        return "missing_key"
    if row["event_type"] not in EVENT_TYPES:
        return "unknown_event_type"
    if row["price"] and Decimal(row["price"]) < 0:
        return "negative_price"
    return None


def events_rules(files_by_date: dict[date, list[Path]]) -> tuple[Counter, int]:
    """(rows per (ingestion date, rule), silver rows) of event deliveries processed in date order."""
    rules, kept, silver = Counter(), set(), 0
    for day in sorted(files_by_date):
        for path in sorted(files_by_date[day]):
            for line in read_lines(path):
                rule = event_rule_of(line)
                if rule is None:
                    fields = tuple(fields_of(line))
                    rule = "duplicate" if fields in kept else None
                    kept.add(fields)
                if rule is None:
                    silver += 1
                else:
                    rules[(day, rule)] += 1
    return rules, silver


CENT, RATE_PLACES, SHARE_PLACES = Decimal("0.01"), Decimal("0.0001"), Decimal("0.000001")


def _round(value: Decimal, places: Decimal) -> Decimal:
    return value.quantize(places, rounding=ROUND_HALF_UP)


def _rate(numerator: int, denominator: int) -> Decimal | None:
    return _round(Decimal(numerator) / Decimal(denominator), RATE_PLACES) if denominator else None


def daily_sales_reference(silver: list[tuple]) -> list[tuple]:
    """`gold/daily_sales` rows from `OrdersReference.silver`: docs/architecture.md's definition, line by line."""
    groups = defaultdict(lambda: (set(), [0, 0, Decimal(0)], set()))
    for _, invoice, _, _, quantity, _, line_total, ts, customer, country, cancellation in silver:
        if cancellation:
            continue
        invoices, sums, customers = groups[(ts.date(), country)]
        invoices.add(invoice)
        sums[0], sums[1], sums[2] = sums[0] + 1, sums[1] + quantity, sums[2] + line_total
        if customer is not None:
            customers.add(customer)
    rows = []
    for (day, country), (invoices, (lines, units, total), customers) in groups.items():
        revenue = _round(total, CENT)
        rows.append((day, country, len(invoices), lines, units, revenue, len(customers),
                     _round(revenue / len(invoices), CENT)))
    return sorted(rows, key=repr)


def events_marts_reference(events: list) -> dict[str, list[tuple]]:
    """The four events marts from silver event rows (anything with the silver columns as attributes)."""
    funnel = defaultdict(lambda: (Counter(), set()))
    products = defaultdict(lambda: (Counter(), [Decimal(0)], {}))
    users = defaultdict(lambda: (Counter(), set(), [Decimal(0)], []))
    hourly = defaultdict(lambda: [0, Decimal(0)])
    for event in events:
        price = event.price or Decimal(0)
        purchase = event.event_type == "purchase"
        counts, sessions = funnel[event.event_date]
        counts[event.event_type] += 1
        sessions.add(event.user_session)
        counts_p, revenue_p, latest = products[event.product_id]
        counts_p[event.event_type] += 1
        revenue_p[0] += price if purchase else 0
        for column in ("brand", "category_id", "category_code"):
            value = getattr(event, column)
            if value is not None:
                latest[column] = max(latest.get(column, (event.event_ts, value)), (event.event_ts, value))
        counts_u, sessions_u, revenue_u, seen = users[event.user_id]
        counts_u[event.event_type] += 1
        sessions_u.add(event.user_session)
        revenue_u[0] += price if purchase else 0
        seen.append(event.event_ts)
        if purchase:
            hourly[(event.event_date, event.hour_of_day)][0] += 1
            hourly[(event.event_date, event.hour_of_day)][1] += price
    as_of = max((event.event_date for event in events), default=None)
    marts = {
        "funnel_daily": [
            (day, c["view"], c["cart"], c["remove_from_cart"], c["purchase"], len(sessions),
             _rate(c["cart"], c["view"]), _rate(c["purchase"], c["cart"]), _rate(c["purchase"], c["view"]))
            for day, (c, sessions) in funnel.items()],
        "product_conversion": [
            (product, *(latest[column][1] if column in latest else None
                        for column in ("brand", "category_id", "category_code")),
             c["view"], c["cart"], c["purchase"], _round(revenue[0], CENT), _rate(c["purchase"], c["view"]))
            for product, (c, revenue, latest) in products.items()],
        "user_engagement": [
            (user, len(sessions), sum(c.values()), c["purchase"], _round(revenue[0], CENT), min(seen), max(seen),
             (as_of - max(seen).date()).days, as_of)
            for user, (c, sessions, revenue, seen) in users.items()],
        "hourly_sales": [(day, hour, purchases, _round(revenue, CENT))
                         for (day, hour), (purchases, revenue) in hourly.items()],
    }
    return {table: sorted(rows, key=repr) for table, rows in marts.items()}
