"""The lakehouse benchmark: how fast each layer is, at what cost, against DuckDB on the same input.

    make bench                                     # the defaults below
    python -m include.bench --events-per-day 200000 --days 2 --growth-events-per-day 20000

Every figure comes from running the layers as the DAG runs them: one spark-submit per layer, source
and ingestion date, with the job files and settings of a local `lakehouse_daily` run (the command of
`include.config.spark_submit_command`). Nothing is timed inside a job but what the job reports of
itself (its start-up, its work and its quality gate, from the `lakehouse job result:` line every layer
job logs).

Phases, each optional (`--skip`):

- `layers`: generated event days (`--events-per-day`, default 2,000,000, 2% defects, `--days` 3) and
  the first real order days (`--order-days`, 3), each day through bronze, silver and gold. Per layer:
  wall seconds, delivered lines per second, the gate's seconds and share, the peak resident memory of
  the Spark driver (the JVM, and the JVM with the job's Python process), the Delta files the job wrote
  and their bytes.
- `reference`: DuckDB (include/bench/reference.py) doing the same bronze -> silver -> gold work on
  the same files, timed per layer; our seconds divided by DuckDB's, per layer and end to end, and every
  gold mart compared row for row.
- `refresh`: a full refresh of each source's gold marts after the last day, against the sum of the
  incremental gold runs.
- `growth`: the cost of day N+1 after 1, 10 and 30 days of history (`--growth-events-per-day`, default
  100,000): history days run in one Spark session in this process (the same functions, no start-up per
  job), the measured days 2, 11 and 31 as spark-submit jobs like every other figure.
- `fixed`: one `airflow dags test lakehouse_daily` run of a tiny events delivery (`--tiny-events`,
  1,000), split into Spark start-up, work, Spark shut-down and Airflow's own time.

The report is printed as Markdown and written, with the machine (cores, memory, versions) and every
raw figure, to `--out` (default bench-results/, kept out of git) as report.md and report.json. The
targets of the benchmark issue are checked at the end: end to end at most 6 times DuckDB's time, day
31 at most 1.25 times day 2, each gate at most 25% of its layer, a tiny run under 60 s.

Everything the benchmark writes (landing zone, warehouse, GX project, Airflow home) lives under
--root (default: a new temporary folder), never the project's own data/ folders. `--against` an earlier
run's report.json adds a table of this run's figures beside that run's (before and after a change).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import metadata
from pathlib import Path

from include.config import LAYERS, PROJECT_ROOT, SAMPLE_ORDERS_DIR, Settings, spark_submit_command
from include.sources import EVENTS, ORDERS
from include.tools import generate_events, stage_orders
from spark_jobs.common import RESULT_MARK

PHASES = ("layers", "reference", "refresh", "growth", "fixed", "backfill")
RUNTIMES = ("connect", "local")
RUNTIME_WORDS = {"connect": "layer jobs as clients of one long-running Spark Connect server",
                 "local": "one spark-submit, one JVM, per layer job"}
JOB_WORDS = {"connect": "Connect client process", "local": "spark-submit"}
EVENTS_START = date(2019, 10, 1)
GROWTH_DAYS = (2, 11, 31)  # day N+1 after 1, 10 and 30 days of history
# The targets: end to end against DuckDB, day 31 against day 2, the gates' share, a one-date run of a tiny events
# delivery and a real order day, and a backfill of real order days through a running Airflow, per date.
TARGET_RATIO, TARGET_GROWTH, TARGET_GATE_SHARE, TARGET_TINY_SECONDS = 6.0, 1.25, 0.25, 20.0
TARGET_BACKFILL_SECONDS = 10.0
# A scheduler without a heartbeat this long has died (`airflow standalone` does not start it again): the
# backfill phase stops instead of waiting out its six hours.
SCHEDULER_GRACE_SECONDS = 120


def log(message: str) -> None:
    """Progress, on stderr: the report goes to stdout."""
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --- one layer job ---------------------------------------------------------------------------------

@dataclass
class JobFigures:
    layer: str
    source: str
    day: str
    wall_seconds: float
    startup_seconds: float  # spark-submit started -> Spark session ready
    work_seconds: float  # session ready -> the job's work done (the gate included)
    validation_seconds: float
    jvm_peak_bytes: int
    driver_peak_bytes: int  # the JVM and the job's Python process together
    files_written: int
    bytes_written: int
    delivered_lines: int = 0
    result: object = None
    quick_compiler: bool = False  # the JVM compiled with the quick compiler only (a small delivery)

    @property
    def shutdown_seconds(self) -> float:
        return max(self.wall_seconds - self.startup_seconds - self.work_seconds, 0.0)


class PeakMemory:
    """Samples the resident memory of a process and its children until stopped; the peaks."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        import psutil

        self._process = psutil.Process(pid)
        self._every = every
        self.own = self.tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                own = self._process.memory_info().rss
                children = sum(child.memory_info().rss for child in self._process.children(recursive=True))
            except psutil.Error:
                own = children = 0
            self.own, self.tree = max(self.own, own), max(self.tree, own + children)
            self._stop.wait(self._every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _files_under(folder: Path) -> dict[str, int]:
    """Data files of the Delta tables under a layer's folder (not their logs), with their sizes."""
    if not folder.is_dir():
        return {}
    return {str(path): path.stat().st_size for path in folder.rglob("*.parquet") if "_delta_log" not in path.parts}


def job_reports(text: str) -> list[dict]:
    """The `lakehouse job result:` reports in a job's output, or in an Airflow log that quotes it (with
    Airflow's own words after it on the line)."""
    decoder, reports = json.JSONDecoder(), []
    for line in text.splitlines():
        at = line.find(RESULT_MARK)
        if at >= 0:
            start = at + len(RESULT_MARK)
            reports.append(decoder.raw_decode(line, len(line) - len(line[start:].lstrip()))[0])
    return reports


def run_job(settings: Settings, env: dict[str, str], layer: str, source: str, day: date, log_dir: Path,
            options: list[str] | None = None, label: str = "") -> JobFigures:
    """One layer job under spark-submit, as the DAG submits it; its figures. Fails on a non-zero exit."""
    name = f"{layer}-{source}-{day}"
    arguments = ["--source", source, "--ingestion-date", day.isoformat(), "--run-id", f"bench__{name}{label}",
                 *(options or [])]
    if settings.runtime == "connect":
        # A client of the Connect server, as a layer task is: the job file in a Python process, no JVM.
        quick = False
        command = [sys.executable, str(PROJECT_ROOT / "spark_jobs" / f"{layer}.py"), *arguments]
    else:
        quick = settings.quick_compiler(source, day, arguments)
        command = spark_submit_command(settings, layer, arguments, name, quick=quick)
    before = _files_under(settings.warehouse / layer)
    log_path = log_dir / f"{name}{label}.log"
    started = time.time()
    with open(log_path, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT)
        memory = PeakMemory(process.pid)
        code = process.wait()
        memory.stop()
    wall = time.time() - started
    text = log_path.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"{name} failed with exit status {code}; its log: {log_path}\n{text[-3000:]}")
    found = job_reports(text)
    if not found:
        raise RuntimeError(f"{name} logged no 'lakehouse job result:' line; its log: {log_path}")
    report = found[-1]
    after = _files_under(settings.warehouse / layer)
    new = {path: size for path, size in after.items() if path not in before}
    result = report["result"]
    validation = (sum(mart["validation_seconds"] for mart in result) if isinstance(result, list)
                  else result["validation_seconds"])
    return JobFigures(layer, source, day.isoformat(), wall, report["session_ready_at"] - started,
                      report["finished_at"] - report["session_ready_at"], validation, memory.own, memory.tree,
                      len(new), sum(new.values()), result=result, quick_compiler=quick)


# --- the phases ------------------------------------------------------------------------------------

def _settings(root: Path) -> Settings:
    return Settings.from_env({**os.environ, "LAKEHOUSE_LANDING": str(root / "landing"),
                              "LAKEHOUSE_WAREHOUSE": str(root / "warehouse"),
                              "LAKEHOUSE_GX_ROOT": str(root), "LAKEHOUSE_DATA_DOCS": str(root / "data-docs"),
                              "LAKEHOUSE_SPARK_UI": "false"})


def _job_env(settings: Settings) -> dict[str, str]:
    """The jobs' environment: this one (its Spark settings too), with the benchmark's folders."""
    env = dict(os.environ)
    env.update({"LAKEHOUSE_LANDING": str(settings.landing), "LAKEHOUSE_WAREHOUSE": str(settings.warehouse),
                "LAKEHOUSE_GX_ROOT": str(settings.gx_root), "LAKEHOUSE_DATA_DOCS": str(settings.data_docs),
                "LAKEHOUSE_SPARK_UI": "false", "PYSPARK_PYTHON": env.get("PYSPARK_PYTHON", sys.executable)})
    # The venv's spark-submit and python first, as under make.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _lines(settings: Settings, source: str, day: date) -> int:
    """Data lines delivered for a source and date (what bronze must account for)."""
    import gzip

    total = 0
    for path in sorted(settings.landing_dir(source, day).iterdir()):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as handle:
            total += sum(1 for _ in handle) - 1
    return total


def deliver(settings: Settings, events_days: list[date], events_per_day: int, order_days: list[date]) -> None:
    with contextlib.redirect_stdout(sys.stderr):
        for day in events_days:
            if not settings.landing_dir(EVENTS.name, day).is_dir():
                generate_events.main(["--from", day.isoformat(), "--days", "1", "--events-per-day",
                                      str(events_per_day), "--defect-rate", "0.02", "--landing", str(settings.landing)])
        if order_days:
            stage_orders.main(["--from", order_days[0].isoformat(), "--to", order_days[-1].isoformat(),
                               "--landing", str(settings.landing)])


def phase_layers(settings: Settings, days: dict[str, list[date]], log_dir: Path) -> list[JobFigures]:
    env, figures = _job_env(settings), []
    for source, source_days in days.items():
        for day in source_days:
            lines = _lines(settings, source, day)
            for layer in LAYERS:
                log(f"{layer} {source} {day} ({lines:,} lines) ...")
                job = run_job(settings, env, layer, source, day, log_dir)
                job.delivered_lines = lines
                figures.append(job)
                log(f"  {job.wall_seconds:.1f} s wall ({job.startup_seconds:.1f} s start-up, "
                    f"{job.work_seconds:.1f} s work of which {job.validation_seconds:.1f} s the gate), "
                    f"{_memory_labels(settings.runtime)[0]} {job.jvm_peak_bytes / 2**20:,.0f} MiB, "
                    f"{job.files_written} files written")
    return figures


def phase_reference(settings: Settings, days: dict[str, list[date]], out: Path) -> dict:
    from include.bench.reference import Reference

    reference = Reference(settings.landing, out)
    timings = []
    for source, source_days in days.items():
        for day in source_days:
            for layer in LAYERS:
                outcome = getattr(reference, layer)(source, day)
                timings.append({"layer": layer, "source": source, "day": day.isoformat(), **outcome})
                log(f"duckdb {layer} {source} {day}: {outcome['seconds']:.2f} s")
    return {"timings": timings, "comparison": compare_gold(settings, reference, days)}


def compare_gold(settings: Settings, reference, days: dict[str, list[date]]) -> dict[str, str]:
    """Every gold mart of the sources run, ours (read with the deltalake package) against DuckDB's."""
    from deltalake import DeltaTable

    from spark_jobs.transforms.gold import marts_of

    outcome = {}
    for source in days:
        for mart in marts_of(source):
            ours = DeltaTable(settings.table_path("gold", mart.table)).to_pyarrow_table()
            ours = ours.select([name for name in ours.column_names if not name.startswith("_")])
            theirs = reference.gold_table(mart.table).select(ours.column_names)
            outcome[mart.table] = _difference(ours, theirs)
            log(f"gold {mart.table}: {outcome[mart.table]}")
    return outcome


def _difference(ours, theirs) -> str:
    """'equal (N rows)' or what differs between two tables with the same columns."""
    if ours.num_rows != theirs.num_rows:
        return f"DIFFERENT: {ours.num_rows:,} rows against DuckDB's {theirs.num_rows:,}"
    keys = [(name, "ascending") for name in ours.column_names]
    left, right = ours.sort_by(keys).to_pylist(), theirs.cast(ours.schema, safe=False).sort_by(keys).to_pylist()
    differing = [(a, b) for a, b in zip(left, right) if a != b]
    if differing:
        return (f"DIFFERENT: {len(differing):,} of {ours.num_rows:,} rows, "
                f"e.g. ours {differing[0][0]} against {differing[0][1]}")
    return f"equal ({ours.num_rows:,} rows)"


def phase_refresh(settings: Settings, days: dict[str, list[date]], log_dir: Path) -> list[JobFigures]:
    env, figures = _job_env(settings), []
    for source, source_days in days.items():
        log(f"gold {source} full refresh on {source_days[-1]} ...")
        figures.append(run_job(settings, env, "gold", source, source_days[-1], log_dir,
                               ["--refresh", "full"], label="-full"))
        log(f"  {figures[-1].wall_seconds:.1f} s")
    return figures


def phase_growth(root: Path, events_per_day: int, log_dir: Path) -> list[JobFigures]:
    """Days 1..31 of generated events; days 2, 11 and 31 measured as spark-submit jobs, the days between
    built as history in one Spark session of a separate process, gone before the next measured day."""
    import multiprocessing

    settings = _settings(root)
    env = _job_env(settings)
    all_days = [EVENTS_START + timedelta(days=index) for index in range(max(GROWTH_DAYS))]
    log(f"growth: delivering {len(all_days)} days of {events_per_day:,} events ...")
    deliver(settings, all_days, events_per_day, [])
    figures, history = [], []
    for number, day in enumerate(all_days, start=1):
        if number not in GROWTH_DAYS:
            history.append(day)
            continue
        if history:
            log(f"growth: history {history[0]} to {history[-1]} in one Spark session ...")
            builder = multiprocessing.get_context("spawn").Process(
                target=_build_history, args=(root, history, log_dir / f"growth-history-{history[0]}.log"))
            builder.start()
            try:
                builder.join()
            except BaseException:  # the benchmark stopped (Ctrl-C): the history process goes with it
                builder.terminate()
                builder.join()
                raise
            if builder.exitcode != 0:
                raise RuntimeError(f"building the growth history {history[0]} to {history[-1]} failed")
            history = []
        lines = _lines(settings, EVENTS.name, day)
        for layer in LAYERS:
            job = run_job(settings, env, layer, EVENTS.name, day, log_dir, label="-growth")
            job.delivered_lines = lines
            figures.append(job)
        log(f"growth day {number}: " + ", ".join(f"{job.layer} {job.wall_seconds:.1f} s" for job in figures[-3:]))
    return figures


def _build_history(root: Path, days: list[date], log_path: Path) -> None:
    """Bronze, silver and gold of each day, in order, with the functions the layer jobs call; what this
    process and its JVM print goes to `log_path`."""
    with open(log_path, "w") as output:
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
    from include.spark import get_spark
    from spark_jobs.bronze import run_bronze
    from spark_jobs.gold import run_gold
    from spark_jobs.silver import run_silver

    settings = _settings(root)
    spark = get_spark("bench-history", settings)
    for day in days:
        for run in (run_bronze, run_silver, run_gold):
            run(spark, settings, EVENTS, day, f"bench-history-{day}")
    spark.stop()


def phase_fixed(root: Path, tiny_events: int, log_dir: Path) -> dict:
    """One `airflow dags test` run of a date with a tiny events delivery and a real order day (about 3,000
    lines); where its time goes."""
    settings = _settings(root)
    day = min(stage_orders.available_days(SAMPLE_ORDERS_DIR))
    deliver(settings, [day], tiny_events, [day])
    home = root / "airflow"
    env = {**_job_env(settings), "AIRFLOW_HOME": str(home),
           "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True"}
    env.pop("AIRFLOW_CONN_SPARK_LOCAL", None)
    log("fixed cost: preparing Airflow's metadata database (not timed) ...")
    for command in (["airflow", "db", "migrate"], [sys.executable, "-m", "include.orchestration"]):
        subprocess.run(command, env=env, cwd=PROJECT_ROOT, check=True, capture_output=True)
    log(f"fixed cost: airflow dags test lakehouse_daily {day} on {tiny_events:,} events and a real order day ...")
    log_path = log_dir / f"dags-test-{day}.log"
    started = time.time()
    with open(log_path, "w") as output:
        code = subprocess.run(["airflow", "dags", "test", "lakehouse_daily", day.isoformat()], env=env,
                              cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT).returncode
    wall = time.time() - started
    if code != 0:
        raise RuntimeError(f"airflow dags test failed with exit status {code}; its log: {log_path}")
    reports = job_reports(log_path.read_text(errors="replace"))
    with sqlite3.connect(home / "airflow.db") as db:
        tasks = {task: (_epoch(start), _epoch(end)) for task, start, end in db.execute(
            "SELECT task_id, start_date, end_date FROM task_instance WHERE dag_id = 'lakehouse_daily' "
            "AND start_date IS NOT NULL AND end_date IS NOT NULL")}
    jobs = {f"{report['source']}.{report['layer']}": report for report in reports}
    # A layer task's time: from its start to the JVM's start (the task process), start-up, work, and
    # from the work's end to the task's end (the JVM stopping, the task reporting).
    startup = sum(report["session_ready_at"] - report["started_at"] for report in jobs.values())
    work = sum(report["finished_at"] - report["session_ready_at"] for report in jobs.values())
    shutdown = sum(tasks[task][1] - report["finished_at"] for task, report in jobs.items() if task in tasks)
    split = {"wall_seconds": wall, "spark_startup_seconds": startup, "work_seconds": work,
             "spark_shutdown_seconds": shutdown, "airflow_seconds": wall - startup - work - shutdown,
             "layer_jobs": len(jobs), "tasks": len(tasks), "events": tiny_events}
    log("fixed cost: " + ", ".join(f"{key} {value:.1f}" for key, value in split.items() if key.endswith("seconds")))
    return split


def phase_backfill(root: Path, days: list[date], log_dir: Path) -> dict:
    """A backfill of real order days through a running Airflow (`make airflow` + `make backfill`'s code: the
    scheduler, the LocalExecutor, the layer pools, up to 3 dates at once): wall seconds from the backfill's
    creation to its last run's end, per run and per delivered date."""
    from include.tools import airflow_stack

    settings = _settings(root)
    deliver(settings, [], 0, days)
    stack = airflow_stack.Stack(home=root / "airflow", port=_free_port())
    env = {**_job_env(settings), "AIRFLOW_HOME": str(stack.home), "AIRFLOW__API__PORT": str(stack.port),
           "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True"}
    env.pop("AIRFLOW_CONN_SPARK_LOCAL", None)
    log(f"backfill: starting Airflow on port {stack.port} (not timed) ...")
    with contextlib.redirect_stdout(sys.stderr):
        airflow_stack.start(stack, env)
    try:
        log(f"backfill: {days[0]} to {days[-1]} ({len(days)} delivered dates) ...")
        started = time.time()
        with contextlib.redirect_stdout(sys.stderr):
            airflow_stack.backfill(stack, days[0].isoformat(), days[-1].isoformat(), env=env)
        token, unhealthy = stack.token(), None
        while True:
            runs = [run for run in stack.api("GET", "/dags/lakehouse_daily/dagRuns?run_type=backfill&limit=1000",
                                             token=token)["dag_runs"]]
            if runs and all(run["state"] in ("success", "failed") for run in runs):
                break
            if time.time() - started > 6 * 3600:
                raise RuntimeError("the backfill did not finish in 6 hours")
            scheduler = ((stack.health() or {}).get("scheduler") or {}).get("status")
            if scheduler not in ("healthy", None):
                unhealthy = unhealthy or time.time()
                if time.time() - unhealthy > SCHEDULER_GRACE_SECONDS:
                    raise RuntimeError(f"Airflow's scheduler is {scheduler} (no heartbeat for "
                                       f"{SCHEDULER_GRACE_SECONDS} s): the backfill cannot finish; "
                                       f"Airflow's log: {stack.log_file}")
            else:
                unhealthy = None
            time.sleep(2)
        wall = time.time() - started
        refused, failed = _refusals(stack, token, [run for run in runs if run["state"] != "success"])
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            airflow_stack.stop(stack, timeout=10)
        shutil.copy(stack.log_file, log_dir / f"backfill-{settings.runtime}-standalone.log")
    if failed:
        raise RuntimeError(f"backfill runs failed: {', '.join(failed)}; Airflow's log: {stack.log_file}")
    figures = {"wall_seconds": wall, "runs": len(runs), "delivered_dates": len(days),
               "seconds_per_run": wall / len(runs), "seconds_per_date": wall / len(days),
               "first": days[0].isoformat(), "last": days[-1].isoformat(), "refused": refused}
    log(f"backfill: {wall:.0f} s for {len(runs)} runs ({len(days)} delivered dates): "
        f"{figures['seconds_per_date']:.1f} s per delivered date"
        + (f"; refused by their gates, as the data says: {', '.join(refused)}" if refused else ""))
    return figures


def _refusals(stack, token: str, runs: list[dict]) -> tuple[list[str], list[str]]:
    """The failed runs' dates split into those a gate refused (every failed task's log says the job refused
    its input: the real order days include one, 2010-12-22, that quarantines 22% of its lines) and the
    others, which fail the benchmark."""
    refused, failed = [], []
    for run in runs:
        base = f"/dags/lakehouse_daily/dagRuns/{run['dag_run_id']}/taskInstances"
        tasks = [task for task in stack.api("GET", base, token=token)["task_instances"] if task["state"] == "failed"]
        texts = [json.dumps(stack.api("GET", f"{base}/{task['task_id']}/logs/{task['try_number']}",
                                      token=token)["content"]) for task in tasks]
        day = run["logical_date"][:10]
        (refused if texts and all("refused its input" in text for text in texts) else failed).append(day)
    return sorted(refused), sorted(failed)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def connect_server(root: Path):
    """The benchmark's own Spark Connect server (its home, ports and token), for LAKEHOUSE_RUNTIME=connect:
    its settings in this process's environment while it runs; yields a dict that gets its peak memory."""
    import secrets

    from include.tools import spark_connect

    names = ("LAKEHOUSE_CONNECT_HOME", "LAKEHOUSE_CONNECT_PORT", "LAKEHOUSE_CONNECT_UI_PORT", "LAKEHOUSE_CONNECT_TOKEN")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({"LAKEHOUSE_CONNECT_HOME": str(root / "connect"), "LAKEHOUSE_CONNECT_PORT": str(_free_port()),
                       "LAKEHOUSE_CONNECT_UI_PORT": str(_free_port()),
                       "LAKEHOUSE_CONNECT_TOKEN": secrets.token_urlsafe(24)})
    settings = Settings.from_env()
    figures: dict = {"heap": settings.connect_memory}
    try:
        started = time.time()
        with contextlib.redirect_stdout(sys.stderr):
            spark_connect.start(settings)
        figures["start_seconds"] = time.time() - started
        yield figures
    finally:
        memory = spark_connect.memory_kb(settings)
        if memory:
            figures["rss_mib"], figures["peak_rss_mib"] = memory[0] / 1024, memory[1] / 1024
        with contextlib.redirect_stdout(sys.stderr):
            spark_connect.stop(settings)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _epoch(text: str) -> float:
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# --- the report ------------------------------------------------------------------------------------

def machine() -> dict:
    import psutil

    java = subprocess.run(["java", "-version"], capture_output=True, text=True)
    versions = {name: _version(name) for name in ("pyspark", "delta-spark", "apache-airflow", "great-expectations",
                                                  "duckdb", "deltalake")}
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "platform": platform.platform(),
            "python": platform.python_version(), "java": (java.stderr or java.stdout).splitlines()[0], **versions}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _per_layer(jobs: list[JobFigures]) -> dict[str, dict]:
    totals = {}
    for layer in LAYERS:
        mine = [job for job in jobs if job.layer == layer]
        if not mine:
            continue
        wall = sum(job.wall_seconds for job in mine)
        totals[layer] = {
            "jobs": len(mine), "wall_seconds": wall, "lines": sum(job.delivered_lines for job in mine),
            "lines_per_second": sum(job.delivered_lines for job in mine) / wall if wall else 0.0,
            "startup_seconds": sum(job.startup_seconds for job in mine),
            "work_seconds": sum(job.work_seconds for job in mine),
            "validation_seconds": sum(job.validation_seconds for job in mine),
            "validation_share": sum(job.validation_seconds for job in mine) / wall if wall else 0.0,
            "jvm_peak_mib": max(job.jvm_peak_bytes for job in mine) / 2**20,
            "driver_peak_mib": max(job.driver_peak_bytes for job in mine) / 2**20,
            "files_written": sum(job.files_written for job in mine),
            "mib_written": sum(job.bytes_written for job in mine) / 2**20,
        }
    return totals


def _memory_labels(runtime: str) -> tuple[str, str]:
    """What the job process's peak memory is: spark-submit's JVM, or on the Connect runtime the job's Python
    client (the work's memory is the server's, reported apart)."""
    if runtime == "connect":
        return "client peak", "client tree peak"
    return "JVM peak", "driver peak"


def build_report(figures: dict) -> tuple[str, dict]:
    """(Markdown, the checks of the targets) from the collected figures."""
    out, checks = [], {}
    facts = figures["machine"]
    out.append(f"# Lakehouse benchmark, {facts['date']}\n")
    out.append(f"{facts['cores']} cores, {facts['memory_gib']} GiB, {facts['platform']}; Python {facts['python']}, "
               f"{facts['java']}; Spark {facts['pyspark']}, Delta {facts['delta-spark']}, Airflow "
               f"{facts['apache-airflow']}, GX {facts['great-expectations']}, DuckDB {facts['duckdb']}.\n")
    out.append(f"Input: {figures['input']}.\n")
    runtime = figures.get("runtime", "local")
    out.append(f"Runtime: `{runtime}` ({RUNTIME_WORDS.get(runtime, runtime)}).\n")
    server = figures.get("connect_server")
    if server:
        out.append(f"Spark Connect server: heap {server['heap']}, up in {server.get('start_seconds', 0):.0f} s, "
                   f"resident memory at its peak {server.get('peak_rss_mib', 0):,.0f} MiB.\n")

    for source, jobs in figures.get("layers", {}).items():
        jobs = [JobFigures(**job) for job in jobs]
        out.append(f"## {source}: one {JOB_WORDS.get(runtime, 'spark-submit')} per layer and day\n")
        own, tree = _memory_labels(runtime)
        out.append(f"| layer | jobs | wall s | lines/s | start-up s | work s | gate s | gate share | {own} MiB | "
                   f"{tree} MiB | files | MiB written |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        layers = _per_layer(jobs)
        for layer, row in layers.items():
            out.append(f"| {layer} | {row['jobs']} | {row['wall_seconds']:.1f} | {row['lines_per_second']:,.0f} | "
                       f"{row['startup_seconds']:.1f} | {row['work_seconds']:.1f} | {row['validation_seconds']:.1f} | "
                       f"{row['validation_share']:.0%} | {row['jvm_peak_mib']:,.0f} | {row['driver_peak_mib']:,.0f} | "
                       f"{row['files_written']} | {row['mib_written']:,.1f} |")
            checks[f"{source} {layer}: gate at most {TARGET_GATE_SHARE:.0%} of the layer"] = (
                row["validation_share"] <= TARGET_GATE_SHARE, f"{row['validation_share']:.0%}")
        total = sum(row["wall_seconds"] for row in layers.values())
        delivered = sum(job.delivered_lines for job in jobs if job.layer == "bronze")
        out.append(f"| **total** | {sum(row['jobs'] for row in layers.values())} | {total:.1f} | "
                   f"{delivered / total:,.0f} | | | | | | | | |\n")
        out.append("Per day (wall seconds): " + "; ".join(
            f"{day}: " + ", ".join(f"{job.layer} {job.wall_seconds:.1f}" for job in jobs if job.day == day)
            for day in sorted({job.day for job in jobs})) + "\n")

    reference = figures.get("reference")
    if reference:
        out.append("## Against DuckDB on the same files\n")
        out.append("| source | layer | ours s | DuckDB s | ours / DuckDB |")
        out.append("|---|---|---|---|---|")
        for source, jobs in figures.get("layers", {}).items():
            ours_total = theirs_total = 0.0
            for layer in LAYERS:
                ours = sum(job["wall_seconds"] for job in jobs if job["layer"] == layer)
                theirs = sum(item["seconds"] for item in reference["timings"]
                             if item["layer"] == layer and item["source"] == source)
                ours_total, theirs_total = ours_total + ours, theirs_total + theirs
                out.append(f"| {source} | {layer} | {ours:.1f} | {theirs:.2f} | {ours / theirs:.1f} |")
            ratio = ours_total / theirs_total
            out.append(f"| {source} | **end to end** | {ours_total:.1f} | {theirs_total:.2f} | **{ratio:.1f}** |")
            if source == EVENTS.name:
                checks[f"events end to end at most {TARGET_RATIO:g} x DuckDB"] = (ratio <= TARGET_RATIO,
                                                                                  f"{ratio:.1f} x")
        out.append("")
        out.append("Gold, ours against DuckDB's: " + "; ".join(
            f"{mart} {verdict}" for mart, verdict in reference["comparison"].items()) + "\n")
        checks["gold equal to DuckDB's"] = (all(verdict.startswith("equal")
                                                for verdict in reference["comparison"].values()),
                                            f"{len(reference['comparison'])} marts compared")

    refresh = figures.get("refresh")
    if refresh:
        out.append("## Full refresh of gold against the incremental days\n")
        out.append("| source | full refresh s | incremental gold s, summed over the days |")
        out.append("|---|---|---|")
        for job in refresh:
            incremental = sum(item["wall_seconds"] for item in figures["layers"].get(job["source"], [])
                              if item["layer"] == "gold")
            out.append(f"| {job['source']} | {job['wall_seconds']:.1f} | {incremental:.1f} |")
        out.append("")

    growth = figures.get("growth")
    if growth:
        out.append(f"## Growth: day N+1 after N days of history ({figures['growth_events_per_day']:,} events a day)\n")
        out.append("| day | bronze s | silver s | gold s | total s | against day 2 |")
        out.append("|---|---|---|---|---|---|")
        by_day = {}
        for job in growth:
            by_day.setdefault(job["day"], {})[job["layer"]] = job["wall_seconds"]
        first = None
        for number, (day, layers) in zip(GROWTH_DAYS, sorted(by_day.items())):
            total = sum(layers.values())
            first = first or total
            out.append(f"| {number} ({day}) | {layers['bronze']:.1f} | {layers['silver']:.1f} | {layers['gold']:.1f} | "
                       f"{total:.1f} | {total / first:.2f} |")
            if number == max(GROWTH_DAYS):
                checks[f"day 31 at most {TARGET_GROWTH} x day 2"] = (total / first <= TARGET_GROWTH,
                                                                     f"{total / first:.2f}")
        out.append("")

    fixed = figures.get("fixed")
    if fixed:
        out.append(f"## Fixed cost: one date, {fixed['events']:,} events and a real order day, `airflow dags test`\n")
        out.append("| wall s | Spark start-up s | work s | Spark shut-down s | Airflow s | layer jobs |")
        out.append("|---|---|---|---|---|---|")
        out.append(f"| {fixed['wall_seconds']:.1f} | {fixed['spark_startup_seconds']:.1f} | "
                   f"{fixed['work_seconds']:.1f} | {fixed['spark_shutdown_seconds']:.1f} | "
                   f"{fixed['airflow_seconds']:.1f} | {fixed['layer_jobs']} |\n")
        checks[f"one-date run at most {TARGET_TINY_SECONDS:g} s"] = (fixed["wall_seconds"] <= TARGET_TINY_SECONDS,
                                                                     f"{fixed['wall_seconds']:.1f} s")

    backfill = figures.get("backfill")
    if backfill:
        out.append(f"## Backfill of {backfill['delivered_dates']} real order days through a running Airflow\n")
        out.append("| dates | runs | wall s | s per run | s per delivered date |")
        out.append("|---|---|---|---|---|")
        out.append(f"| {backfill['first']} to {backfill['last']} | {backfill['runs']} | "
                   f"{backfill['wall_seconds']:.0f} | {backfill['seconds_per_run']:.1f} | "
                   f"{backfill['seconds_per_date']:.1f} |\n")
        if backfill.get("refused"):
            out.append(f"Refused by their gates, as their data says: {', '.join(backfill['refused'])}.\n")
        checks[f"backfill at most {TARGET_BACKFILL_SECONDS:g} s per date"] = (
            backfill["seconds_per_date"] <= TARGET_BACKFILL_SECONDS, f"{backfill['seconds_per_date']:.1f} s")

    out.extend(_fixed_share(figures))

    if checks:
        out.append("## Targets\n")
        for name, (held, value) in checks.items():
            out.append(f"- {'held' if held else 'MISSED'}: {name} ({value})")
        out.append("")
    return "\n".join(out), {name: {"held": held, "value": value} for name, (held, value) in checks.items()}


def _fixed_share(figures: dict) -> list[str]:
    """Markdown: how much of the events' end-to-end time any delivery would cost, against DuckDB's time.

    Start-up and shut-down are the layer jobs' own; the fixed part of their work is the tiny run's work
    per job (plans, Delta commits and gate queries in a new JVM, whatever the rows), once per job."""
    layers, reference, fixed = figures.get("layers", {}), figures.get("reference"), figures.get("fixed")
    if not (reference and fixed and layers.get(EVENTS.name) and fixed.get("layer_jobs")):
        return []
    per_layer = _per_layer([JobFigures(**job) for job in layers[EVENTS.name]]).values()
    jobs = sum(row["jobs"] for row in per_layer)
    ours = sum(row["wall_seconds"] for row in per_layer)
    edges = ours - sum(row["work_seconds"] for row in per_layer)  # each job's start-up and shut-down
    cold = fixed["work_seconds"] / fixed["layer_jobs"] * jobs
    theirs = sum(item["seconds"] for item in reference["timings"] if item["source"] == EVENTS.name)
    rows = [(f"start-up and shut-down of the {jobs} jobs", edges),
            (f"their work on a {fixed['events']:,}-event day (the tiny run's work per job, {jobs} times)", cold),
            ("**fixed cost, whatever the rows**", edges + cold),
            ("work that grows with the rows (the rest)", ours - edges - cold),
            ("**end to end**", ours)]
    out = ["## Events end to end: fixed cost and work on the rows\n",
           "| part | s | times DuckDB's end to end |", "|---|---|---|"]
    out += [f"| {name} | {seconds:.1f} | {seconds / theirs:.1f} |" for name, seconds in rows]
    out.append(f"\nAt most {TARGET_RATIO:g} times DuckDB's {theirs:.1f} s is {TARGET_RATIO * theirs:.1f} s for "
               f"everything; the fixed cost alone is {(edges + cold) / theirs:.1f} times.\n")
    return out


def _growth_totals(report: dict) -> dict[int, float]:
    """Growth day number (2, 11, 31) -> the three layers' wall seconds of that day."""
    by_day = {}
    for job in report.get("growth") or []:
        by_day[job["day"]] = by_day.get(job["day"], 0.0) + job["wall_seconds"]
    return dict(zip(GROWTH_DAYS, (by_day[day] for day in sorted(by_day))))


def compare_reports(before: dict, after: dict, title: str | None = None,
                    labels: tuple[str, str] = ("before", "after")) -> str:
    """Markdown: the figures two benchmark runs both have, side by side (a tuning pass's before and after, or
    the two runtimes of one run)."""
    out = [f"## {title or 'Against the run of ' + before['machine']['date']}\n"]
    if before.get("input") != after.get("input"):
        out.append(f"Inputs differ: before {before.get('input')}; after {after.get('input')}.\n")
    rows = []
    for source, jobs in after.get("layers", {}).items():
        then = _per_layer([JobFigures(**job) for job in before.get("layers", {}).get(source, [])])
        now = _per_layer([JobFigures(**job) for job in jobs])
        common = [layer for layer in now if layer in then]
        rows += [(f"{source} {layer}, wall s", then[layer]["wall_seconds"], now[layer]["wall_seconds"])
                 for layer in common]
        if common:
            rows.append((f"{source} end to end, wall s", sum(then[layer]["wall_seconds"] for layer in common),
                         sum(now[layer]["wall_seconds"] for layer in common)))
    then, now = _growth_totals(before), _growth_totals(after)
    rows += [(f"growth day {number}, wall s", then[number], now[number]) for number in now if number in then]
    if before.get("fixed") and after.get("fixed"):
        rows.append(("one-date run, wall s", before["fixed"]["wall_seconds"], after["fixed"]["wall_seconds"]))
    if before.get("backfill") and after.get("backfill"):
        rows.append(("backfill, s per delivered date", before["backfill"]["seconds_per_date"],
                     after["backfill"]["seconds_per_date"]))
    if not rows:
        out.append("No figure in common.\n")
        return "\n".join(out)
    out.append(f"| figure | {labels[0]} | {labels[1]} | {labels[1]} / {labels[0]} |")
    out.append("|---|---|---|---|")
    for name, old, new in rows:
        ratio = f"{new / old:.2f}" if old else ""
        out.append(f"| {name} | {old:.1f} | {new:.1f} | {ratio} |")
    out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events-per-day", type=int, default=2_000_000, help="generated events a day (2000000)")
    parser.add_argument("--days", type=int, default=3, help="generated event days (3)")
    parser.add_argument("--order-days", type=int, default=3, help="real order days, from 2010-12-01 on (3)")
    parser.add_argument("--growth-events-per-day", type=int, default=100_000,
                        help="generated events a day in the growth phase (100000)")
    parser.add_argument("--tiny-events", type=int, default=1_000, help="events of the one-date run (1000)")
    parser.add_argument("--backfill-days", type=int, default=30,
                        help="real order days of the backfill phase on the connect runtime (30)")
    parser.add_argument("--backfill-days-local", type=int, default=5,
                        help="real order days of the backfill phase on the local runtime (5: about 2 minutes a date)")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES),
                        help="the runtimes measured, side by side, in this order (connect,local)")
    parser.add_argument("--skip", default="", help=f"phases to leave out, separated by commas: {', '.join(PHASES)}")
    parser.add_argument("--root", type=Path,
                        help="folder for the landing zone, warehouse, logs (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep --root's data when done (a temp root is removed)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench-results",
                        help="where report.md and report.json go (bench-results/)")
    parser.add_argument("--against", type=Path, metavar="REPORT_JSON",
                        help="an earlier run's report.json: its figures are printed beside this run's")
    args = parser.parse_args(argv)
    before = json.loads(args.against.read_text()) if args.against else None
    skip = {phase.strip() for phase in args.skip.split(",") if phase.strip()}
    if skip - set(PHASES):
        parser.error(f"unknown phases {', '.join(sorted(skip - set(PHASES)))}; phases are {', '.join(PHASES)}")
    if ({"reference", "refresh"} - skip) and "layers" in skip:
        parser.error("the reference and refresh phases compare with the layers phase: skip them too")
    runtimes = [runtime.strip() for runtime in args.runtimes.split(",") if runtime.strip()]
    if not runtimes or set(runtimes) - set(RUNTIMES):
        parser.error(f"--runtimes: expected some of {', '.join(RUNTIMES)}")
    if shutil.which("spark-submit") is None and not (Path(sys.executable).parent / "spark-submit").exists():
        parser.error("spark-submit is not on PATH: run `make bench`, or `make setup` and use .venv/bin/python")

    temporary = args.root is None
    root = args.root or Path(tempfile.mkdtemp(prefix="lakehouse-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    log_dir = root / "logs"
    log_dir.mkdir(exist_ok=True)
    log(f"root {root}; job logs in {log_dir}")
    all_orders = sorted(stage_orders.available_days(SAMPLE_ORDERS_DIR))
    days = {ORDERS.name: all_orders[:args.order_days],
            EVENTS.name: [EVENTS_START + timedelta(days=index) for index in range(args.days)]}
    days = {source: source_days for source, source_days in days.items() if source_days}
    by_runtime: dict[str, dict] = {}
    started = time.monotonic()
    saved_runtime = os.environ.get("LAKEHOUSE_RUNTIME")
    try:
        for runtime in runtimes:
            os.environ["LAKEHOUSE_RUNTIME"] = runtime
            figures = by_runtime[runtime] = {"machine": machine(), "runtime": runtime}
            figures["input"] = (f"{args.days} generated event day(s) of {args.events_per_day:,} events (2% defects) "
                                f"and {args.order_days} real order day(s) "
                                f"({', '.join(map(str, days.get(ORDERS.name, [])))})")
            run_root = root / runtime
            log(f"runtime {runtime}: {RUNTIME_WORDS[runtime]}")
            with (connect_server(run_root) if runtime == "connect" else contextlib.nullcontext({})) as server:
                if runtime == "connect":
                    figures["connect_server"] = server
                run_phases(figures, args, skip, days, all_orders, run_root, log_dir / runtime)
    finally:
        if saved_runtime is None:
            os.environ.pop("LAKEHOUSE_RUNTIME", None)
        else:
            os.environ["LAKEHOUSE_RUNTIME"] = saved_runtime
        first = by_runtime[runtimes[0]] if by_runtime else {"machine": machine()}
        first["bench_seconds"] = time.monotonic() - started
        parts, checks = [], {}
        for runtime, figures in by_runtime.items():
            markdown, runtime_checks = build_report(figures)
            figures["targets"] = runtime_checks
            parts.append(markdown)
            if runtime == runtimes[0]:
                checks = runtime_checks
        if len(by_runtime) == 2:
            (one, this), (other, that) = by_runtime.items()
            parts.insert(1, compare_reports(that, this, title=f"`{one}` beside `{other}`, same input, same run",
                                            labels=(other, one)))
        markdown = "\n".join(parts) if parts else "No figures."
        if before is not None and by_runtime:
            markdown += "\n" + compare_reports(before, first)
        args.out.mkdir(parents=True, exist_ok=True)
        report = {**first, "targets": checks, "runtimes": by_runtime}
        (args.out / "report.md").write_text(markdown + "\n")
        (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        print(markdown)
        log(f"report: {args.out / 'report.md'} and report.json ({first['bench_seconds']:.0f} s in all)")
        if temporary and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def run_phases(figures: dict, args, skip: set[str], days: dict[str, list[date]], all_orders: list[date],
               root: Path, log_dir: Path) -> None:
    """The phases not skipped, on the runtime LAKEHOUSE_RUNTIME names, their figures into `figures`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    runtime = figures["runtime"]
    if "layers" not in skip:
        settings = _settings(root / "main")
        log(f"delivering {figures['input']} ...")
        deliver(settings, days.get(EVENTS.name, []), args.events_per_day, days.get(ORDERS.name, []))
        jobs = phase_layers(settings, days, log_dir)
        figures["layers"] = {source: [vars(job) for job in jobs if job.source == source] for source in days}
        if "reference" not in skip:
            figures["reference"] = phase_reference(settings, days, root / "duckdb")
        if "refresh" not in skip:
            figures["refresh"] = [vars(job) for job in phase_refresh(settings, days, log_dir)]
    if "growth" not in skip:
        figures["growth_events_per_day"] = args.growth_events_per_day
        growth = phase_growth(root / "growth", args.growth_events_per_day, log_dir)
        figures["growth"] = [vars(job) for job in growth]
    if "fixed" not in skip:
        figures["fixed"] = phase_fixed(root / "fixed", args.tiny_events, log_dir)
    if "backfill" not in skip:
        count = args.backfill_days if runtime == "connect" else args.backfill_days_local
        if count:
            figures["backfill"] = phase_backfill(root / "backfill", all_orders[:count], log_dir)


if __name__ == "__main__":
    sys.exit(main())
