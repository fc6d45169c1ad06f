"""Keep the Delta package's jars beside the installed packages, so that layer jobs start without resolving it.

    python -m include.tools.delta_jars     # `make setup` runs it; idempotent

`spark-submit --packages io.delta:delta-spark_...` has Ivy resolve the package's dependency tree at every
start of every layer job (37 modules, 33 jars: about 1.6 s of each job's start on a warm cache, more on
a busy machine). This resolves it once, with spark-submit's own resolver, copies the jars it chose into
the virtual environment (`<venv>/share/lakehouse-jars/<package>/`) and lists them in `jars.txt`; jobs
are then submitted with `--jars` (see `include.config.delta_jars`). Without that folder, or with a file
of it missing, jobs go on using `--packages`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from include.config import delta_jars, delta_jars_dir, delta_package

# Run under spark-submit: prints the jars spark-submit resolved for --packages (its `spark.jars`).
_PRINT_JARS = """
from pyspark import SparkConf, SparkContext
SparkContext._ensure_initialized()
print("lakehouse-jars:" + SparkConf().get("spark.jars", ""))
"""


def resolve() -> list[Path]:
    """The package's jars as spark-submit resolves them (from Maven Central, or Ivy's cache)."""
    with tempfile.TemporaryDirectory(prefix="lakehouse-jars-") as scratch:
        script = Path(scratch) / "print_jars.py"
        script.write_text(_PRINT_JARS)
        done = subprocess.run(["spark-submit", "--packages", delta_package(), str(script)],
                              capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("lakehouse-jars:")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"spark-submit could not resolve {delta_package()} (exit status {done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    jars = [Path(item.removeprefix("file:")) for item in lines[-1].removeprefix("lakehouse-jars:").split(",") if item]
    missing = [str(jar) for jar in jars if not jar.is_file()]
    if not jars or missing:
        raise RuntimeError(f"spark-submit resolved {delta_package()} to missing files: {', '.join(missing) or 'none'}")
    return jars


def install() -> list[str]:
    """The jars' paths in the virtual environment, fetched if they are not there yet."""
    current = delta_jars()
    if current:
        return current
    target = delta_jars_dir()
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    names = []
    for jar in resolve():
        shutil.copy2(jar, staging / jar.name)
        names.append(jar.name)
    (staging / "jars.txt").write_text("\n".join(names) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # a folder is there whole or not at all
    return delta_jars() or []


def main() -> int:
    jars = install()
    size = sum(Path(jar).stat().st_size for jar in jars)
    print(f"Delta jars: {len(jars)} files ({size / 2**20:.0f} MiB) of {delta_package()} in {delta_jars_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
