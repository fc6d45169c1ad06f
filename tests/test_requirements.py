"""The installed packages are the ones requirements.lock holds, which resolves what requirements.txt and
requirements-dev.txt pin, and they fit together."""

from __future__ import annotations

import re
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from include.config import PROJECT_ROOT, delta_package
from tests.helpers import REQUIREMENT_FILES, pinned_requirements

LOCK_FILE = "requirements.lock"


@pytest.mark.parametrize("requirement", pinned_requirements(), ids=str)
def test_installed_version_satisfies_requirements_txt(requirement):
    installed = metadata.version(requirement.name)
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{requirement.name} {installed} is installed but the requirements ask for {requirement}; run `make setup`"
    )


def test_the_stack_is_the_one_the_project_is_built_for():
    version = {name: Version(metadata.version(name)) for name in (
        "apache-airflow", "pyspark", "pyspark-client", "delta-spark", "great-expectations", "pandas")}
    assert version["apache-airflow"] == Version("3.3.2")
    assert version["pyspark"].release[:2] == (4, 2)
    assert version["pyspark-client"] == version["pyspark"], "the Spark provider's client must match pyspark"
    assert version["delta-spark"].release[:2] == (4, 4)
    assert version["great-expectations"] == Version("1.24.1"), "GX Core 1.24.1, which the gate is built on"
    assert version["pandas"].major < 3, "PySpark 4.2 does not support pandas 3"
    for provider in ("apache-airflow-providers-databricks", "apache-airflow-providers-apache-spark"):
        assert metadata.version(provider)


def test_every_requirement_is_pinned_to_a_version_or_range():
    for requirement in pinned_requirements():
        assert requirement.specifier, f"{requirement.name} has no version in its requirements file"


def test_delta_jar_coordinate_matches_the_installed_python_packages():
    coordinate = delta_package()
    assert re.fullmatch(r"io\.delta:delta-spark_4\.2_2\.13:4\.4\.\d+", coordinate), coordinate
    assert coordinate.endswith(metadata.version("delta-spark"))


def test_runtime_and_development_requirements_are_apart():
    runtime, development = ({requirement.name.lower() for requirement in pinned_requirements(name)}
                            for name in REQUIREMENT_FILES)
    assert not runtime & development, f"pinned in both files: {sorted(runtime & development)}"
    assert {"pytest", "ruff", "deptry"} <= development and not {"pytest", "ruff", "deptry"} & runtime


def locked() -> dict[str, list[Requirement]]:
    """requirements.lock's pins by package name (a package can have one pin per platform or Python version)."""
    pins: dict[str, list[Requirement]] = {}
    for line in (PROJECT_ROOT / LOCK_FILE).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            requirement = Requirement(line)
            pins.setdefault(_name(requirement.name), []).append(requirement)
    return pins


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_resolves_every_pin_of_the_requirement_files():
    """`make lock` after a change to requirements.txt or requirements-dev.txt: until then this fails."""
    pins = locked()
    for requirement in pinned_requirements():
        versions = [next(iter(pin.specifier)).version for pin in pins.get(_name(requirement.name), [])]
        assert versions, f"{requirement.name} is not in {LOCK_FILE}: run `make lock`"
        assert all(requirement.specifier.contains(version, prereleases=True) for version in versions), (
            f"{LOCK_FILE} holds {requirement.name} {versions}, where the requirements ask for {requirement}: "
            f"run `make lock`")


def test_every_locked_package_is_installed_at_its_locked_version():
    """`make setup` installs the lock: what this machine's Python needs of it is there, at its versions."""
    for pins in locked().values():
        wanted = [pin for pin in pins if pin.marker is None or pin.marker.evaluate()]
        if not wanted:
            continue  # another platform's or Python's
        (pin,) = wanted
        assert len(pin.specifier) == 1 and next(iter(pin.specifier)).operator == "==", pin
        installed = metadata.version(pin.name)
        assert pin.specifier.contains(installed, prereleases=True), (
            f"{pin.name} {installed} is installed, {LOCK_FILE} holds {pin}: run `make setup`")
