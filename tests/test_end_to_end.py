"""lakehouse_daily through Airflow (`airflow dags test`) and spark-submit, on real order days."""

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

pytestmark = pytest.mark.e2e

DAY1, DAY2 = "2010-12-01", "2010-12-02"
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


def bronze_counts(root: Path, source: str) -> dict[str, int]:
    path = root / "warehouse" / "bronze" / source
    if not path.exists():
        return {}
    rows = query(path, "SELECT CAST(_ingestion_date AS VARCHAR) AS d, count(*) AS n FROM t GROUP BY 1").to_pylist()
    return {row["d"]: row["n"] for row in rows}


def test_two_real_days_and_a_rerun_land_every_line_in_bronze(airflow):
    env, root = airflow
    landing = root / "landing"
    stage_orders.main(["--from", DAY1, "--days", "2", "--landing", str(landing)])
    generate_events.main(["--from", DAY1, "--days", "1", "--events-per-day", str(EVENTS_PER_DAY),
                          "--defect-rate", "0.05", "--landing", str(landing)])
    expected = {day: data_lines(SAMPLE_ORDERS_DIR / f"{day}.csv.gz") for day in (DAY1, DAY2)}
    assert expected == {DAY1: 3108, DAY2: 2109}

    state, _ = dags_test(env, DAY1)
    assert state == "success"
    state, output = dags_test(env, DAY2)
    assert state == "success"
    assert f"no events delivery for {DAY2}" in output, "the source without a folder is skipped, visibly"
    assert bronze_counts(root, "orders") == expected
    assert bronze_counts(root, "events") == {DAY1: EVENTS_PER_DAY}

    before = query(root / "warehouse" / "bronze" / "orders",
                   f"SELECT * FROM t WHERE _ingestion_date = '{DAY1}'").drop(["_ingested_at", "_run_id"])
    state, _ = dags_test(env, DAY1)
    assert state == "success"
    assert bronze_counts(root, "orders") == expected, "a rerun replaces the date; it never adds to it"
    assert bronze_counts(root, "events") == {DAY1: EVENTS_PER_DAY}
    after = query(root / "warehouse" / "bronze" / "orders",
                  f"SELECT * FROM t WHERE _ingestion_date = '{DAY1}'").drop(["_ingested_at", "_run_id"])
    assert sorted(map(repr, after.to_pylist())) == sorted(map(repr, before.to_pylist()))
    malformed = query(root / "warehouse" / "bronze" / "events",
                      "SELECT count(*) AS n FROM t WHERE _is_malformed").column("n")[0].as_py()
    assert 0 < malformed < EVENTS_PER_DAY * 0.05


def test_a_changed_header_fails_the_bronze_task_naming_file_and_columns(airflow):
    env, root = airflow
    day = "2010-12-05"
    folder = root / "landing" / "orders" / day
    folder.mkdir(parents=True)
    real = gzip.decompress((SAMPLE_ORDERS_DIR / f"{day}.csv.gz").read_bytes()).decode()
    (folder / "export.csv").write_text(real.replace("UnitPrice,CustomerID", "Price,CustomerNo", 1))
    state, output = dags_test(env, day)
    assert state == "failed"
    assert re.search(r"orders/2010-12-05/export.csv: header does not match the orders layout: "
                     r"missing columns \['UnitPrice', 'CustomerID'\]; unexpected columns \['Price', 'CustomerNo'\]",
                     output), output[-4000:]
    assert day not in bronze_counts(root, "orders")
