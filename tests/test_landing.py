"""Reading a delivery on the driver: counts, checksums and the header check."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from include.landing import DeliveryError, HeaderMismatchError, inspect_file, list_delivery
from include.sources import EVENTS, ORDERS
from tests.helpers import ORDERS_HEADER, deliver

GOOD = (f"{ORDERS_HEADER}\n"
        "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n")


def test_counts_data_lines_and_checksums_the_file_as_delivered(lakehouse):
    path = deliver(lakehouse, "orders", "2010-12-01", "a.csv.gz", GOOD * 1, compress=True)
    item = inspect_file(path, ORDERS, lakehouse.landing)
    assert item.data_lines == 1
    assert item.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert item.size_bytes == path.stat().st_size
    assert item.relative_path == "orders/2010-12-01/a.csv.gz"
    assert item.repeated_headers == 0


@pytest.mark.parametrize("content, lines", [
    (f"{ORDERS_HEADER}\n", 0),
    (f"{ORDERS_HEADER}", 0),
    (f"{ORDERS_HEADER}\na\nb", 2),  # no line break after the last line
    (f"{ORDERS_HEADER}\r\na\r\nb\r\n", 2),
    (f"{ORDERS_HEADER}\na\n\nb\n", 3),  # an empty line is a data line too
])
def test_line_counts_follow_sparks_line_splitting(lakehouse, content, lines):
    path = deliver(lakehouse, "orders", "2010-12-01", "a.csv", content)
    assert inspect_file(path, ORDERS, lakehouse.landing).data_lines == lines


def test_a_bom_before_the_header_is_accepted(lakehouse):
    path = deliver(lakehouse, "orders", "2010-12-01", "a.csv", "\ufeff" + GOOD)
    assert inspect_file(path, ORDERS, lakehouse.landing).header_line == ORDERS_HEADER


def test_repeated_header_lines_are_counted(lakehouse):
    path = deliver(lakehouse, "orders", "2010-12-01", "a.csv", GOOD + ORDERS_HEADER + "\n" + GOOD.split("\n", 1)[1])
    item = inspect_file(path, ORDERS, lakehouse.landing)
    assert (item.data_lines, item.repeated_headers) == (3, 1)


@pytest.mark.parametrize("header, expected", [
    ("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,Price,CustomerID,Country",
     "missing columns ['UnitPrice']; unexpected columns ['Price']"),
    ("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID",
     "missing columns ['Country']"),
    ("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country,Channel",
     "unexpected columns ['Channel']"),
    ("StockCode,InvoiceNo,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country",
     "columns in a different order"),
])
def test_a_drifted_header_names_the_file_and_the_columns(lakehouse, header, expected):
    path = deliver(lakehouse, "orders", "2010-12-01", "drifted.csv", header + "\n1,2,3\n")
    with pytest.raises(HeaderMismatchError) as raised:
        inspect_file(path, ORDERS, lakehouse.landing)
    assert "orders/2010-12-01/drifted.csv" in str(raised.value)
    assert expected in str(raised.value)


def test_an_orders_file_delivered_as_events_is_drift(lakehouse):
    path = deliver(lakehouse, "events", "2019-10-01", "orders.csv", GOOD)
    with pytest.raises(HeaderMismatchError, match="does not match the events layout"):
        inspect_file(path, EVENTS, lakehouse.landing)


def test_an_empty_file_and_a_broken_gzip_are_named(lakehouse):
    empty = deliver(lakehouse, "orders", "2010-12-01", "empty.csv", b"")
    with pytest.raises(HeaderMismatchError, match="empty.csv: the file is empty"):
        inspect_file(empty, ORDERS, lakehouse.landing)
    broken = deliver(lakehouse, "orders", "2010-12-01", "broken.csv.gz", gzip.compress(GOOD.encode())[:-20])
    with pytest.raises(DeliveryError, match="broken.csv.gz: cannot be read as gzip-compressed CSV"):
        inspect_file(broken, ORDERS, lakehouse.landing)


def test_a_header_that_is_not_utf8_is_named(lakehouse):
    path = deliver(lakehouse, "orders", "2010-12-01", "latin.csv", b"Invoice\xe9No\n")
    with pytest.raises(HeaderMismatchError, match="latin.csv: the header line is not valid UTF-8"):
        inspect_file(path, ORDERS, lakehouse.landing)


def test_only_csv_files_are_deliveries(lakehouse):
    for name in ("b.csv", "a.csv.gz", "notes.txt", "_SUCCESS", ".a.csv.partial", "c.CSV.zip"):
        deliver(lakehouse, "orders", "2010-12-01", name, GOOD)
    files, ignored = list_delivery(lakehouse.landing_dir("orders", "2010-12-01"))
    assert [path.name for path in files] == ["a.csv.gz", "b.csv"]
    assert sorted(path.name for path in ignored) == [".a.csv.partial", "_SUCCESS", "c.CSV.zip", "notes.txt"]
