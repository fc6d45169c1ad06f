"""The project's code as one zip for a Spark cluster's executors (`spark-submit --py-files`).

The driver of a layer job runs where Airflow runs it and imports the checkout; the executors of a
cluster import what the application ships. The archive holds the Python packages the jobs import
(`include`, `spark_jobs`, `expectations`, without the sample data), is rebuilt only when their content
changes, and is named by that content, so concurrent tasks and later runs never see a half-written or
stale archive.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from pathlib import Path

from include.config import PROJECT_ROOT

PACKAGES = ("include", "spark_jobs", "expectations")
# Reference data and generated files stay out: executors need code and the suites' definitions.
SKIPPED_PARTS = {"__pycache__", "data"}
SUFFIXES = {".py", ".json", ".yml", ".yaml"}
# A fixed time stamp: the same files give the same archive, byte for byte.
EPOCH = (1980, 1, 1, 0, 0, 0)


def archived_files(root: Path = PROJECT_ROOT) -> list[Path]:
    files = []
    for package in PACKAGES:
        for path in (root / package).rglob("*"):
            relative = path.relative_to(root)
            if path.is_file() and path.suffix in SUFFIXES and not SKIPPED_PARTS & set(relative.parts[:-1]):
                files.append(relative)
    return sorted(files)


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
