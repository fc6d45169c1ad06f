"""The project's code as one zip for a Spark cluster's executors.

The driver of a layer job runs where Airflow runs it and imports the installed project; the executors of
a cluster import what the application ships: the zip as an archive (`spark.archives`), which each executor
unpacks into its working folder, on its Python workers' path (`spark.executorEnv.PYTHONPATH`). Not
`--py-files`, which in client mode puts the zip ahead of the installed package on the driver's path too.

The archive holds what the project's wheel holds (the packages and package data `pyproject.toml` selects:
the jobs, the suites and include/'s shared code, not the benchmark or the sample data), is rebuilt only
when their content changes, and is named by that content, so concurrent tasks and later runs never see a
half-written or stale archive.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import tempfile
import tomllib
import zipfile
from pathlib import Path

from include.config import PROJECT_ROOT

# A fixed time stamp: the same files give the same archive, byte for byte.
EPOCH = (1980, 1, 1, 0, 0, 0)


def _selection(root: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The package patterns and package data of pyproject.toml's setuptools configuration."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    return setuptools["packages"]["find"]["include"], setuptools.get("package-data", {})


def archived_files(root: Path = PROJECT_ROOT) -> list[Path]:
    patterns, package_data = _selection(root)
    files = []
    tops = sorted({pattern.split(".")[0] for pattern in patterns})
    for folder in sorted(init.parent for top in tops for init in (root / top).rglob("__init__.py")):
        package = ".".join(folder.relative_to(root).parts)
        if not any(fnmatch.fnmatchcase(package, pattern) for pattern in patterns):
            continue
        data = package_data.get(package, [])
        for path in folder.iterdir():
            if path.is_file() and (path.suffix == ".py" or any(fnmatch.fnmatchcase(path.name, d) for d in data)):
                files.append(path.relative_to(root))
    return sorted(files)


# The folder each executor unpacks the archive into, relative to its working folder.
EXECUTOR_FOLDER = "lakehouse_code"


def executor_conf(directory: Path, root: Path = PROJECT_ROOT) -> dict[str, str]:
    """The Spark settings that ship the archive of `root`'s packages (built in `directory`) to the executors."""
    return {"spark.archives": f"{build(directory, root)}#{EXECUTOR_FOLDER}",
            "spark.executorEnv.PYTHONPATH": EXECUTOR_FOLDER}


def build(directory: Path, root: Path = PROJECT_ROOT) -> Path:
    """The archive of `root`'s packages in `directory` (created if needed); its path."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for relative in archived_files(root):
            info = zipfile.ZipInfo(relative.as_posix(), date_time=EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, (root / relative).read_bytes(), zipfile.ZIP_DEFLATED)
    content = buffer.getvalue()
    target = directory / f"lakehouse-code-{hashlib.sha256(content).hexdigest()[:16]}.zip"
    if not target.exists():
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=directory, suffix=".zip.tmp")
        with os.fdopen(handle, "wb") as out:
            out.write(content)
        os.replace(temporary, target)
    return target
