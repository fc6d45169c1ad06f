"""docs/configuration.md is the list of include/tools/configuration.py, and that list is what the code reads."""

from __future__ import annotations

import re

import pytest

from include.config import (
    DEFAULT_MAX_QUARANTINE_SHARE,
    DEFAULT_STALE_AFTER_DAYS,
    DEFAULT_TASK_TIMEOUT_MINUTES,
    PROJECT_ROOT,
    Settings,
)
from include.databricks import DatabricksSettings
from include.tools import configuration
from include.tools.spark_cluster import Cluster

CODE = [path for folder in ("include", "spark_jobs", "dags", "plugins", "expectations", "tests")
        for path in (PROJECT_ROOT / folder).rglob("*.py")] + [PROJECT_ROOT / "Makefile", PROJECT_ROOT / ".ci" / "run"]
# Where a placeholder of a documented name stands for these values.
PLACEHOLDERS = {"<SOURCE>": list(DEFAULT_MAX_QUARANTINE_SHARE), "<LAYER>": list(DEFAULT_TASK_TIMEOUT_MINUTES)}


def _read_names() -> set[str]:
    """Every LAKEHOUSE_ name the code and tests spell out (an f-string's prefix ends in `_`), and the Databricks
    runtime's, which it reads as `get("<NAME>")` under LAKEHOUSE_DATABRICKS_."""
    names = set()
    for path in CODE:
        if path.name == "configuration.py" and path.parent.name == "tools":
            continue
        text = path.read_text()
        names |= set(re.findall(r"\bLAKEHOUSE_[A-Z0-9_]+", text))
        if path.name == "databricks.py":
            names |= {f"LAKEHOUSE_DATABRICKS_{name}" for name in re.findall(r'\bget\("([A-Z_]+)"', text)}
    names.discard("LAKEHOUSE_NAME")  # `--setting`'s metavar, LAKEHOUSE_NAME=VALUE
    names.discard("LAKEHOUSE_BAD")  # a malformed `--setting` a test gives
    names.discard("LAKEHOUSE_DATABRICKS_")  # the prefix the Databricks runtime's names are read under
    return names


def _documented(name: str) -> bool:
    for setting in configuration.SETTINGS:
        pattern = re.sub(r"<[A-Z]+>", "", setting.name)
        if name == setting.name or (pattern != setting.name and name.startswith(pattern)):
            return True
    return False


def test_the_page_is_generated_from_the_list():
    assert (PROJECT_ROOT / "docs" / "configuration.md").read_text() == configuration.page(), (
        "docs/configuration.md is behind include/tools/configuration.py: "
        "run `python -m include.tools.configuration --write`")


def test_every_setting_the_code_reads_is_documented():
    missing = sorted(name for name in _read_names() if not _documented(name))
    assert not missing, f"read by the code but not in include/tools/configuration.py: {missing}"


def test_every_documented_setting_is_read_by_the_code():
    read = _read_names() | {"AIRFLOW_HOME"}
    for setting in configuration.SETTINGS:
        prefix = re.sub(r"<[A-Z]+>", "", setting.name)
        assert any(name == setting.name or (prefix != setting.name and name.startswith(prefix)) for name in read), (
            f"{setting.name} is documented but nothing reads it")


def _expanded(setting) -> list[tuple[str, str]]:
    """The (name, value) pairs a documented default stands for: one per source or layer for a placeholder."""
    for placeholder, keys in PLACEHOLDERS.items():
        if placeholder in setting.name:
            defaults = {"LAKEHOUSE_MAX_QUARANTINE_SHARE_": DEFAULT_MAX_QUARANTINE_SHARE,
                        "LAKEHOUSE_TASK_TIMEOUT_MINUTES_": DEFAULT_TASK_TIMEOUT_MINUTES,
                        "LAKEHOUSE_STALE_AFTER_DAYS_": DEFAULT_STALE_AFTER_DAYS}[setting.name.replace(placeholder, "")]
            return [(setting.name.replace(placeholder, key.upper()), str(defaults[key])) for key in keys]
    return [(setting.name, setting.literal)] if setting.literal is not None else []


@pytest.mark.parametrize("setting", configuration.SETTINGS, ids=lambda setting: setting.name)
def test_a_documented_default_given_explicitly_changes_nothing(setting, monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)  # relative paths are the checkout's
    readers = [Settings.from_env, Cluster.from_env,
               lambda env: DatabricksSettings.from_env({"LAKEHOUSE_DATABRICKS_NODE_TYPE": "i3.xlarge", **env})]
    for name, value in _expanded(setting):
        assert all(read({name: value}) == read({}) for read in readers), (
            f"{name}={value!r} is documented as the default but changes what the code reads")
