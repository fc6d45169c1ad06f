"""Small builders for hand-written deliveries, and snapshots of what the jobs published."""

from __future__ import annotations

import gzip
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from include.config import PROJECT_ROOT
from include.sources import EVENTS, ORDERS, PUBLISHED_TABLES, SOURCES

ORDERS_HEADER = ORDERS.header
EVENTS_HEADER = EVENTS.header
REQUIREMENT_FILES = ("requirements.txt", "requirements-dev.txt")


def pinned_requirements(*names: str) -> list:
    """The requirements (`packaging` Requirements) of the files `names` (default: both requirement files)."""
    from packaging.requirements import Requirement

    lines = [line for name in names or REQUIREMENT_FILES for line in (PROJECT_ROOT / name).read_text().splitlines()]
    return [Requirement(line) for line in (line.split("#")[0].strip() for line in lines) if line]


def deliver(settings, source: str, day: str, name: str, content: str | bytes, compress: bool = False) -> Path:
    """Write one file into the landing folder of `source` for `day`, exactly as given."""
    folder = settings.landing_dir(source, day)
    folder.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    path = folder / name
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def gold_tables(spark, settings, source: str) -> dict[str, list[tuple]]:
    """Every gold mart of `source`, rows sorted."""
    from spark_jobs.transforms.gold import marts_of

    return {mart.table: sorted((tuple(row) for row in
                                spark.read.format("delta").load(settings.table_path("gold", mart.table)).collect()),
                               key=repr)
            for mart in marts_of(source)}


def published_tables(spark, warehouse: Path, source: str) -> dict[str, list[tuple]]:
    """Every table a source's layer jobs publish, rows sorted, without the columns that name the run
    (its id and time), which differ between two runs of the same data."""
    tables = {}
    for layer in ("bronze", "silver", "gold"):
        for table in PUBLISHED_TABLES[(layer, source)]:
            frame = spark.read.format("delta").load(str(warehouse / layer / table))
            frame = frame.drop(*[column for column in frame.columns
                                 if column.lstrip("_") in ("run_id", "ingested_at")])
            tables[f"{layer}.{table}"] = sorted((tuple(row) for row in frame.collect()), key=repr)
    return tables


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def own_server_env(home: Path, **settings: str) -> dict[str, str]:
    """The settings of a Spark Connect server of a test's own, beside the tests' shared one: its home, free
    ports and a small heap, `settings` on top (a token of its own, for clients that are processes given
    these settings; a client in the test process reads the shared server's from the environment)."""
    return {"LAKEHOUSE_CONNECT_HOME": str(home), "LAKEHOUSE_CONNECT_PORT": str(free_port()),
            "LAKEHOUSE_CONNECT_UI_PORT": str(free_port()), "LAKEHOUSE_CONNECT_MEMORY": "2g", **settings}


def airflow_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of an Airflow of the tests' own: its home, the project's DAGs and plugins, no
    examples, the virtualenv's `airflow` and `spark-submit` first on PATH, and `settings` on top."""
    environ = {name: value for name, value in os.environ.items() if name != "SPARK_CONNECT_MODE_ENABLED"}
    return {
        **environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        **settings,
    }


def prepare_airflow_db(env: dict[str, str]) -> None:
    """`make airflow-db`'s steps: the metadata database, then the pools and connections from code."""
    for step in (["airflow", "db", "migrate"], [sys.executable, "-m", "include.orchestration"]):
        done = subprocess.run(step, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def documented_columns() -> dict[str, list[str]]:
    """`layer.table` -> its columns, as docs/architecture.md's tables of bronze, silver and gold give them: the
    names in backquotes after the table's name (a mart's key first), "the source's columns" standing for the
    source's layout."""
    text = (PROJECT_ROOT / "docs" / "architecture.md").read_text()
    sections = re.split(r"^### ", text, flags=re.M)
    documented = {}
    for section in sections:
        if not re.match(r"(Bronze|Silver|Gold)\b", section):
            continue
        for row in re.findall(r"^\| `(?:bronze|silver|gold)/.*$", section, flags=re.M):
            cells = [cell.strip() for cell in row.strip("|").split(" | ")]
            tables = re.findall(r"`(\w+)/(\w+)`", cells[0])
            names = [name.strip() for quoted in re.findall(r"`([^`]+)`", " ".join(cells[1:]))
                     for name in quoted.split(",")]
            columns = list(dict.fromkeys(name for name in names if re.fullmatch(r"_?[a-z][a-z0-9_]*", name)))
            for layer, table in tables:
                source = SOURCES.get(table)
                prefix = list(source.columns) if source and "the source's columns" in cells[1] else []
                documented[f"{layer}.{table}"] = prefix + columns
    return documented
