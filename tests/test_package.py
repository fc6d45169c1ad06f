"""The project as a Python package (pyproject.toml): the wheel a Databricks run installs holds the jobs, the
suites and include/'s shared code, and nothing of the benchmark, the sample data, the DAG or the tests; it
requires what requirements.txt pins and names the layers' entry points; and a layer's job file runs with the
wheel installed and nothing else of the checkout importable, as a Databricks run starts it."""

from __future__ import annotations

import email
import os
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from include.code_archive import archived_files
from include.config import PROJECT_ROOT
from include.databricks import wheel_name
from tests.conftest import TEST_SPARK_ENV, connect_server
from tests.helpers import ORDERS_HEADER, deliver, pinned_requirements

pytestmark = pytest.mark.xdist_group("package")

PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
LINES = ["536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",
         '536365,22633,"HAND WARMER, UNION JACK",6,2010-12-01 08:26:00,1.85,,United Kingdom',
         "536366,22632,HAND WARMER RED POLKA DOT,6,2010-12-01 08:28:00,1.85,17850.0,United Kingdom"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `make wheel` builds, built the same way from this checkout."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([str(Path(sys.executable).parent / "uv"), "build", "--quiet", "--wheel", "--out-dir",
                            str(out), str(PROJECT_ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = out.glob("*.whl")
    return path


def _wheel_metadata(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (member,) = [member for member in archive.namelist() if member.endswith(f".dist-info/{name}")]
        return archive.read(member).decode()


def test_the_wheel_holds_the_code_the_jobs_run_and_nothing_else(wheel):
    assert wheel.name == wheel_name(), "the Databricks runs ask for another file name"
    with zipfile.ZipFile(wheel) as archive:
        code = {name for name in archive.namelist() if ".dist-info/" not in name}
    # The executors of a Spark cluster get the same files (include/code_archive.py reads the same selection).
    assert code == {path.as_posix() for path in archived_files()}
    assert {"spark_jobs/bronze.py", "spark_jobs/transforms/gold.py", "expectations/gate.py",
            "expectations/silver.orders.yml", "include/config.py", "include/log4j2.properties"} <= code
    shipped_suites = {name for name in code if name.endswith(".yml")}
    assert shipped_suites == {f"expectations/{path.name}" for path in (PROJECT_ROOT / "expectations").glob("*.yml")}
    assert not [name for name in code if name.startswith(("include/bench/", "include/data/", "include/docker/",
                                                           "tests/", "dags/", "plugins/", "docs/"))]


def test_the_wheel_requires_what_requirements_txt_pins_and_names_the_layer_entry_points(wheel):
    message = email.message_from_string(_wheel_metadata(wheel, "METADATA"))
    requirements = [Requirement(line) for line in message.get_all("Requires-Dist")]
    # What installing the wheel installs; the `platform` and `dev` extras are requirements.txt's and
    # requirements-dev.txt's, for this machine.
    required = {requirement.name.lower(): requirement for requirement in requirements if requirement.marker is None}
    pins = {requirement.name.lower(): requirement for requirement in pinned_requirements("requirements.txt")}
    assert required, "the wheel requires nothing: a Databricks run would lack Great Expectations"
    assert set(message.get_all("Provides-Extra")) == {"platform", "dev"}
    platform = {requirement.name.lower() for requirement in requirements
                if requirement.marker and requirement.marker.evaluate({"extra": "platform"})}
    assert platform == set(pins), "the platform extra is not requirements.txt"
    for name, requirement in required.items():
        assert str(requirement.specifier) == str(pins[name].specifier), name
    assert "great-expectations" in required and "pyspark" not in required, "the runtime brings Spark"
    entry_points = _wheel_metadata(wheel, "entry_points.txt")
    for layer in ("bronze", "silver", "gold"):
        assert f"lakehouse-{layer} = spark_jobs.{layer}:main" in entry_points


def test_every_console_script_of_the_installed_project_loads():
    scripts = metadata.distribution("lakehouse").entry_points.select(group="console_scripts")
    assert {script.name for script in scripts} == set(PYPROJECT["project"]["scripts"])
    for script in scripts:
        assert callable(script.load()), script.name


def test_a_layer_job_file_runs_on_the_wheel_alone(wheel, tmp_path, lakehouse, spark):
    """What a Databricks run does: the wheel installed, the job file (the bundle's copy of
    spark_jobs/bronze.py) run as a script with the job's arguments. The wheel is unpacked ahead of everything
    on the path, the checkout's editable install is taken out of the import system, and the job runs outside
    the checkout: every module of the project it imports comes from the wheel."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    deliver(lakehouse, "orders", "2010-12-01", "day.csv", "\n".join([ORDERS_HEADER, *LINES]) + "\n")
    connect_server()
    script = f"""
import importlib.util, sys
from importlib.metadata import distribution
# This venv's editable install of the checkout answers for the project's packages after the path does: gone,
# as on a cluster that installed the wheel alone.
sys.meta_path[:] = [finder for finder in sys.meta_path if "__editable__" not in getattr(finder, "__module__", "")]
sys.path_hooks[:] = [hook for hook in sys.path_hooks if "__editable__" not in getattr(hook, "__module__", "")]
site = {str(site)!r}
import atexit, runpy
assert str(distribution("lakehouse").locate_file("")) == site
assert importlib.util.find_spec("include.bench") is None, "the benchmark shipped"
job = {str(PROJECT_ROOT / "spark_jobs" / "bronze.py")!r}


def imported_from_the_wheel():
    project = [module for name, module in list(sys.modules.items())
               if name.split(".")[0] in ("spark_jobs", "expectations", "include") and getattr(module, "__file__", None)]
    assert project and all(module.__file__.startswith(site + "/") for module in project), [
        module.__file__ for module in project if not module.__file__.startswith(site + "/")]
    print("project modules from the wheel:", len(project))


atexit.register(imported_from_the_wheel)
sys.path[0] = str(__import__("pathlib").Path(job).parent)  # as `python <job file>` sets it
sys.argv = [job, "--source", "orders", "--ingestion-date", "2010-12-01", "--run-id", "wheel-1"]
runpy.run_path(job, run_name="__main__")
"""
    env = {**os.environ, **TEST_SPARK_ENV, "PYTHONPATH": str(site),
           "LAKEHOUSE_LANDING": str(lakehouse.landing), "LAKEHOUSE_WAREHOUSE": str(lakehouse.warehouse),
           "LAKEHOUSE_GX_ROOT": str(lakehouse.gx_root)}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert "project modules from the wheel:" in done.stdout, done.stdout[-2000:]
    frame = spark.read.format("delta").load(lakehouse.table_path("bronze", "orders"))
    assert sorted(row.StockCode for row in frame.collect()) == ["22632", "22633", "85123A"]
    assert {row._run_id for row in frame.collect()} == {"wheel-1"}
    # The gate ran from the wheel's suites and wrote its Data Docs where the settings say.
    assert list((lakehouse.gx_root).rglob("*.html")), "no Data Docs: the gate did not run"
