"""The bronze job on hand-written deliveries: every data line becomes exactly one row."""

from __future__ import annotations

import dataclasses
import logging
from datetime import date

import pytest

from expectations.gate import GateFailed
from include.landing import DeliveryError, HeaderMismatchError
from include.sources import EVENTS, ORDERS
from spark_jobs import tables
from spark_jobs.bronze import run_bronze
from tests.helpers import EVENTS_HEADER, ORDERS_HEADER, deliver

DAY = date(2010, 12, 1)
LINE = "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom"
QUOTED = '536365,22633,"HAND WARMER, UNION JACK",6,2010-12-01 08:26:00,1.85,,United Kingdom'
ESCAPED = '536370,22728,"ALARM CLOCK ""BAKELIKE"" PINK",24,2010-12-01 08:45:00,3.75,12583.0,France'
EVENT = ("2019-10-01 00:00:04 UTC,view,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,"
         "535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d")


@pytest.fixture
def lakehouse(lakehouse):
    """The parsing rules' own tests, on hand-written lines: the bronze gate is tested below, in
    test_gates.py and end to end."""
    return dataclasses.replace(lakehouse, gates=False)


def bronze_rows(spark, settings, source="orders", day=DAY):
    frame = spark.read.format("delta").load(settings.table_path("bronze", source))
    return frame.where(frame._ingestion_date == day).orderBy("_source_file", *frame.columns[:3]).collect()


def test_good_lines_keep_the_delivered_strings(spark, lakehouse):
    deliver(lakehouse, "orders", "2010-12-01", "day.csv", f"{ORDERS_HEADER}\n{LINE}\n{QUOTED}\n{ESCAPED}\n")
    result = run_bronze(spark, lakehouse, ORDERS, DAY, "run-1")
    assert (result.rows, result.malformed_rows, result.files) == (3, 0, 1)
    rows = {row.StockCode: row for row in bronze_rows(spark, lakehouse)}
    assert rows["22633"].Description == "HAND WARMER, UNION JACK"
    assert rows["22633"].CustomerID == "", "an empty field stays an empty string in bronze"
    assert rows["22728"].Description == 'ALARM CLOCK "BAKELIKE" PINK'
    assert rows["85123A"].asDict() | {"_ingested_at": None} == {
        "InvoiceNo": "536365", "StockCode": "85123A", "Description": "WHITE HANGING HEART T-LIGHT HOLDER",
        "Quantity": "6", "InvoiceDate": "2010-12-01 08:26:00", "UnitPrice": "2.55", "CustomerID": "17850.0",
        "Country": "United Kingdom", "_is_malformed": False, "_malformed_reason": None, "_raw_line": None,
        "_raw_bytes": None, "_ingestion_date": DAY, "_source_file": "orders/2010-12-01/day.csv",
        "_ingested_at": None, "_run_id": "run-1",
    }
    assert rows["85123A"]._ingested_at is not None


@pytest.mark.parametrize("line, reason", [
    ("536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0", "wrong field count: expected 8, found 7"),
    (LINE + ",extra", "wrong field count: expected 8, found 9"),
    ('536365,85123A,"WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom', "unbalanced quotes"),
    ("", "empty line"),
    ("just some text", "wrong field count: expected 8, found 1"),
    (ORDERS_HEADER, "header line repeated inside the file"),
])
def test_malformed_lines_are_kept_with_their_text_and_a_reason(spark, lakehouse, line, reason):
    deliver(lakehouse, "orders", "2010-12-01", "day.csv", f"{ORDERS_HEADER}\n{LINE}\n{line}\n{LINE}\n")
    result = run_bronze(spark, lakehouse, ORDERS, DAY, "run-1")
    assert (result.rows, result.malformed_rows) == (3, 1)
    [bad] = [row for row in bronze_rows(spark, lakehouse) if row._is_malformed]
    assert bad._malformed_reason == reason
    assert bad._raw_line == line
    assert bad._raw_bytes is None


def test_bytes_that_are_not_utf8_are_kept_raw(spark, lakehouse):
    latin1 = "536365,85123A,CAF\xc9 CUP,6,2010-12-01 08:26:00,2.55,17850.0,France".encode("latin-1")
    deliver(lakehouse, "orders", "2010-12-01", "day.csv", f"{ORDERS_HEADER}\n{LINE}\n".encode() + latin1 + b"\n")
    result = run_bronze(spark, lakehouse, ORDERS, DAY, "run-1")
    assert (result.rows, result.malformed_rows) == (2, 1)
    [bad] = [row for row in bronze_rows(spark, lakehouse) if row._is_malformed]
    assert bad._malformed_reason.startswith("line is not valid UTF-8")
    assert bytes(bad._raw_bytes) == latin1
    assert bad._raw_line == latin1.decode("utf-8", "replace")
    assert bad.Description == "CAF\ufffd CUP"


def test_gzip_crlf_bom_and_several_files_in_one_delivery(spark, lakehouse):
    deliver(lakehouse, "orders", "2010-12-01", "a.csv.gz", f"{ORDERS_HEADER}\n{LINE}\n{QUOTED}\n", compress=True)
    deliver(lakehouse, "orders", "2010-12-01", "b.csv", f"\ufeff{ORDERS_HEADER}\r\n{ESCAPED}\r\n{LINE}")
    deliver(lakehouse, "orders", "2010-12-01", "README.txt", "not a delivery")
    result = run_bronze(spark, lakehouse, ORDERS, DAY, "run-1")
    assert (result.rows, result.malformed_rows, result.files) == (4, 0, 2)
    rows = bronze_rows(spark, lakehouse)
    assert [row._source_file for row in rows].count("orders/2010-12-01/b.csv") == 2
    assert all(not row.Country.endswith("\r") for row in rows)


def test_a_drifted_header_fails_before_anything_is_written(spark, lakehouse):
    deliver(lakehouse, "orders", "2010-12-01", "good.csv", f"{ORDERS_HEADER}\n{LINE}\n")
    deliver(lakehouse, "orders", "2010-12-01", "new-export.csv",
            f"{ORDERS_HEADER.replace('UnitPrice', 'Price')}\n{LINE}\n")
    with pytest.raises(HeaderMismatchError, match=r"orders/2010-12-01/new-export.csv: .*"
                                                  r"missing columns \['UnitPrice'\]; unexpected columns \['Price'\]"):
        run_bronze(spark, lakehouse, ORDERS, DAY, "run-1")
    assert not tables.exists(spark, lakehouse.table_path("bronze", "orders"))


def test_a_missing_folder_is_an_error_for_the_job(spark, lakehouse):
    with pytest.raises(DeliveryError, match="no orders delivery for 2010-12-01"):
        run_bronze(spark, lakehouse, ORDERS, DAY, "run-1")


def test_rerun_replaces_the_date_and_leaves_other_dates_alone(spark, lakehouse):
    deliver(lakehouse, "orders", "2010-12-01", "day.csv", f"{ORDERS_HEADER}\n{LINE}\n{QUOTED}\n")
    deliver(lakehouse, "orders", "2010-12-02", "day.csv", f"{ORDERS_HEADER}\n{LINE}\n")
    run_bronze(spark, lakehouse, ORDERS, DAY, "run-1")
    run_bronze(spark, lakehouse, ORDERS, date(2010, 12, 2), "run-2")
    first = [row.asDict() for row in bronze_rows(spark, lakehouse)]
    run_bronze(spark, lakehouse, ORDERS, DAY, "run-3")
    again = [row.asDict() for row in bronze_rows(spark, lakehouse)]
    ignore = {"_ingested_at": None, "_run_id": None}
    assert [row | ignore for row in again] == [row | ignore for row in first]
    assert {row["_run_id"] for row in again} == {"run-3"}
    assert len(bronze_rows(spark, lakehouse, day=date(2010, 12, 2))) == 1
    history = spark.sql(f"DESCRIBE HISTORY {tables.sql_name(lakehouse.table_path('bronze', 'orders'))}").collect()
    assert len(history) == 3 and history[0].operation == "WRITE"


def test_an_empty_delivery_marked_empty_replaces_earlier_rows_with_none(spark, lakehouse):
    """Without its `_EMPTY` marker the same delivery is refused (tests/test_faults.py)."""
    path = deliver(lakehouse, "orders", "2010-12-01", "day.csv", f"{ORDERS_HEADER}\n{LINE}\n")
    run_bronze(spark, lakehouse, ORDERS, DAY, "run-1")
    path.write_text(f"{ORDERS_HEADER}\n")
    (path.parent / "_EMPTY").touch()
    result = run_bronze(spark, lakehouse, ORDERS, DAY, "run-2")
    assert (result.rows, result.files) == (0, 1)
    assert bronze_rows(spark, lakehouse) == []


def test_a_folder_without_data_files_is_an_empty_delivery(spark, lakehouse):
    deliver(lakehouse, "events", "2019-10-01", "notes.txt", "nothing today")
    result = run_bronze(spark, lakehouse, EVENTS, date(2019, 10, 1), "run-1")
    assert (result.rows, result.files) == (0, 0)
    assert spark.read.format("delta").load(lakehouse.table_path("bronze", "events")).count() == 0


def test_events_layout_and_the_file_manifest(spark, lakehouse, caplog):
    day1, day2 = date(2019, 10, 1), date(2019, 10, 2)
    content = f"{EVENTS_HEADER}\n{EVENT}\n{EVENT.replace('view', 'cart')}\n"
    deliver(lakehouse, "events", "2019-10-01", "events.csv", content)
    deliver(lakehouse, "events", "2019-10-02", "events-again.csv", content)
    run_bronze(spark, lakehouse, EVENTS, day1, "run-1")
    with caplog.at_level(logging.WARNING, logger="lakehouse.bronze"):
        result = run_bronze(spark, lakehouse, EVENTS, day2, "run-2")
    assert result.rows == 2
    [row] = [row for row in bronze_rows(spark, lakehouse, "events", day2) if row.event_type == "view"]
    assert (row.category_id, row.price, row.user_session) == (
        "2053013555631882655", "1081.98", "c6bd7419-2748-4c56-95b4-8cec9ff8b80d")
    warnings = [record.getMessage() for record in caplog.records]
    assert any("events/2019-10-02/events-again.csv is identical" in message
               and "events/2019-10-01/events.csv (ingested for 2019-10-01)" in message for message in warnings)
    manifest = spark.read.format("delta").load(lakehouse.table_path("bronze", "ingested_files"))
    assert sorted((row.ingestion_date, row.file, row.data_lines) for row in manifest.collect()) == [
        (day1, "events/2019-10-01/events.csv", 2), (day2, "events/2019-10-02/events-again.csv", 2)]
    run_bronze(spark, lakehouse, EVENTS, day2, "run-3")
    assert manifest.count() == 2, "a rerun replaces its date's manifest entries"


def test_file_names_that_look_like_globs_are_read_literally(spark, lakehouse):
    deliver(lakehouse, "orders", "2010-12-01", "export[1].csv", f"{ORDERS_HEADER}\n{LINE}\n")
    deliver(lakehouse, "orders", "2010-12-01", "export1.csv", f"{ORDERS_HEADER}\n{LINE}\n{LINE}\n")
    assert run_bronze(spark, lakehouse, ORDERS, DAY, "run-1").rows == 3


def test_rows_that_do_not_match_the_delivered_lines_fail_the_gate(spark, lakehouse, monkeypatch):
    import spark_jobs.bronze as job

    deliver(lakehouse, "orders", "2010-12-01", "day.csv", f"{ORDERS_HEADER}\n{LINE}\n{QUOTED}\n")
    real_inspect = job.inspect_file
    monkeypatch.setattr(job, "inspect_file", lambda *args: dataclasses.replace(real_inspect(*args), data_lines=3))
    with pytest.raises(GateFailed, match=r"one row per delivered data line: observed 2") as failure:
        run_bronze(spark, dataclasses.replace(lakehouse, gates=True), ORDERS, DAY, "run-1")
    assert "bronze.orders (1 of" in str(failure.value)
    assert not (lakehouse.warehouse / "bronze").exists(), "nothing is written when the gate fails"
