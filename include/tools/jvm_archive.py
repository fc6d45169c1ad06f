"""A class data sharing archive of the Spark driver, so that every layer job's JVM starts with Spark's
classes already parsed and verified.

    python -m include.tools.jvm_archive     # `make jvm-archive` runs it; idempotent

Every layer job is a new JVM that loads some twenty thousand classes of Spark, Delta and their
libraries before it does any work; on two cores that is most of a small job's start-up. Java's class
data sharing keeps those classes, as loaded, in an archive the JVM maps at start. This runs a small
workload (a small generated events day through bronze, silver and gold, gates on)
under spark-submit with `-XX:ArchiveClassesAtExit`, and keeps the archive in the virtual environment
(`<venv>/share/lakehouse-jars/spark-driver-<pyspark version>.jsa`). `Settings.spark_conf` then gives
every driver `-XX:SharedArchiveFile=` that archive. Measured on a 2-core machine (one pair), the three
layer jobs of a 1,000-event day took 102.6 s with this archive against 112.5 s without, start-up
6.7-7.7 s a job against 8.9-11.0 s.

The archive belongs to this Java build and this pyspark's jars: a JVM of another build, or a changed
class path, ignores it (with a warning) and starts as before. Without the archive nothing changes.
It is written under a temporary name and renamed only once a JVM has started with it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from include.config import LOG4J_CONFIG, PROJECT_ROOT, Settings, delta_jars, driver_archive, driver_archive_path

WORKLOAD_DAY = date(2019, 10, 1)


def _workload(root: Path) -> None:
    """Run inside the archiving JVM's driver: a small events day through the three layers, as the jobs run it
    (the orders jobs use the same classes but for a few of their dimensions' and marts' plans)."""
    from include.sources import EVENTS
    from include.spark import get_spark
    from include.tools import generate_events
    from spark_jobs.bronze import run_bronze
    from spark_jobs.gold import run_gold
    from spark_jobs.silver import run_silver

    # The archive is of a spark-submit driver, the JVM of the `local` and `spark` runtimes: this one runs the jobs.
    settings = Settings.from_env({"LAKEHOUSE_RUNTIME": "local", "LAKEHOUSE_LANDING": str(root / "landing"),
                                  "LAKEHOUSE_WAREHOUSE": str(root / "warehouse"), "LAKEHOUSE_GATES": "false"})
    generate_events.main(["--from", WORKLOAD_DAY.isoformat(), "--days", "1", "--events-per-day", "500",
                          "--defect-rate", "0.02", "--landing", str(settings.landing)])
    spark = get_spark("lakehouse-class-archive", settings)
    for run in (run_bronze, run_silver, run_gold):
        run(spark, settings, EVENTS, WORKLOAD_DAY, "class-archive")
    spark.stop()


def build(target: Path) -> Path:
    """Run the workload under an archiving JVM and keep the archive at `target`."""
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    jars = delta_jars()
    if not jars:
        raise RuntimeError("the Delta jars are not in the venv yet: run `python -m include.tools.delta_jars` first")
    settings = Settings.from_env({"LAKEHOUSE_RUNTIME": "local", "LAKEHOUSE_SPARK_MASTER": "local[2]",
                                  "LAKEHOUSE_SPARK_UI": "false"})
    conf = {key: value for key, value in settings.spark_conf().items()
            if key not in ("spark.driver.memory", "spark.driver.extraJavaOptions")}
    conf["spark.driver.extraJavaOptions"] = f"-Dlog4j.configurationFile=file:{LOG4J_CONFIG} " \
                                            f"-XX:ArchiveClassesAtExit={partial}"
    with tempfile.TemporaryDirectory(prefix="lakehouse-class-archive-") as scratch:
        command = ["spark-submit", "--master", settings.spark_master, "--jars", ",".join(jars),
                   "--driver-memory", settings.driver_memory]
        for key, value in conf.items():
            command += ["--conf", f"{key}={value}"]
        command += [str(Path(__file__).resolve()), "--workload", scratch]
        done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT,
                              env={**os.environ, "PYSPARK_PYTHON": sys.executable})
        if done.returncode != 0 or not partial.is_file():
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"the archiving run failed (exit status {done.returncode}):\n{done.stdout[-2000:]}"
                               f"\n{done.stderr[-2000:]}")
    # A JVM must start with it (-Xshare:on fails instead of ignoring an archive it cannot use).
    check = subprocess.run(["spark-submit", "--driver-java-options", f"-XX:SharedArchiveFile={partial} -Xshare:on",
                            "--version"], capture_output=True, text=True)
    if check.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"a JVM could not start with the new archive:\n{check.stderr[-2000:]}")
    partial.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", type=Path, help=argparse.SUPPRESS)  # inside the archiving JVM
    parser.add_argument("--force", action="store_true", help="build the archive again even if there is one")
    args = parser.parse_args(argv)
    if args.workload:
        _workload(args.workload)
        return 0
    target = driver_archive_path()
    if driver_archive() and not args.force:
        print(f"Spark driver class archive: {target} (already there)")
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    build(target)
    print(f"Spark driver class archive: {target} ({target.stat().st_size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
