"""lakehouse_daily in a running Airflow: `airflow standalone` started by `make airflow`'s code (real
scheduler, LocalExecutor, API server with the Data Docs plugin), the layer tasks clients of the tests'
Spark Connect server (LAKEHOUSE_RUNTIME=connect).

- A backfill of real order days gives the tables a sequential run gives: one day in `make test` (the
  backfill path through the scheduler), five in `make test-slow`, with several runs active at once and
  the layer pools keeping each layer's writers one at a time.
- The REST API triggers a run with params and reads its state: a bad events day is refused by the silver
  gate without a retry, the source left out by the params is skipped, and the task's Data Docs link opens
  the failed validation, only with a login.
- A layer task marked failed while its job runs on the Connect server has its operations stopped and its
  cached frames released there, and the tables keep their versions.
- A headless Chromium logs in, sees the backfill's runs and opens Data Docs through the plugin.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from include.config import PROJECT_ROOT, SAMPLE_ORDERS_DIR
from include.sources import ORDERS
from include.tools import airflow_stack, generate_events, stage_orders
from tests.conftest import connect_server
from tests.helpers import free_port, published_tables

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("airflow")]

# Real order days; the shop was closed on 2010-12-04, so a backfill of all five has six runs.
REAL_DAYS = [date(2010, 12, day) for day in (1, 2, 3, 5, 6)]
REST_DAY = "2010-12-07"
TERMINAL = {"success", "failed"}
ARTIFACTS = Path(os.environ.get("LAKEHOUSE_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """Airflow running on a free port with its own home, landing zone, warehouse and Data Docs."""
    root = tmp_path_factory.mktemp("airflow")
    bin_dir = str(Path(sys.executable).parent)
    stack = airflow_stack.Stack(home=root / "airflow", port=free_port())
    env = stack.environment({
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYSPARK_PYTHON": sys.executable,
        "AIRFLOW_HOME": str(stack.home),
        "AIRFLOW__API__PORT": str(stack.port),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "LAKEHOUSE_LANDING": str(root / "landing"),
        "LAKEHOUSE_WAREHOUSE": str(root / "warehouse"),
        "LAKEHOUSE_SPARK_MASTER": "local[2]",
        "LAKEHOUSE_SHUFFLE_PARTITIONS": "2",
        "LAKEHOUSE_SPARK_UI": "false",
        "LAKEHOUSE_MAX_ACTIVE_RUNS": "3",
        "LAKEHOUSE_TASK_RETRIES": "2",
    })
    env.pop("AIRFLOW_CONN_SPARK_LOCAL", None)  # the connection comes from include/orchestration.py
    landing = root / "landing"
    stage_orders.main(["--from", REAL_DAYS[0].isoformat(), "--to", REST_DAY, "--landing", str(landing)])
    connect_server()  # the tests' Spark Connect server, which the layer tasks use
    airflow_stack.start(stack, env)
    # Runs triggered through the REST API start only on an unpaused DAG, whichever test runs first.
    stack.api("PATCH", "/dags/lakehouse_daily", {"is_paused": False}, token=stack.token())
    yield stack, env, root
    airflow_stack.stop(stack, timeout=5)  # a test's leftovers need no grace


def wait_for_runs(stack, run_ids: list[str], timeout: float = 1200) -> dict[str, dict]:
    """Poll the REST API until every run is finished; each run's state and its task instances."""
    token, deadline = stack.token(), time.monotonic() + timeout
    while True:
        runs = {run_id: stack.api("GET", f"/dags/lakehouse_daily/dagRuns/{run_id}", token=token) for run_id in run_ids}
        if all(run["state"] in TERMINAL for run in runs.values()):
            return {run_id: {"state": run["state"], "logical_date": run["logical_date"],
                             "tasks": {ti["task_id"]: ti for ti in stack.api(
                                 "GET", f"/dags/lakehouse_daily/dagRuns/{run_id}/taskInstances", token=token
                             )["task_instances"]}}
                    for run_id, run in runs.items()}
        assert time.monotonic() < deadline, {run_id: run["state"] for run_id, run in runs.items()}
        time.sleep(5)


def spans(runs: dict[str, dict]) -> list[tuple[str, str, datetime, datetime]]:
    """(run id, task id, start, end) of every task instance that ran."""
    return [(run_id, task_id, datetime.fromisoformat(ti["start_date"]), datetime.fromisoformat(ti["end_date"]))
            for run_id, run in runs.items() for task_id, ti in run["tasks"].items()
            if ti["state"] == "success" and ti["start_date"] and ti["end_date"]]


@pytest.mark.parametrize("count", [pytest.param(1, id="one-real-day"),
                                   pytest.param(5, id="five-real-days", marks=pytest.mark.slow)])
def test_a_backfill_with_concurrent_runs_gives_the_tables_of_a_sequential_run(airflow, spark, count):
    stack, env, root = airflow
    days = REAL_DAYS[:count]
    calendar = [days[0] + timedelta(days=offset) for offset in range((days[-1] - days[0]).days + 1)]
    started = time.monotonic()
    # `make backfill`'s code: `airflow backfill create`, then unpause.
    airflow_stack.backfill(stack, days[0].isoformat(), days[-1].isoformat(), max_active_runs=3, env=env)
    listed = [run for run in stack.api("GET", "/dags/lakehouse_daily/dagRuns?run_type=backfill&limit=50")["dag_runs"]
              if days[0] <= date.fromisoformat(run["logical_date"][:10]) <= days[-1]]
    assert sorted(run["logical_date"][:10] for run in listed) == [day.isoformat() for day in calendar]

    runs = wait_for_runs(stack, [run["dag_run_id"] for run in listed])
    wall = time.monotonic() - started
    assert {run["state"] for run in runs.values()} == {"success"}, {
        run["logical_date"]: {task: ti["state"] for task, ti in run["tasks"].items()} for run in runs.values()}
    for run in runs.values():
        assert run["tasks"]["events.find_delivery"]["state"] == "skipped", "no events were delivered"
        if date.fromisoformat(run["logical_date"][:10]) in days:
            assert {run["tasks"][f"orders.{layer}"]["try_number"] for layer in ("bronze", "silver", "gold")} == {1}
        else:
            assert run["tasks"]["orders.bronze"]["state"] == "skipped", "no orders on a day the shop was closed"

    executed = spans(runs)
    layer_jobs = [span for span in executed if span[1].split(".")[1] in ("bronze", "silver", "gold")]
    overlapping_runs = [(a, b) for a in layer_jobs for b in layer_jobs
                        if a[0] < b[0] and a[2] < b[3] and b[2] < a[3]]
    # One day (make test) checks the backfill path; several (make test-slow) check runs at once too.
    assert overlapping_runs or count == 1, "no two runs had layer jobs running at the same time"
    same_pool = [(a, b) for a in layer_jobs for b in layer_jobs
                 if a < b and a[1] == b[1] and a[2] < b[3] and b[2] < a[3]]
    assert not same_pool, f"two jobs of one layer overlapped: {same_pool}"
    task_seconds = sum((end - start).total_seconds() for _, _, start, end in executed)
    print(f"backfill of {count} real days: {wall:.0f} s wall, {task_seconds:.0f} s of task time, "
          f"{len(overlapping_runs)} overlapping pairs of layer jobs from different runs")

    # The same days, one after the other, by the same job code in this process (without the gates,
    # which decide whether to publish, not what).
    from include.config import Settings
    from spark_jobs.bronze import run_bronze
    from spark_jobs.gold import run_gold
    from spark_jobs.silver import run_silver
    from tests.conftest import TEST_SPARK_ENV

    sequential = Settings.from_env({**TEST_SPARK_ENV, "LAKEHOUSE_GATES": "false",
                                    "LAKEHOUSE_LANDING": str(root / "landing"),
                                    "LAKEHOUSE_WAREHOUSE": str(root / f"sequential-{count}")})
    for day in days:
        run_bronze(spark, sequential, ORDERS, day, f"bronze-{day}")
        run_silver(spark, sequential, ORDERS, day, f"silver-{day}")
        run_gold(spark, sequential, ORDERS, day, f"gold-{day}")
    backfilled = published_tables(spark, root / "warehouse", "orders")
    assert backfilled == published_tables(spark, sequential.warehouse, "orders")
    lines = sum(sum(1 for _ in gzip.open(SAMPLE_ORDERS_DIR / f"{day}.csv.gz")) - 1 for day in days)
    assert len(backfilled["bronze.orders"]) == lines


def _bad_events_day(landing: Path, day: str, blank_share: float = 0.3) -> None:
    """A generated events day with `blank_share` of its user ids emptied: more quarantine than silver allows."""
    generate_events.main(["--from", day, "--days", "1", "--events-per-day", "2000", "--landing", str(landing)])
    (path,) = (landing / "events" / day).glob("*.csv")
    rows = list(csv.reader(io.StringIO(path.read_text())))
    user = rows[0].index("user_id")
    for row in rows[1:int(len(rows) * blank_share) + 1]:
        row[user] = ""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    path.write_text(out.getvalue())


def test_the_rest_api_triggers_a_run_with_params_and_reads_its_state(airflow):
    stack, env, root = airflow
    _bad_events_day(root / "landing", REST_DAY)
    token = stack.token()
    run_id = f"rest-{REST_DAY}"
    created = stack.api("POST", "/dags/lakehouse_daily/dagRuns", {
        "dag_run_id": run_id, "logical_date": f"{REST_DAY}T00:00:00Z", "conf": {"sources": ["events"]}}, token=token)
    assert created["conf"] == {"sources": ["events"]} and created["state"] in ("queued", "running")

    # The endpoint behind the UI's backfill dialog: what a backfill of the next days would run.
    dry_run = stack.api("POST", "/backfills/dry_run", {"dag_id": "lakehouse_daily", "from_date": "2010-12-08T00:00:00Z",
                                                      "to_date": "2010-12-10T00:00:00Z"}, token=token)
    assert [run["logical_date"][:10] for run in dry_run["backfills"]] == ["2010-12-08", "2010-12-09", "2010-12-10"]

    run = wait_for_runs(stack, [run_id])[run_id]
    assert run["state"] == "failed"
    states = {task: ti["state"] for task, ti in run["tasks"].items()}
    # Orders were delivered for this date too, but the run's params left them out.
    assert states["orders.find_delivery"] == "skipped"
    assert (states["events.bronze"], states["events.silver"], states["events.gold"]) == \
        ("success", "failed", "upstream_failed")
    assert run["tasks"]["events.silver"]["try_number"] == 1, "refused data is not retried (retries=2)"

    log = stack.api("GET", f"/dags/lakehouse_daily/dagRuns/{run_id}/taskInstances/events.silver/logs/1", token=token)
    text = "\n".join(json.dumps(entry) for entry in log["content"])
    assert f"silver events {REST_DAY} not published: 1 of 2 suite(s) failed" in text
    assert "refused its input" in text and "not retried" in text

    links = stack.api("GET", f"/dags/lakehouse_daily/dagRuns/{run_id}/taskInstances/events.silver/links",
                      token=token)["extra_links"]
    assert links == {"Data Docs": f"/data-docs/runs/{REST_DAY}.silver.events"}
    page = urllib.request.Request(stack.url + links["Data Docs"], headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(page, timeout=30) as response:
        body = response.read().decode()
    assert "silver.quarantine" in body and "Failed" in body and "silver.events" in body

    # Without a login the plugin serves nothing: 401 for a client, the login page for a browser.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(stack.url + links["Data Docs"], timeout=30)
    assert refused.value.code == 401
    no_redirect = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirected:
        no_redirect.open(urllib.request.Request(stack.url + "/data-docs/", headers={"Accept": "text/html"}))
    assert redirected.value.code == 303 and "/auth/login" in redirected.value.headers["Location"]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_a_browser_logs_in_sees_the_backfill_runs_and_opens_data_docs(airflow):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    stack, env, root = airflow
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        message = "Debian's chromium and chromium-driver are not installed (make browser installs them)"
        if os.environ.get("LAKEHOUSE_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    backfill_runs = [run["dag_run_id"] for run in
                     stack.api("GET", "/dags/lakehouse_daily/dagRuns?run_type=backfill&limit=50")["dag_runs"]]
    assert backfill_runs, "the backfill test ran first"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)
    wait = WebDriverWait(browser, 60)
    try:
        browser.get(stack.url + "/")
        wait.until(lambda b: "/auth/login" in b.current_url)
        wait.until(lambda b: b.find_elements(By.NAME, "username"))  # the login form renders after the URL changes
        browser.find_element(By.NAME, "username").send_keys(airflow_stack.USER)
        browser.find_element(By.NAME, "password").send_keys(stack.password())
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda b: "/auth/login" not in b.current_url)

        browser.get(stack.url + "/dags/lakehouse_daily/runs")
        wait.until(lambda b: all(run_id in b.find_element(By.TAG_NAME, "body").text for run_id in backfill_runs))
        browser.save_screenshot(str(ARTIFACTS / "airflow-backfill-runs.png"))

        browser.get(stack.url + "/plugin/data-docs")
        frame = wait.until(lambda b: b.find_elements(By.TAG_NAME, "iframe"))[0]
        assert urllib.parse.urlparse(frame.get_attribute("src")).path == "/data-docs/"
        browser.switch_to.frame(frame)
        # The index lists the newest validations first: the REST test's refused day.
        wait.until(lambda b: f"{REST_DAY}.silver.events" in "".join(b.find_element(By.TAG_NAME, "body").text.split()))
        browser.switch_to.default_content()
        browser.save_screenshot(str(ARTIFACTS / "airflow-data-docs.png"))

        # A layer task's Details tab has the Data Docs button; it opens that date's validations.
        first = next(run for run in stack.api("GET", "/dags/lakehouse_daily/dagRuns?run_type=backfill")["dag_runs"]
                     if run["logical_date"].startswith(REAL_DAYS[0].isoformat()))
        browser.get(f"{stack.url}/dags/lakehouse_daily/runs/{first['dag_run_id']}/tasks/orders.gold/details")
        button = wait.until(lambda b: [link for link in b.find_elements(By.XPATH, "//a[contains(., 'Data Docs')]")
                                       if link.is_displayed()])[0]
        assert urllib.parse.urlparse(button.get_attribute("href")).path == f"/data-docs/runs/{REAL_DAYS[0]}.gold.orders"
        button.click()
        wait.until(lambda b: "/data-docs/runs/" in b.current_url)
        assert "gold.daily_sales" in browser.find_element(By.TAG_NAME, "body").text
        assert "Passed" in browser.find_element(By.TAG_NAME, "body").text

        # Logged out, the same address leads to the login page and shows no validation.
        browser.delete_all_cookies()
        browser.get(stack.url + "/data-docs/")
        wait.until(lambda b: "/auth/login" in b.current_url)
        assert "silver.orders" not in browser.page_source
    finally:
        browser.quit()


KILL_DAY = "2010-12-09"


def test_a_task_marked_failed_stops_its_operations_on_the_server_and_publishes_nothing(airflow, spark):
    from include.config import Settings
    from include.spark import session_id_for
    from include.tools import spark_connect
    from spark_jobs import tables

    stack, env, root = airflow
    settings = Settings.from_env(env)
    # A day large enough for bronze to be busy on the server well beyond the few seconds a task takes to learn
    # that it was marked failed (its next heartbeat) and stop.
    generate_events.main(["--from", KILL_DAY, "--days", "1", "--events-per-day", "1000000",
                          "--landing", str(root / "landing")])

    def published() -> dict[str, int]:
        """The killed date's rows in bronze (other tests' runs may write other dates meanwhile)."""
        columns = {"events": "_ingestion_date", "ingested_files": "source = 'events' AND ingestion_date"}
        return {name: (tables.read(spark, path).where(f"{column} = DATE'{KILL_DAY}'").count()
                       if tables.exists(spark, path) else 0)
                for name, column in columns.items() for path in [settings.table_path("bronze", name)]}

    before = published()
    token = stack.token()
    run_id = f"kill-{KILL_DAY}"
    stack.api("POST", "/dags/lakehouse_daily/dagRuns", {
        "dag_run_id": run_id, "logical_date": f"{KILL_DAY}T00:00:00Z", "conf": {"sources": ["events"]}}, token=token)
    task = f"/dags/lakehouse_daily/dagRuns/{run_id}/taskInstances/events.bronze"
    session = session_id_for("lakehouse_daily", run_id, "events.bronze", -1, 1)

    def running_statements() -> list[dict]:
        return [query for query in spark_connect.ui_state(settings, "sql?length=100000&details=false")
                if query["status"] == "RUNNING" and session in query["description"]]

    deadline = time.monotonic() + 300
    while not running_statements():
        assert stack.api("GET", task, token=token)["state"] in (None, "scheduled", "queued", "running"), \
            "the task ended before its job ran on the server"
        assert time.monotonic() < deadline, "the task's job never ran on the Connect server"
        time.sleep(0.5)
    killed_at = time.monotonic()
    stack.api("PATCH", task, {"new_state": "failed"}, token=token)

    deadline = time.monotonic() + 120
    owner = session.replace("-", "")[:12]
    while True:
        left = running_statements()
        cached = [rdd["name"] for rdd in spark_connect.ui_state(settings, "storage/rdd") if owner in rdd["name"]]
        if not left and not cached:
            break
        assert time.monotonic() < deadline, f"still on the server after the kill: {len(left)} running, cached {cached}"
        time.sleep(1)
    print(f"events.bronze marked failed: its operations stopped and its cache freed "
          f"{time.monotonic() - killed_at:.1f} s later")
    run = wait_for_runs(stack, [run_id])[run_id]
    assert run["tasks"]["events.bronze"]["state"] == "failed"
    assert run["tasks"]["events.silver"]["state"] in ("upstream_failed", None)
    assert published() == before == {"events": 0, "ingested_files": 0}
