"""Shared fixtures: one local Spark session for the whole run, and a throw-away lakehouse per test."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from include.config import PROJECT_ROOT, SAMPLE_ORDERS_DIR, Settings

# Airflow reads its configuration on import: keep it off the user's home and without examples.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="lakehouse-test-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PROJECT_ROOT / "plugins")

# py4j logs at INFO when its connections close at interpreter exit, after pytest closed its streams.
logging.getLogger("py4j").setLevel(logging.WARNING)

# The tests' own Spark Connect server (LAKEHOUSE_RUNTIME=connect, the default): its port, UI port, home and
# token chosen once here, by the first pytest process (the xdist controller, or the only process), and
# inherited by the workers and by every Airflow and job process a test starts. The first test that needs
# it starts it (include/tools/spark_connect.py; a second start reuses it); the run stops it at the end.
_CONNECT_OWNER = "PYTEST_XDIST_WORKER" not in os.environ and "LAKEHOUSE_TEST_CONNECT_HOME" not in os.environ
if _CONNECT_OWNER:
    from tests.helpers import free_port

    os.environ["LAKEHOUSE_TEST_CONNECT_HOME"] = tempfile.mkdtemp(prefix="lakehouse-test-connect-")
    os.environ.update({
        "LAKEHOUSE_CONNECT_HOME": os.environ["LAKEHOUSE_TEST_CONNECT_HOME"],
        "LAKEHOUSE_CONNECT_PORT": str(free_port()),
        "LAKEHOUSE_CONNECT_UI_PORT": str(free_port()),
        "LAKEHOUSE_CONNECT_TOKEN": secrets.token_urlsafe(24),
        "LAKEHOUSE_CONNECT_MEMORY": os.environ.get("LAKEHOUSE_TEST_CONNECT_MEMORY", "6g"),
    })

CONNECT_ENV = {name: os.environ[name] for name in (
    "LAKEHOUSE_CONNECT_HOME", "LAKEHOUSE_CONNECT_PORT", "LAKEHOUSE_CONNECT_UI_PORT", "LAKEHOUSE_CONNECT_TOKEN",
    "LAKEHOUSE_CONNECT_MEMORY") if name in os.environ}

TEST_SPARK_ENV = {
    "LAKEHOUSE_SPARK_MASTER": "local[2]",
    "LAKEHOUSE_SHUFFLE_PARTITIONS": "2",
    "LAKEHOUSE_SPARK_UI": "false",
    "LAKEHOUSE_SPARK_DRIVER_MEMORY": "2g",
    **CONNECT_ENV,
}


def connect_server() -> Settings:
    """The tests' Spark Connect server, started if it is not up yet; its settings."""
    from include.tools import spark_connect

    settings = Settings.from_env({**os.environ, **TEST_SPARK_ENV})
    spark_connect.start(settings, quiet=True)
    return settings


@pytest.fixture(scope="session")
def spark_session(tmp_path_factory):
    from include.spark import get_spark

    settings = connect_server()
    session = get_spark("lakehouse-tests", settings)
    yield session
    session.stop()


@pytest.fixture
def spark(spark_session):
    """The test process's session on the tests' Spark Connect server, the current one for the test (Great
    Expectations finds its session as the current one; a test before may have opened and stopped another)."""
    from include.spark import make_current

    make_current(spark_session)
    return spark_session


@pytest.fixture
def lakehouse(tmp_path) -> Settings:
    """Settings for an empty landing zone and warehouse under the test's own folder."""
    return Settings.from_env({
        **TEST_SPARK_ENV,
        "LAKEHOUSE_LANDING": str(tmp_path / "landing"),
        "LAKEHOUSE_WAREHOUSE": str(tmp_path / "warehouse"),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
    })


@pytest.fixture(scope="session")
def sample_orders_dir() -> Path:
    return SAMPLE_ORDERS_DIR


def pytest_collection_modifyitems(items):
    """A slow acceptance run (`make test-slow`, `make test-faults`) may take far longer than pyproject's timeout
    for `make test`'s tests; an hour still ends one that hangs."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(3600))


def pytest_terminal_summary(terminalreporter):
    """The fault suite's table (tests/test_faults.py records a row per case it ran, workers included)."""
    rows = [(report.nodeid.split("::")[-1], report.outcome, properties)
            for reports in terminalreporter.stats.values() for report in reports
            if getattr(report, "when", None) == "call"
            for name, properties in getattr(report, "user_properties", ()) if name == "fault"]
    if not rows:
        return
    terminalreporter.write_sep("=", "fault suite")
    terminalreporter.write_line(f"{'case':44} {'what was done':58} {'outcome':40} rows lost")
    for _test, outcome, case in sorted(rows, key=lambda row: row[2]["case"]):
        verdict = case["outcome"] if outcome == "passed" else f"TEST {outcome.upper()}"
        terminalreporter.write_line(f"{case['case'][:44]:44} {case['done'][:58]:58} {verdict[:40]:40} "
                                    f"{case['rows_lost']}")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


def pytest_unconfigure(config):
    if _CONNECT_OWNER:
        from include.tools import spark_connect

        spark_connect.stop(Settings.from_env({**os.environ, **TEST_SPARK_ENV}), quiet=True)
        shutil.rmtree(os.environ["LAKEHOUSE_TEST_CONNECT_HOME"], ignore_errors=True)
