"""Shared fixtures: one local Spark session for the whole run, and a throw-away lakehouse per test."""

from __future__ import annotations

import logging
import os
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

TEST_SPARK_ENV = {
    "LAKEHOUSE_SPARK_MASTER": "local[2]",
    "LAKEHOUSE_SHUFFLE_PARTITIONS": "2",
    "LAKEHOUSE_SPARK_UI": "false",
    "LAKEHOUSE_SPARK_DRIVER_MEMORY": "2g",
}


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from include.spark import get_spark

    settings = Settings.from_env({**TEST_SPARK_ENV, "LAKEHOUSE_WAREHOUSE": str(tmp_path_factory.mktemp("wh"))})
    session = get_spark("lakehouse-tests", settings)
    yield session
    session.stop()


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


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)
