"""The Spark Connect runtime: the server `make spark-connect` starts, the clients the layer tasks are.

- The server listens on 127.0.0.1 only, refuses a client without its token, and its token is on no command
  line, in no process title and in no log line; a second start reuses it.
- A task's session is its own: the frames its job kept are freed when it ends, and its running operations
  are stopped by `release_session`, as a killed task's or a retry's cleanup does.
- A task whose server is down fails within seconds, saying how to start the server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from include.config import Settings
from include.spark import ServerUnavailable, connect_session, release_session, session_id_for
from include.tools import spark_connect
from tests.conftest import TEST_SPARK_ENV, connect_server
from tests.helpers import airflow_env, free_port, own_server_env, prepare_airflow_db

pytestmark = pytest.mark.xdist_group("connect")


@pytest.fixture(scope="module")
def server() -> Settings:
    return connect_server()


@pytest.fixture(scope="module")
def quiet_server(tmp_path_factory) -> Settings:
    """A server of this module's own, for the checks that an ended session's kept frames are freed. They go
    once nothing on the server refers to them: the session's state goes when it ends, but the threads its
    queries started (the pools of query stages, shuffle exchanges, the block manager) keep a reference until
    they have been idle a minute, and on the shared server the other tests' queries keep them busy."""
    env = {**os.environ, **TEST_SPARK_ENV, **own_server_env(tmp_path_factory.mktemp("quiet-server"))}
    settings = Settings.from_env(env)
    spark_connect.start(settings, env=env, quiet=True)
    yield settings
    spark_connect.stop(settings, quiet=True)


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_the_server_listens_on_loopback_only_and_keeps_its_token_out_of_sight(server):
    token = os.environ["LAKEHOUSE_CONNECT_TOKEN"]
    pid = spark_connect.running_pid(server)
    assert pid is not None
    # IPv4 127.0.0.1, or its IPv6-mapped form, and nothing else.
    assert _listening_addresses(server.connect_port) <= {"0100007F", "0000000000000000FFFF00000100007F"}, \
        _listening_addresses(server.connect_port)
    assert token not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert token not in spark_connect.log_file(server).read_text(errors="replace")
    assert "127.0.0.1" in " ".join(spark_connect.command(server))
    with pytest.raises(ServerUnavailable, match="refused this client's token"):
        connect_session(server, token="not-the-token")


def test_a_second_start_reuses_the_running_server(server, capsys):
    pid = spark_connect.running_pid(server)
    assert spark_connect.start(server) is False
    assert spark_connect.running_pid(server) == pid
    assert "reusing it" in capsys.readouterr().out


def _compilations(settings: Settings) -> int:
    """How many classes the server's code generator has compiled since it started (its metrics servlet)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{settings.connect_ui_port}/metrics/json/", timeout=10) as response:
        histograms = json.load(response)["histograms"]
    (count,) = [value["count"] for name, value in histograms.items() if name.endswith("CodeGenerator.compilationTime")]
    return count


def test_a_new_session_reuses_the_classes_compiled_for_an_earlier_one(server):
    """Each task is a new session: the code Spark generates for a query it has run before, in any session, is not
    compiled again (include/connect_server.py). Other tests' queries on the same server may compile meanwhile,
    so a few tries are allowed; a server whose sessions each have a class loader compiles every time."""
    def run_query() -> int:
        spark = connect_session(server, current=False)
        try:
            before = _compilations(server)
            (spark.range(500).selectExpr("id % 7 AS lakehouse_key", "id * 3 AS lakehouse_value")
             .groupBy("lakehouse_key").sum("lakehouse_value").collect())
            return _compilations(server) - before
        finally:
            spark.stop()

    first = run_query()
    again = [run_query() for _ in range(4)]
    assert 0 in again, f"compiled {first} classes in the first session, then {again} in each new session"


def _kept_by(settings: Settings, session_id: str) -> set[int]:
    """The ids of the RDDs in the server's storage that the session's jobs computed: the frames it kept (its
    jobs carry the session's id in their tags; their stages name the RDDs they read and wrote)."""
    stored = {rdd["id"] for rdd in spark_connect.ui_state(settings, "storage/rdd")}
    computed = set()
    for job in spark_connect.ui_state(settings, "jobs"):
        if any(session_id in tag for tag in job.get("jobTags", [])):
            for stage in job["stageIds"]:
                for attempt in spark_connect.ui_state(settings, f"stages/{stage}"):
                    computed.update(attempt.get("rddIds", []))
    return stored & computed


def _freed(settings: Settings, kept: set[int]) -> set[int]:
    """What of `kept` the server still stores after the session ended, once the server's own collections
    (one a minute, full) found them unreferenced; about two minutes at most on a server no other session
    keeps busy (`quiet_server`). The wait ends as soon as they went."""
    started = time.monotonic()
    # The stored RDDs only: the session's jobs and stages were read once (`kept`), and the UI drops old stages.
    while (left := kept & {rdd["id"] for rdd in spark_connect.ui_state(settings, "storage/rdd")}) \
            and time.monotonic() - started < 240:
        time.sleep(3)
    print(f"{len(kept) - len(left)} of the {len(kept)} kept RDDs freed in {time.monotonic() - started:.0f} s")
    return left


def test_a_session_s_cleanup_stops_its_operations(server):

    session_id = session_id_for("test", "cleanup", time.time())
    spark = connect_session(server, session_id, tag="lakehouse test cleanup")

    # A long operation of that session, from another thread, as a task's job would run it.
    failure = []
    worker = threading.Thread(target=lambda: _run_long(spark, failure))
    worker.start()
    deadline = time.monotonic() + 60
    while not [query for query in spark_connect.ui_state(server, "sql?length=100000&details=false")
               if query["status"] == "RUNNING" and session_id in query["description"]]:
        assert time.monotonic() < deadline, "the operation never started"
        time.sleep(0.2)
    interrupted = release_session(server, session_id)  # a new client, as a killed task's cleanup
    worker.join(60)
    assert interrupted and not worker.is_alive() and failure, "the operation was not stopped"
    assert not [query for query in spark_connect.ui_state(server, "sql?length=100000&details=false")
                if query["status"] == "RUNNING" and session_id in query["description"]]
    assert release_session(server, session_id) == [], "a second cleanup of the same session has nothing to do"


def _run_long(spark, failure: list) -> None:
    from pyspark.sql import functions as F

    try:
        spark.range(0, 10**11, numPartitions=2).select(F.sum(F.col("id") % 7)).collect()
    except Exception as error:
        failure.append(error)


def test_the_frames_a_job_kept_are_freed_when_its_session_ends(quiet_server, tmp_path):
    from include.sources import ORDERS
    from spark_jobs.bronze import JOB

    settings = dataclasses.replace(quiet_server, landing=tmp_path / "landing", warehouse=tmp_path / "warehouse")
    folder = settings.landing_dir("orders", "2010-12-01")
    folder.mkdir(parents=True)
    (folder / "day.csv").write_text(f"{ORDERS.header}\n536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,"
                                    f"2.55,17850,United Kingdom\n")
    session_id = session_id_for("test", "job", time.time())
    spark = connect_session(settings, session_id)
    try:
        os.environ.update({"LAKEHOUSE_LANDING": str(settings.landing), "LAKEHOUSE_WAREHOUSE": str(settings.warehouse)})
        JOB.execute(["--source", "orders", "--ingestion-date", "2010-12-01"], spark=spark)
        kept = _kept_by(settings, session_id)
        assert kept, "the job kept no frame: nothing here shows that its session's end frees them"
    finally:
        for name in ("LAKEHOUSE_LANDING", "LAKEHOUSE_WAREHOUSE"):
            os.environ.pop(name, None)
        release_session(settings, spark=spark)
    assert not _freed(settings, kept), "the ended session's kept frames are still stored"


def test_a_process_ends_the_sessions_it_left_open_but_a_forked_child_not_its_parent_s(server):
    from include import spark as sessions

    script = ("from include.config import Settings; from include.spark import connect_session; "
              "import sys; spark = connect_session(Settings.from_env()); spark.range(1).count(); "
              "print(spark.session_id, flush=True)")
    env = {**os.environ, **TEST_SPARK_ENV}
    left = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(sessions.__file__).parent.parent, check=True).stdout.split()[-1]
    assert _closed(server, left), "the session outlived its process"

    spark = connect_session(server, current=False)
    try:
        child = os.fork()
        if child == 0:  # the child's exit handler only, as it runs when a forked worker exits
            try:
                sessions._end_open_sessions()
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        assert spark.range(5).count() == 5, "the parent's session was ended by its child"
    finally:
        spark.stop()


def _closed(settings: Settings, session_id: str) -> bool:
    """Whether the server closed the session (it refuses a client that attaches to it)."""
    try:
        spark = connect_session(settings, session_id, current=False)
        spark.range(1).count()
    except Exception as error:
        return "SESSION_CLOSED" in str(error)
    spark.stop()
    return False


def test_a_task_whose_server_is_down_fails_within_seconds_and_says_how_to_start_it(tmp_path, sample_orders_dir):
    from include.tools import stage_orders

    stage_orders.main(["--from", "2010-12-01", "--days", "1", "--landing", str(tmp_path / "landing")])
    env = airflow_env(tmp_path / "airflow", LAKEHOUSE_LANDING=str(tmp_path / "landing"),
                      LAKEHOUSE_WAREHOUSE=str(tmp_path / "warehouse"), LAKEHOUSE_CONNECT_PORT=str(free_port()),
                      LAKEHOUSE_TASK_RETRIES="0")
    prepare_airflow_db(env)
    done = subprocess.run(["airflow", "dags", "test", "lakehouse_daily", "2010-12-01", "--conf",
                           json.dumps({"sources": ["orders"]})], env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert "state=failed" in output and "does not answer" in output and "make spark-connect" in output, output[-3000:]
    started = _task_time(output, "starting", "orders.bronze")
    ended = _task_time(output, "end task", "orders.bronze")
    assert ended - started < 15, f"the task took {ended - started:.1f} s to fail"
    assert os.environ["LAKEHOUSE_CONNECT_TOKEN"] not in output


def _task_time(output: str, event: str, task_id: str) -> float:
    """When `airflow dags test` logged the start or end of a task (epoch seconds)."""
    from datetime import datetime

    for line in output.splitlines():
        if f"[DAG TEST] {event} task_id={task_id} " in line:
            return datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
    raise AssertionError(f"no '{event}' of {task_id} in the output")


# Slow: without the cache every gate query computes its frame again (3.5 minutes of make test's 15 on 2 cores).
@pytest.mark.slow
def test_without_a_cache_the_jobs_publish_the_same_tables(server, tmp_path, spark, sample_orders_dir):
    """As on Databricks serverless compute (Spark Connect without a cache): LAKEHOUSE_CACHE_FRAMES=false."""
    import gzip

    from include.sources import ORDERS
    from spark_jobs.bronze import run_bronze
    from spark_jobs.gold import run_gold
    from spark_jobs.silver import run_silver
    from tests.helpers import published_tables

    lines = gzip.open(sample_orders_dir / "2010-12-01.csv.gz", "rt").read().splitlines()[:400]
    folder = tmp_path / "landing" / "orders" / "2010-12-01"
    folder.mkdir(parents=True)
    (folder / "day.csv").write_text("\n".join(lines) + "\n")
    day = __import__("datetime").date(2010, 12, 1)
    published = {}
    for cache in ("true", "false"):
        settings = Settings.from_env({**TEST_SPARK_ENV, "LAKEHOUSE_LANDING": str(tmp_path / "landing"),
                                      "LAKEHOUSE_WAREHOUSE": str(tmp_path / f"warehouse-{cache}")})
        os.environ["LAKEHOUSE_CACHE_FRAMES"] = cache
        try:
            for run in (run_bronze, run_silver, run_gold):
                run(spark, settings, ORDERS, day, "run")
        finally:
            os.environ.pop("LAKEHOUSE_CACHE_FRAMES")
        published[cache] = published_tables(spark, settings.warehouse, "orders")
    assert published["false"] == published["true"] and published["true"]["silver.orders"]
