"""The one place that decides where things are and how Spark runs.

DAGs, Spark jobs, tools and tests ask `get_settings()`; nothing else hard-codes a path. Every value
comes from the environment with a default that keeps everything inside the checkout: every setting, its
default and what it does is in docs/configuration.md, generated from include/tools/configuration.py
(tests/test_configuration.py fails when that list and this module disagree).

`make setup` keeps the Delta jars in the venv, and `make jvm-archive` (for the runtimes that start a JVM per job,
the tests and the benchmark) a class data sharing archive of the Spark driver
(`delta_jars`, `driver_archive`): jobs start with `--jars` and `-XX:SharedArchiveFile`.

Short-lived JVMs on small deliveries spend much of their CPU compiling Java bytecode: the quick
compiler only (`-XX:TieredStopAtLevel=1`) helps them, while a long-running session or a large day is
slower with it. So a layer job of a delivery up to LAKEHOUSE_QUICK_COMPILER_MB starts its JVMs with it
(`Settings.quick_compiler`), and LAKEHOUSE_SPARK_JAVA_OPTIONS="-XX:TieredStopAtLevel=1" gives it to
every job.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from importlib import metadata
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

LAYERS = ("bronze", "silver", "gold")
RUNTIMES = ("connect", "local", "spark", "databricks")

# The real order days the repository ships (a few weeks of the UCI Online Retail data set).
SAMPLE_ORDERS_DIR = PROJECT_ROOT / "include" / "data" / "online-retail" / "by-day"

LOG4J_CONFIG = PROJECT_ROOT / "include" / "log4j2.properties"
# The Spark Connect server's scheduler pools: one fair pool, so that the jobs of concurrent dates share the cores.
FAIR_SCHEDULER_CONFIG = PROJECT_ROOT / "include" / "spark-fairscheduler.xml"

# Delta Lake in every Spark session the jobs use.
DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}

# The share of a date's bronze rows silver may quarantine before the date is refused. Of the 305
# real order days, half quarantine under 1.2%, 97% under 4.3%, the highest two 5.9% - and one, 22%
# (2010-12-22: zero-price stock adjustments), which is the kind of day an owner should look at first.
# Generated event days quarantine their defect rate (2% in the benchmarks).
DEFAULT_MAX_QUARANTINE_SHARE = {"orders": 0.10, "events": 0.05}

# How long a layer job may run before Airflow stops it (and retries it, as any other failure): far beyond what
# a day of the benchmark's size takes, short enough that a hung job does not hold its layer's pool for a day.
DEFAULT_TASK_TIMEOUT_MINUTES = {"bronze": 60, "silver": 120, "gold": 120}
# After this many days without a delivery a source's run fails loudly instead of skipping it (0: never). The
# shop of the order sample was closed twelve days at most (2010-12-23 to 2011-01-04); clicks come every day.
DEFAULT_STALE_AFTER_DAYS = {"orders": 14, "events": 3}

# The JVM option of jobs on small deliveries: the quick compiler (C1) only, no optimising compiler.
QUICK_COMPILER = "-XX:TieredStopAtLevel=1"

# Tables that are not business tables but book-keeping of the layer that owns them.
INGESTED_FILES_TABLE = ("bronze", "ingested_files")


class ConfigurationError(ValueError):
    """The lakehouse is set up wrongly (a setting, a suite file, a job's command line), not its data: running
    the job again changes nothing until someone fixes the configuration. Layer jobs exit with
    CONFIGURATION_EXIT_STATUS on it, and the DAG's tasks fail without retries, saying so."""


# A layer job's exit status for a configuration error (2 is refused input: spark_jobs/common.py).
CONFIGURATION_EXIT_STATUS = 3


def _flag(value: str) -> bool:
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"expected true or false, got {value!r}")


@dataclass(frozen=True)
class Settings:
    landing: Path
    warehouse: Path
    airflow_home: Path
    runtime: str = "connect"
    spark_master: str = "local[*]"
    driver_memory: str = "2g"
    shuffle_partitions: int = 4
    spark_ui: bool = True
    java_options: str = ""
    quick_compiler_bytes: int = 16 * 1024 * 1024
    executor_memory: str = "1g"
    cores_max: int | None = None
    catalog: str | None = None
    gx_root: Path | None = None
    data_docs: Path | None = None
    max_quarantine_share: Mapping[str, float] | None = None
    gates: bool = True
    start_date: date = date(2010, 12, 1)
    catchup: bool = False
    max_active_runs: int = 3
    task_retries: int = 2
    connect_port: int = 15002
    connect_ui_port: int = 4040
    connect_memory: str = "8g"
    connect_home: Path | None = None
    connect_conn_id: str = "spark_connect_default"
    task_timeout_minutes: Mapping[str, int] | None = None  # per layer: a job running longer is stopped
    stale_after_days: Mapping[str, int] | None = None  # per source: days without a delivery before runs fail
    alert_conn_id: str | None = None  # an Airflow connection that failures are posted to (http) or mailed by (smtp)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def path(name: str, default: Path) -> Path:
            value = env.get(name)
            return Path(value).expanduser().resolve() if value else default

        runtime = env.get("LAKEHOUSE_RUNTIME", "connect") or "connect"
        if runtime not in RUNTIMES:
            raise ConfigurationError(f"LAKEHOUSE_RUNTIME={runtime!r}: expected one of {', '.join(RUNTIMES)}")
        def read(name: str, default: str, parse):
            value = env.get(name, default)
            try:
                return parse(value if value != "" else default)
            except ValueError as error:
                raise ConfigurationError(f"{name}={value!r}: {error}") from None

        partitions = read("LAKEHOUSE_SHUFFLE_PARTITIONS", "4", int)
        gates = read("LAKEHOUSE_GATES", "true", _flag)
        spark_ui = read("LAKEHOUSE_SPARK_UI", "true", _flag)
        catchup = read("LAKEHOUSE_CATCHUP", "false", _flag)
        start_date = read("LAKEHOUSE_START_DATE", "2010-12-01", date.fromisoformat)
        max_active_runs = read("LAKEHOUSE_MAX_ACTIVE_RUNS", "3", int)
        task_retries = read("LAKEHOUSE_TASK_RETRIES", "2", int)
        cores_max = read("LAKEHOUSE_SPARK_CORES_MAX", "", lambda value: int(value) if value else None)
        connect_port = read("LAKEHOUSE_CONNECT_PORT", "15002", int)
        connect_ui_port = read("LAKEHOUSE_CONNECT_UI_PORT", "4040", int)
        quick_compiler_mb = env.get("LAKEHOUSE_QUICK_COMPILER_MB", "16")
        try:
            quick_compiler_bytes = int(float(quick_compiler_mb) * 1024 * 1024)
        except (ValueError, OverflowError):
            quick_compiler_bytes = -1
        if quick_compiler_bytes < 0:
            raise ConfigurationError(f"LAKEHOUSE_QUICK_COMPILER_MB={quick_compiler_mb!r}: expected 0 or more megabytes")
        if max_active_runs < 1 or task_retries < 0:
            raise ConfigurationError(f"LAKEHOUSE_MAX_ACTIVE_RUNS={max_active_runs} must be at least 1 and "
                             f"LAKEHOUSE_TASK_RETRIES={task_retries} at least 0")
        warehouse = path("LAKEHOUSE_WAREHOUSE", PROJECT_ROOT / "data" / "warehouse")
        gx_root = path("LAKEHOUSE_GX_ROOT", warehouse.parent)
        shares = {}
        for source, default in DEFAULT_MAX_QUARANTINE_SHARE.items():
            name = f"LAKEHOUSE_MAX_QUARANTINE_SHARE_{source.upper()}"
            try:
                shares[source] = float(env.get(name, default))
            except ValueError:
                raise ConfigurationError(f"{name}={env[name]!r}: expected a share between 0 and 1") from None
            if not 0 <= shares[source] <= 1:
                raise ConfigurationError(f"{name}={env[name]!r}: expected a share between 0 and 1")
        timeouts = {layer: read(f"LAKEHOUSE_TASK_TIMEOUT_MINUTES_{layer.upper()}", str(default), int)
                    for layer, default in DEFAULT_TASK_TIMEOUT_MINUTES.items()}
        stale = {source: read(f"LAKEHOUSE_STALE_AFTER_DAYS_{source.upper()}", str(default), int)
                 for source, default in DEFAULT_STALE_AFTER_DAYS.items()}
        if min(timeouts.values()) < 1 or min(stale.values()) < 0:
            raise ConfigurationError("LAKEHOUSE_TASK_TIMEOUT_MINUTES_<LAYER> must be at least 1 and "
                                     "LAKEHOUSE_STALE_AFTER_DAYS_<SOURCE> at least 0 (0: never)")
        return cls(
            task_timeout_minutes=timeouts,
            stale_after_days=stale,
            alert_conn_id=env.get("LAKEHOUSE_ALERT_CONN_ID", "").strip() or None,
            landing=path("LAKEHOUSE_LANDING", PROJECT_ROOT / "data" / "landing"),
            warehouse=warehouse,
            gx_root=gx_root,
            data_docs=path("LAKEHOUSE_DATA_DOCS", gx_root / "data-docs"),
            max_quarantine_share=shares,
            gates=gates,
            start_date=start_date,
            catchup=catchup,
            max_active_runs=max_active_runs,
            task_retries=task_retries,
            airflow_home=path("AIRFLOW_HOME", PROJECT_ROOT / ".airflow"),
            runtime=runtime,
            spark_master=env.get("LAKEHOUSE_SPARK_MASTER", "local[*]"),
            driver_memory=env.get("LAKEHOUSE_SPARK_DRIVER_MEMORY", "2g"),
            shuffle_partitions=partitions,
            spark_ui=spark_ui,
            java_options=env.get("LAKEHOUSE_SPARK_JAVA_OPTIONS", "").strip(),
            quick_compiler_bytes=quick_compiler_bytes,
            executor_memory=env.get("LAKEHOUSE_SPARK_EXECUTOR_MEMORY", "1g"),
            cores_max=cores_max,
            catalog=_catalog(env.get("LAKEHOUSE_CATALOG", "")),
            connect_port=connect_port,
            connect_ui_port=connect_ui_port,
            connect_memory=env.get("LAKEHOUSE_CONNECT_MEMORY", "8g"),
            connect_home=path("LAKEHOUSE_CONNECT_HOME", PROJECT_ROOT / ".spark-connect"),
            connect_conn_id=env.get("LAKEHOUSE_CONNECT_CONN_ID", "spark_connect_default") or "spark_connect_default",
        )

    @property
    def spark_conn_id(self) -> str:
        """The Airflow connection whose master the jobs are submitted to."""
        return "spark_default" if self.runtime == "spark" else "spark_local"

    def landing_dir(self, source: str, ingestion_date: date | str) -> Path:
        """The folder that holds one source's delivery for one ingestion date."""
        return self.landing / source / _iso(ingestion_date)

    def table_path(self, layer: str, table: str) -> str:
        if layer not in LAYERS:
            raise ConfigurationError(f"unknown layer {layer!r}; layers are {', '.join(LAYERS)}")
        return str(self.warehouse / layer / table)

    def table_location(self, layer: str, table: str) -> str:
        """Where the jobs find a table: `<catalog>.<layer>.<table>` with LAKEHOUSE_CATALOG set, else its path."""
        if self.catalog:
            if layer not in LAYERS:
                raise ConfigurationError(f"unknown layer {layer!r}; layers are {', '.join(LAYERS)}")
            return f"{self.catalog}.{layer}.{table}"
        return self.table_path(layer, table)

    def session_conf(self) -> dict[str, str]:
        """The SQL settings a job's session runs with: set when the session is built here or by spark-submit,
        and by each job's session on the Spark Connect server (which serves sessions with other settings)."""
        return {
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.shuffle.partitions": str(self.shuffle_partitions),
            # HotSpot does not compile a method over 8,000 bytes of bytecode: it runs interpreted. Silver's
            # rules on the events columns make one such stage, interpreted unless Spark generates code per
            # operator instead; Spark's docs suggest 8000 on HotSpot.
            "spark.sql.codegen.hugeMethodLimit": "8000",
            # Delta rebuilds table state with 50 tasks by default: pure overhead for small tables.
            "spark.databricks.delta.snapshotPartitions": str(self.shuffle_partitions),
        }

    def spark_conf(self, quick: bool = False) -> dict[str, str]:
        """Spark settings for every job, whether the session is built here or by spark-submit (`quick`:
        a job `quick_compiler` says yes to)."""
        return {
            **DELTA_CONF,
            **self.session_conf(),
            "spark.ui.enabled": str(self.spark_ui).lower(),
            "spark.ui.showConsoleProgress": "false",
            "spark.driver.memory": self.driver_memory,
            "spark.driver.extraJavaOptions": " ".join(self.driver_java_options(quick)),
        }

    def connect_server_conf(self) -> dict[str, str]:
        """The Spark Connect server's settings (include/tools/spark_connect.py): Delta, 127.0.0.1 only, the fair
        scheduler between the sessions of concurrent dates, its UI without kill links, the full JIT."""
        home = self.connect_home or PROJECT_ROOT / ".spark-connect"
        return {
            **DELTA_CONF,
            **self.session_conf(),
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(self.connect_port),
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.ui.enabled": "true",
            "spark.ui.port": str(self.connect_ui_port),
            "spark.ui.killEnabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.scheduler.mode": "FAIR",
            "spark.scheduler.allocation.file": str(FAIR_SCHEDULER_CONFIG),
            "spark.local.dir": str(home / "scratch"),
            # Shuffle files, broadcasts and the frames a finished session kept (local checkpoints) go when the
            # driver's garbage collector finds them unreferenced: a server shared by every date's jobs looks
            # every minute, not Spark's 30. The collection Spark asks for is a full one: a concurrent one
            # (-XX:+ExplicitGCInvokesConcurrent) left an ended session's rows stored on an idle server.
            "spark.cleaner.periodicGC.interval": "1min",
            # Client sessions share the server's class loader (include/connect_server.py says why), so the
            # classes Spark generates for one task's queries serve the next task's. The cache holds those of
            # every layer and source (several hundred) and the few each date adds, where Spark's default keeps 100.
            "spark.sql.artifact.isolation.enabled": "false",
            "spark.sql.codegen.cache.maxEntries": "4000",
            "spark.driver.extraJavaOptions": " ".join(
                [f"-Dlog4j.configurationFile=file:{LOG4J_CONFIG}",
                 *([self.java_options] if self.java_options else [])]),
        }

    def driver_java_options(self, quick: bool = False) -> list[str]:
        """The driver JVM's options: the project's log settings, the class archive `make jvm-archive` keeps
        (a driver that cannot use it starts without it), then `jvm_options`."""
        options = [f"-Dlog4j.configurationFile=file:{LOG4J_CONFIG}"]
        archive = driver_archive()
        if archive and "SharedArchiveFile" not in self.java_options and self.runtime != "databricks":
            options.append(f"-XX:SharedArchiveFile={archive}")
        return options + self.jvm_options(quick)

    def jvm_options(self, quick: bool = False) -> list[str]:
        """LAKEHOUSE_SPARK_JAVA_OPTIONS for the driver and executors, and with `quick` the quick compiler
        only. With it (`-XX:TieredStopAtLevel=1`) the JVM reserves a 48 MB code cache, which a silver job of
        a concurrent backfill filled (the JVM then fails to make call adapters: a failed task); such JVMs
        keep the 240 MB the JVM reserves with both compilers, unless the options set their own size."""
        options = [self.java_options] if self.java_options else []
        if quick and "TieredStopAtLevel" not in self.java_options:
            options.append(QUICK_COMPILER)
        joined = " ".join(options)
        if "TieredStopAtLevel" in joined and "ReservedCodeCacheSize" not in joined:
            options.append("-XX:ReservedCodeCacheSize=240m")
        return options

    def quick_compiler(self, source: str, ingestion_date: date | str, arguments: Sequence[str] = ()) -> bool:
        """Whether the layer job of this source and date (with these job arguments) starts its JVMs with the
        quick compiler only: its delivery, the date's landing files, holds at most
        LAKEHOUSE_QUICK_COMPILER_MB on disk. Such a job is mostly fixed cost, compiling bytecode that runs
        a few times; a large day, or a full refresh of the marts from all of silver, runs long enough for
        the optimising compiler to pay. Not on Databricks (the cluster's JVMs are the cluster's), nor when
        LAKEHOUSE_SPARK_JAVA_OPTIONS chooses the compilers itself."""
        from include.landing import list_delivery

        if self.runtime == "databricks" or not self.quick_compiler_bytes or "TieredStopAtLevel" in self.java_options:
            return False
        arguments = list(arguments)
        if "--refresh" in arguments[:-1] and arguments[arguments.index("--refresh") + 1] == "full":
            return False
        folder = self.landing_dir(source, ingestion_date)
        if not folder.is_dir():
            return False
        files, _ = list_delivery(folder)  # what bronze reads; other entries are ignored there too
        return sum(path.stat().st_size for path in files) <= self.quick_compiler_bytes

    def submit_conf(self, quick: bool = False) -> dict[str, str]:
        """The --conf settings of a layer job's spark-submit: every Spark setting but the driver's heap (a
        spark-submit option of its own), and on a Spark cluster the executors' heap, cores and JVM options
        (executors are short-lived JVMs too). `quick`: as `quick_compiler` says for the job."""
        conf = {key: value for key, value in self.spark_conf(quick).items() if key != "spark.driver.memory"}
        if self.runtime == "spark":
            conf["spark.executor.memory"] = self.executor_memory
            if self.cores_max:
                conf["spark.cores.max"] = str(self.cores_max)
            if self.jvm_options(quick):
                conf["spark.executor.extraJavaOptions"] = " ".join(self.jvm_options(quick))
        return conf


def spark_submit_command(settings: Settings, layer: str, arguments: list[str], name: str,
                         conf: dict[str, str] | None = None, quick: bool = False) -> list[str]:
    """The spark-submit command line of a layer job on local Spark, as the DAG's LayerJobOperator submits it
    (the Spark provider builds that one from the same settings: the Delta jars, or the package where they
    are not kept, every Spark setting but the driver's heap as --conf, the heap as --driver-memory). The
    benchmark runs jobs with it, `quick` as `Settings.quick_compiler` says."""
    options = {**settings.submit_conf(quick), **(conf or {})}
    command = ["spark-submit", "--master", settings.spark_master]
    for key, value in options.items():
        command += ["--conf", f"{key}={value}"]
    jars = delta_jars()
    command += ["--jars", ",".join(jars)] if jars else ["--packages", delta_package()]
    return [*command, "--name", name, "--driver-memory", settings.driver_memory,
            str(PROJECT_ROOT / "spark_jobs" / f"{layer}.py"), *arguments]


def _catalog(value: str) -> str | None:
    value = value.strip()
    if value and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ConfigurationError(f"LAKEHOUSE_CATALOG={value!r}: expected a catalog name (letters, digits, underscores)")
    return value or None


def get_settings() -> Settings:
    return Settings.from_env()


def delta_package() -> str:
    """Maven coordinate of the Delta jar that matches the installed delta-spark and pyspark."""
    spark_minor = ".".join(metadata.version("pyspark").split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{metadata.version('delta-spark')}"


def delta_jars_dir() -> Path:
    """Where `make setup` keeps the jars of `delta_package()` (include/tools/delta_jars.py)."""
    return Path(sys.prefix) / "share" / "lakehouse-jars" / delta_package().replace(":", "_")


def driver_archive_path() -> Path:
    """Where `make jvm-archive` keeps the Spark driver's class data sharing archive (include/tools/jvm_archive.py)."""
    return Path(sys.prefix) / "share" / "lakehouse-jars" / f"spark-driver-{metadata.version('pyspark')}.jsa"


def driver_archive() -> Path | None:
    """The driver's class archive when `make jvm-archive` made one here, else None."""
    path = driver_archive_path()
    return path if path.is_file() else None


def delta_jars() -> list[str] | None:
    """The jars of `delta_package()` kept in the virtual environment, or None when they are not all there
    (jobs then name the package, and Spark resolves it at their start)."""
    folder = delta_jars_dir()
    try:
        names = (folder / "jars.txt").read_text().split()
    except OSError:
        return None
    jars = [folder / name for name in names]
    return [str(jar) for jar in jars] if names and all(jar.is_file() for jar in jars) else None


def _iso(value: date | str) -> str:
    return value.isoformat() if isinstance(value, date) else date.fromisoformat(value).isoformat()
