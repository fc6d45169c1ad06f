"""Write-audit-publish: a layer publishes a date only when its GX suites pass, and Data Docs show every run."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from datetime import date
from pathlib import Path

import pytest

from expectations.gate import GateFailed, load_suite, suite_names
from include.sources import EVENTS, ORDERS
from include.tools import generate_events
from spark_jobs.bronze import run_bronze
from spark_jobs.silver import run_silver
from tests.helpers import deliver

DAY = date(2019, 10, 1)
NEXT_DAY = date(2019, 10, 2)


def test_every_suite_file_loads_and_is_named_after_its_table():
    names = suite_names()
    assert {"bronze.orders", "bronze.events", "silver.orders", "silver.events", "silver.quarantine",
            "silver.dim_customer", "silver.dim_product"} <= set(names)
    for name in names:
        suite = load_suite(name)
        assert suite.name == name and suite.expectations, name


def _events_day(settings, day: date, blank_user_share: float = 0.0) -> int:
    """A generated events day (no defects), with `blank_user_share` of its lines' user_id emptied."""
    generate_events.main(["--from", day.isoformat(), "--days", "1", "--events-per-day", "400",
                          "--landing", str(settings.landing)])
    (path,) = settings.landing_dir("events", day).glob("*.csv")
    rows = list(csv.reader(io.StringIO(path.read_text())))
    header, lines = rows[0], rows[1:]
    user = header.index("user_id")
    blanked = int(len(lines) * blank_user_share)
    for line in lines[:blanked]:
        line[user] = ""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *lines])
    path.write_text(out.getvalue())
    return blanked


def _version(spark, path: str) -> int | None:
    from spark_jobs import tables

    return tables.version(spark, path) if tables.exists(spark, path) else None


def _page(message: str) -> Path:
    (page,) = re.findall(r"Data Docs: (\S+\.html)", message)[:1]
    return Path(page)


def test_a_day_with_30_percent_empty_user_ids_is_refused_by_the_silver_gate(spark, lakehouse):
    _events_day(lakehouse, DAY)
    run_bronze(spark, lakehouse, EVENTS, DAY, "good")
    run_silver(spark, lakehouse, EVENTS, DAY, "good")
    tables = [lakehouse.table_path("silver", name) for name in ("events", "quarantine")]
    published = [_version(spark, path) for path in tables]
    rows = spark.read.format("delta").load(tables[0]).count()

    blanked = _events_day(lakehouse, NEXT_DAY, blank_user_share=0.3)
    run_bronze(spark, lakehouse, EVENTS, NEXT_DAY, "bad")
    with pytest.raises(GateFailed) as failure:
        run_silver(spark, lakehouse, EVENTS, NEXT_DAY, "bad")
    message = str(failure.value)
    assert "silver events 2019-10-02 not published" in message
    assert "silver.quarantine" in message and "quarantined share" in message
    assert [_version(spark, path) for path in tables] == published, "a refused date leaves the tables as they were"
    assert spark.read.format("delta").load(tables[0]).count() == rows
    index = spark.read.format("delta").load(lakehouse.table_path("silver", "fingerprints"))
    assert index.where(f"_ingestion_date = '{NEXT_DAY}'").count() == 0, \
        "the duplicate index does not record the rows of a refused date"
    page = _page(message)
    assert page.is_file() and page.is_relative_to(lakehouse.data_docs)
    html = page.read_text()
    assert "quarantined share" in html and "Failed" in html
    assert blanked == 120

    # The same day passes once the owners raise the source's threshold.
    relaxed = dataclasses.replace(lakehouse, max_quarantine_share={**lakehouse.max_quarantine_share, "events": 0.35})
    run_silver(spark, relaxed, EVENTS, NEXT_DAY, "relaxed")
    assert _version(spark, tables[0]) == published[0] + 1
    index = (lakehouse.data_docs / "index.html").read_text()
    assert index.count("2019-10-02.silver.events") >= 2 and "2019-10-01.silver.events" in index
    # make setup fetched the pages' scripts and styles: the site works opened from disk, offline.
    assert (lakehouse.data_docs / "static" / "vendor" / "bootstrap-table.min.js").is_file()
    assert '"static/vendor/bootstrap-table.min.js"' in index and "unpkg.com" not in index
    assert "unpkg.com" not in page.read_text() and "/static/vendor/jquery.min.js" in page.read_text()
    assert 'src="static/images/logo-long.png"' in index and "/logo-long.png?" not in index + page.read_text()


def test_broken_silver_accounting_is_refused(spark, lakehouse, monkeypatch, sample_orders_dir):
    import spark_jobs.transforms.silver as transforms

    deliver(lakehouse, "orders", "2010-12-01", "day.csv.gz", (sample_orders_dir / "2010-12-01.csv.gz").read_bytes())
    run_bronze(spark, lakehouse, ORDERS, date(2010, 12, 1), "bronze")
    real = transforms.to_silver
    # A transform that loses rows on the way to silver: the accounting check must notice.
    monkeypatch.setattr(transforms, "to_silver", lambda source, rows: real(source, rows).where("quantity <> 6"))
    with pytest.raises(GateFailed, match=r"silver \+ quarantine = bronze, date by date") as failure:
        run_silver(spark, lakehouse, ORDERS, date(2010, 12, 1), "broken")
    assert _version(spark, lakehouse.table_path("silver", "orders")) is None, "nothing was published"
    assert _page(str(failure.value)).is_file()
    monkeypatch.setattr(transforms, "to_silver", real)
    result = run_silver(spark, lakehouse, ORDERS, date(2010, 12, 1), "fixed")
    assert result.silver_rows > 0
    page = next(lakehouse.data_docs.glob("validations/silver/orders/*/*/*.html"))
    assert page.is_file()


def test_a_broken_gold_reconciliation_is_refused_and_the_mart_keeps_its_version(spark, lakehouse, monkeypatch,
                                                                                 sample_orders_dir):
    import spark_jobs.transforms.gold as transforms
    from spark_jobs.gold import run_gold

    ungated = dataclasses.replace(lakehouse, gates=False)  # bronze and silver are not what this test is about
    days = [date(2010, 12, 1), date(2010, 12, 2)]
    for day in days:
        deliver(lakehouse, "orders", day.isoformat(), "day.csv.gz",
                (sample_orders_dir / f"{day.isoformat()}.csv.gz").read_bytes())
        run_bronze(spark, ungated, ORDERS, day, "bronze")
    run_silver(spark, ungated, ORDERS, days[0], "silver")
    run_gold(spark, lakehouse, ORDERS, days[0], "good")
    path = lakehouse.table_path("gold", "daily_sales")
    published = _version(spark, path)

    # A mart definition that adds a cent to every country's day: the reconciliation with silver must notice.
    real = transforms.marts_of
    def off_by_a_cent(aggregate):
        from pyspark.sql import functions as F

        cent = (F.col("revenue") + F.lit(0.01)).cast("decimal(18,2)")
        return lambda rows: aggregate(rows).withColumn("revenue", cent)

    broken = [dataclasses.replace(mart, aggregate=off_by_a_cent(mart.aggregate)) if mart.table == "daily_sales"
              else mart for mart in real("orders")]
    monkeypatch.setattr(transforms, "marts_of", lambda source: tuple(broken) if source == "orders" else real(source))
    run_silver(spark, ungated, ORDERS, days[1], "silver")
    with pytest.raises(GateFailed) as failure:
        run_gold(spark, lakehouse, ORDERS, days[1], "broken")
    message = str(failure.value)
    assert "gold.daily_sales" in message and "equals the non-cancelled silver revenue" in message
    assert "silver_revenue" in message, "the log shows sample rows with both figures"
    assert _version(spark, path) == published, "no gold table was written"
    assert _version(spark, lakehouse.table_path("gold", "customer_rfm")) == 0
    assert "Failed" in _page(message).read_text()

    monkeypatch.setattr(transforms, "marts_of", real)
    run_gold(spark, lakehouse, ORDERS, days[1], "fixed")
    assert _version(spark, path) == published + 1


def test_an_empty_delivery_passes_the_gates_and_publishes_an_empty_date(spark, lakehouse):
    deliver(lakehouse, "orders", "2010-12-01", "day.csv", f"{ORDERS.header}\n")
    assert run_bronze(spark, lakehouse, ORDERS, date(2010, 12, 1), "empty").rows == 0
    result = run_silver(spark, lakehouse, ORDERS, date(2010, 12, 1), "empty")
    assert (result.silver_rows, result.quarantined_rows) == (0, 0)
    assert _version(spark, lakehouse.table_path("silver", "orders")) == 0


def test_a_sql_check_counts_every_row_it_finds_and_keeps_a_sample(spark):
    """The SQL checks fetch up to SAMPLE_ROWS rows by one query and count only when they found that many:
    the count is exact either way, and a failed check keeps the first rows for Data Docs and the log."""
    import great_expectations as gx

    from expectations.gate import SAMPLE_ROWS, _sampled_rows_expectation

    context = gx.get_context(mode="ephemeral")
    batch = (context.data_sources.add_spark("numbers").add_dataframe_asset("numbers")
             .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": spark.range(100)}))
    for found in (0, 1, SAMPLE_ROWS - 1, SAMPLE_ROWS, SAMPLE_ROWS + 1, 45):
        check = _sampled_rows_expectation()(unexpected_rows_query=f"SELECT id FROM {{batch}} WHERE id < {found}",
                                            description=f"ids below {found}")
        result = batch.validate(check, result_format="SUMMARY")
        assert result.success is (found == 0), found
        assert result.result["observed_value"] == found, found
        sample = (result.result.get("details") or {}).get("unexpected_rows", [])
        assert sample == [{"id": value} for value in range(min(found, SAMPLE_ROWS))], found


def test_column_expectations_keep_a_sample_of_unexpected_values_only_where_they_found_some(spark, lakehouse):
    """A suite runs without samples first and again with them when an expectation found unexpected values:
    either way the project holds one result per suite and run, and a failure's result, log line and Data
    Docs page show the values."""
    import json

    from expectations.gate import SAMPLE_ROWS, Check, audit

    columns = "stock_code string, version int, valid_from date, valid_to date, is_current boolean"
    good = spark.createDataFrame([("A1", 1, date(2010, 12, 1), None, True), ("B2", 1, date(2010, 12, 1), None, True)],
                                 columns).cache()
    (passed,) = audit(spark, lakehouse, "silver", "orders", DAY, [Check("dim_product", good)])
    assert passed.success
    bad = spark.createDataFrame([(f"C{n}", 0, date(2010, 12, 1), None, True) for n in range(30)]
                                + [("A1", 1, date(2010, 12, 1), None, True)], columns).cache()
    with pytest.raises(GateFailed) as failure:
        audit(spark, lakehouse, "silver", "orders", NEXT_DAY, [Check("dim_product", bad)])
    assert re.search(r"expect_column_values_to_be_between .*30 unexpected .*e\.g\. \[0, 0, 0, 0, 0\]",
                     str(failure.value))

    stored = sorted((lakehouse.gx_root / "gx" / "uncommitted" / "validations").glob("silver/dim_product/**/*.json"))
    assert len(stored) == 2, "one stored result per suite and run"
    results = [json.loads(path.read_text()) for path in stored]
    (failed,) = [result for result in results if not result["success"]]
    between = next(item for item in failed["results"]
                   if item["expectation_config"]["type"] == "expect_column_values_to_be_between")
    assert between["result"]["unexpected_count"] == 30
    assert between["result"]["partial_unexpected_list"] == [0] * SAMPLE_ROWS
    for result in results:
        for item in result["results"]:
            assert "unexpected_index_query" not in item["result"], item["expectation_config"]["type"]
    page = _page(str(failure.value)).read_text()
    assert "30 unexpected" in page


def test_the_sql_checks_run_ahead_of_gx_counted_together_and_sampled_where_they_found_rows(spark, lakehouse,
                                                                                            monkeypatch):
    import threading

    import expectations.gate as gate

    calls = []

    def traced(name, real):
        def call(*arguments):
            calls.append((name, threading.current_thread().name))
            return real(*arguments)
        return call

    for name in ("_counted", "_sampled_rows"):
        monkeypatch.setattr(gate, name, traced(name, getattr(gate, name)))
    columns = "stock_code string, version int, valid_from date, valid_to date, is_current boolean"
    rows = spark.createDataFrame([("A1", 1, date(2010, 12, 1), None, True), ("A1", 2, date(2010, 12, 2), None, True)],
                                 columns).cache()
    with pytest.raises(GateFailed,
                       match=r"exactly one current row per stock_code: observed 1; e.g. .*current_rows.: 2"):
        gate.audit(spark, lakehouse, "silver", "orders", DAY, [gate.Check("dim_product", rows)])
    # The suite's three SQL checks counted by one query; the one that found a row fetched its sample; the
    # second pass (GX's samples of column values) reused both.
    assert sorted(name for name, _ in calls) == ["_counted", "_sampled_rows"], calls
    assert all(thread.startswith("gate-sql") for _, thread in calls), calls


def test_a_sql_check_that_cannot_run_fails_alone_and_the_others_keep_their_results(spark, lakehouse, monkeypatch,
                                                                                   tmp_path):
    """The SQL checks are counted by one query: where one check's query is broken, that query fails, and each
    check then runs alone, so that the error is reported against the check that has it."""
    import expectations.gate as gate

    (tmp_path / "silver.dim_product.yml").write_text(
        "suite: silver.dim_product\n"
        "expectations:\n"
        "  - unexpected_rows: {description: no version 0, query: 'SELECT stock_code FROM {batch} WHERE version = 0'}\n"
        "  - unexpected_rows: {description: a column that is not there, query: 'SELECT nothing FROM {batch}'}\n"
        "  - unexpected_rows: {description: no version 9, query: 'SELECT stock_code FROM {batch} WHERE version = 9'}\n")
    monkeypatch.setattr(gate, "SUITES_DIR", tmp_path)
    columns = "stock_code string, version int"
    rows = spark.createDataFrame([("A1", 1), ("B2", 0)], columns).cache()
    with pytest.raises(GateFailed) as failure:
        gate.audit(spark, lakehouse, "silver", "orders", DAY, [gate.Check("dim_product", rows)])
    text = str(failure.value)
    assert "2 of 3 expectations failed" in text, text
    assert re.search(r"no version 0: observed 1; e\.g\. \[\{'stock_code': 'B2'\}\]", text), text
    assert re.search(r"a column that is not there: .*error: .*nothing", text), text
    assert "no version 9" not in text, text


def test_a_sql_check_with_a_placeholder_other_than_batch_is_a_broken_suite(monkeypatch, tmp_path):
    import expectations.gate as gate

    (tmp_path / "silver.dim_product.yml").write_text(
        "suite: silver.dim_product\n"
        "expectations:\n"
        "  - unexpected_rows: {description: a typo, query: 'SELECT * FROM {bacth} WHERE version = 0'}\n")
    monkeypatch.setattr(gate, "SUITES_DIR", tmp_path)
    with pytest.raises(gate.SuiteError, match=r"silver\.dim_product\.yml: expectation 1: .*'bacth'.*\{batch\}"):
        gate.load_suite("silver.dim_product")
