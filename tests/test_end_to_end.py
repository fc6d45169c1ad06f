"""lakehouse_daily through Airflow (`airflow dags test`) and spark-submit, on two real order days run
out of order (the later day first, as a backfill of the earlier day would), with a bad events day
that the silver gate refuses and a good one that passes."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from include.config import PROJECT_ROOT, SAMPLE_ORDERS_DIR
from include.tools import generate_events, stage_orders
from include.tools.show_tables import query
from tests.reference import (
    daily_sales_reference,
    dimensions_reference,
    events_rules,
    files_by_date,
    orders_reference,
)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("airflow")]

DAY1, DAY2 = DAYS = ("2010-12-01", "2010-12-02")
EVENTS_PER_DAY = 2_000


def data_lines(path: Path) -> int:
    with gzip.open(path, "rb") as handle:
        return sum(1 for _ in handle) - 1


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """An Airflow home with its own SQLite database, landing zone and warehouse."""
    root = tmp_path_factory.mktemp("e2e")
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYSPARK_PYTHON": sys.executable,
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_LOCAL": '{"conn_type": "spark", "host": "local[2]"}',
        "LAKEHOUSE_LANDING": str(root / "landing"),
        "LAKEHOUSE_WAREHOUSE": str(root / "warehouse"),
        "LAKEHOUSE_SHUFFLE_PARTITIONS": "2",
        "LAKEHOUSE_SPARK_UI": "false",
        # Each task is a new JVM working on a few thousand rows: the quick JIT compiler alone cut this
        # test from 871 s to 586 s in one comparison (the tests' own long-lived session is slower with it).
        "LAKEHOUSE_SPARK_JAVA_OPTIONS": "-XX:TieredStopAtLevel=1",
    }
    migrate = subprocess.run(["airflow", "db", "migrate"], env=env, capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    return env, root


def dags_test(env, day: str) -> tuple[str, str]:
    """Run lakehouse_daily for one ingestion date; return the run's final state and its output."""
    done = subprocess.run(["airflow", "dags", "test", "lakehouse_daily", day], env=env,
                          capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    states = re.findall(r"DagRun Finished: dag_id=lakehouse_daily, logical_date=" + day + r".*?state=(\w+)", output)
    assert states, f"no finished run in the output of airflow dags test (exit {done.returncode}):\n{output[-4000:]}"
    return states[-1], output


def per_date(root: Path, layer: str, table: str, where: str = "TRUE") -> dict[str, int]:
    path = root / "warehouse" / layer / table
    if not path.exists():
        return {}
    rows = query(path, f"SELECT CAST(_ingestion_date AS VARCHAR) AS d, count(*) AS n FROM t WHERE {where} GROUP BY 1")
    return {row["d"]: row["n"] for row in rows.to_pylist()}


def bronze_counts(root: Path, source: str) -> dict[str, int]:
    return per_date(root, "bronze", source)


def test_two_real_days_out_of_order_through_bronze_silver_and_gold(airflow):
    env, root = airflow
    landing = root / "landing"
    stage_orders.main(["--from", DAY1, "--days", "2", "--landing", str(landing)])
    generate_events.main(["--from", DAY1, "--days", "1", "--events-per-day", str(EVENTS_PER_DAY),
                          "--defect-rate", "0.05", "--landing", str(landing)])
    # DAY2's events arrive with 30% of their user ids empty: bronze keeps them, silver's gate refuses the date.
    generate_events.main(["--from", DAY2, "--days", "1", "--events-per-day", str(EVENTS_PER_DAY),
                          "--landing", str(landing)])
    (bad,) = (landing / "events" / DAY2).glob("*.csv")
    header, *lines = bad.read_text().splitlines()
    blanked = [",".join(fields[:7] + [""] + fields[8:]) if index % 10 < 3 else line
               for index, line in enumerate(lines) for fields in [line.split(",")]]
    bad.write_text("\n".join([header, *blanked]) + "\n")
    expected = {day: data_lines(SAMPLE_ORDERS_DIR / f"{day}.csv.gz") for day in DAYS}
    assert expected == {DAY1: 3108, DAY2: 2109}

    state, output = dags_test(env, DAY2)
    assert state == "failed", output[-4000:]
    assert f"silver events {DAY2} not published: 1 of 2 suite(s) failed" in output, output[-4000:]
    assert "quarantined share of its bronze rows is at or below the source's threshold" in output
    (page,) = set(re.findall(r"Data Docs: (\S+lakehouse-silver\.quarantine\.html)", output))
    assert Path(page).is_file() and "Failed" in Path(page).read_text()
    assert not (root / "warehouse" / "silver" / "events").exists(), "the refused date published nothing"
    assert not (root / "warehouse" / "gold" / "funnel_daily").exists(), "gold did not run after the failed gate"
    assert bronze_counts(root, "orders") == {DAY2: expected[DAY2]}, "the other source went on"

    state, output = dags_test(env, DAY1)
    assert state == "success", output[-4000:]
    assert bronze_counts(root, "orders") == expected
    assert bronze_counts(root, "events") == {DAY1: EVENTS_PER_DAY, DAY2: EVENTS_PER_DAY}
    index = (root / "data-docs" / "index.html").read_text()
    assert all(f"{day}.{layer}.{source}" in index for day in DAYS for layer in ("bronze", "silver")
               for source in ("orders", "events")), "Data Docs list every run's validations by date and layer"

    # Silver follows the rules exactly, and every bronze row is in silver or in quarantine.
    reference = orders_reference(files_by_date(landing / "orders"))
    assert per_date(root, "silver", "orders") == {day.isoformat(): rows for day, rows in reference.silver_counts().items()}
    rules = query(root / "warehouse" / "silver" / "quarantine",
                  "SELECT source, CAST(_ingestion_date AS VARCHAR) AS d, rule, count(*) AS n FROM t GROUP BY 1, 2, 3")
    assert {(row["d"], row["rule"]): row["n"] for row in rules.to_pylist() if row["source"] == "orders"} == \
        {(day.isoformat(), rule): rows for (day, rule), rows in reference.rules.items()}
    for source, days in (("orders", DAYS), ("events", (DAY1,))):  # DAY2's events were refused
        silver = per_date(root, "silver", source)
        quarantined = per_date(root, "silver", "quarantine", f"source = '{source}'")
        assert {day: silver.get(day, 0) + quarantined.get(day, 0) for day in days} == \
            {day: bronze_counts(root, source)[day] for day in days}, source
    assert DAY2 not in per_date(root, "silver", "quarantine", "source = 'events'")
    dim_customer, dim_product = dimensions_reference(reference.silver)
    for table, rows in (("dim_customer", dim_customer), ("dim_product", dim_product)):
        assert query(root / "warehouse" / "silver" / table, "SELECT count(*) AS n FROM t").column("n")[0].as_py() == \
            len(rows)

    # The generated events: each rule rejects exactly the lines the rules, applied in plain Python, reject.
    delivered = files_by_date(landing / "events")
    events_expected, events_silver = events_rules({day: files for day, files in delivered.items()
                                                   if day.isoformat() == DAY1})
    rules = query(root / "warehouse" / "silver" / "quarantine",
                  "SELECT rule, count(*) AS n FROM t WHERE source = 'events' GROUP BY 1")
    assert {row["rule"]: row["n"] for row in rules.to_pylist()} == {rule: n for (_, rule), n in events_expected.items()}
    assert per_date(root, "silver", "events") == {DAY1: events_silver}

    # Gold, run by each date's DAG run: daily sales to the penny, and every events mart built.
    sales = query(root / "warehouse" / "gold" / "daily_sales", "SELECT * FROM t").to_pylist()
    assert sorted((tuple(row.values()) for row in sales), key=repr) == daily_sales_reference(reference.silver)
    for table in ("customer_rfm", "product_performance", "funnel_daily", "product_conversion", "user_engagement",
                  "hourly_sales"):
        assert query(root / "warehouse" / "gold" / table, "SELECT count(*) AS n FROM t").column("n")[0].as_py() > 0


def test_a_changed_header_fails_the_bronze_task_naming_file_and_columns(airflow):
    env, root = airflow
    day = "2010-12-05"
    folder = root / "landing" / "orders" / day
    folder.mkdir(parents=True)
    real = gzip.decompress((SAMPLE_ORDERS_DIR / f"{day}.csv.gz").read_bytes()).decode()
    (folder / "export.csv").write_text(real.replace("UnitPrice,CustomerID", "Price,CustomerNo", 1))
    state, output = dags_test(env, day)
    assert state == "failed"
    assert day not in per_date(root, "silver", "orders"), "silver does not run after a failed bronze"
    assert re.search(r"orders/2010-12-05/export.csv: header does not match the orders layout: "
                     r"missing columns \['UnitPrice', 'CustomerID'\]; unexpected columns \['Price', 'CustomerNo'\]",
                     output), output[-4000:]
    assert day not in bronze_counts(root, "orders")
