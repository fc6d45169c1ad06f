"""The fault suite: what goes wrong around the data (a bad setting or suite file, an empty, unreadable or
unrecognised delivery, a job killed after its first commit or at a random moment, the Spark Connect server
killed mid-run, two writers of a layer at once, dates run out of order and again with the gates on, the same
file under two dates, a line of 10 MB, bronze rows or the fingerprint index lost, silver made again, a silent
source, a refused gold run, hostile values in Data Docs, a moved warehouse, a full disk) fails loudly and
specifically, and loses no published row.

Each case records a row of the table printed at the end of the run (tests/conftest.py). `make test-faults`
runs the suite (the cases also marked `slow` included); `make test` runs the fast ones.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from datetime import date

import pytest

from include.config import PROJECT_ROOT, ConfigurationError
from include.sources import ORDERS
from spark_jobs.bronze import run_bronze
from spark_jobs.silver import run_silver
from tests.helpers import deliver

pytestmark = pytest.mark.faults

DAY = date(2010, 12, 1)
ORDER_LINE = "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,United Kingdom"


@pytest.fixture
def fault(request):
    """Records the case for the fault suite's table (tests/conftest.py prints it): what was done, what the
    lakehouse did, and how many rows that were there before are gone after (must be 0; '-' where no
    published rows were at stake)."""
    def record(case: str, done: str, outcome: str, rows_lost: int | str = "-") -> None:
        request.node.user_properties.append(("fault", {"case": case, "done": done, "outcome": outcome,
                                                       "rows_lost": rows_lost}))
    return record


def _job_arguments(layer: str, *options: str) -> list[str]:
    return ["--source", "orders", "--ingestion-date", DAY.isoformat(), "--run-id", f"faults-{layer}", *options]


def _point_jobs_at(monkeypatch, settings) -> None:
    """The jobs read their settings from the environment: this test's landing zone and warehouse."""
    for name, value in (("LAKEHOUSE_LANDING", settings.landing), ("LAKEHOUSE_WAREHOUSE", settings.warehouse),
                        ("LAKEHOUSE_GX_ROOT", settings.gx_root), ("LAKEHOUSE_DATA_DOCS", settings.data_docs)):
        monkeypatch.setenv(name, str(value))


def test_a_bad_setting_exits_with_the_configuration_status_and_says_so(monkeypatch, capsys, fault):
    from spark_jobs.bronze import JOB

    monkeypatch.setenv("LAKEHOUSE_GATES", "maybe")
    with pytest.raises(SystemExit) as exited:
        JOB.main(_job_arguments("bronze"))
    assert exited.value.code == 3
    logged = capsys.readouterr().out  # the job logs to its standard output, as under spark-submit
    assert "ERROR lakehouse.bronze: configuration error, not a problem with the data" in logged
    assert "LAKEHOUSE_GATES='maybe': expected true or false" in logged
    fault("bad setting", "LAKEHOUSE_GATES=maybe, bronze job", "exit 3, names the setting")


def test_a_broken_suite_file_is_a_configuration_error_not_refused_data(spark, lakehouse, monkeypatch, tmp_path,
                                                                       fault):
    """A suite file the gate cannot read stops the job as a configuration error (exit status 3, failed
    without retries, the log saying what to fix), where it used to be reported as refused input (gold) and
    nothing was written."""
    from expectations import gate
    from spark_jobs.gold import JOB as GOLD

    deliver(lakehouse, "orders", DAY.isoformat(), "day.csv", f"{ORDERS.header}\n{ORDER_LINE}\n")
    ungated = dataclasses.replace(lakehouse, gates=False)
    run_bronze(spark, ungated, ORDERS, DAY, "bronze")
    run_silver(spark, ungated, ORDERS, DAY, "silver")

    suites = tmp_path / "suites"
    shutil.copytree(gate.SUITES_DIR, suites, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (suites / "gold.daily_sales.yml").write_text(
        "suite: gold.daily_sales\nexpectations:\n  - expect_column_values_to_be_tasty: {column: revenue}\n")
    monkeypatch.setattr(gate, "SUITES_DIR", suites)
    _point_jobs_at(monkeypatch, lakehouse)
    with pytest.raises(ConfigurationError, match="GX has no expectation 'expect_column_values_to_be_tasty'"):
        GOLD.execute(_job_arguments("gold"), spark=spark)
    assert not (lakehouse.warehouse / "gold" / "daily_sales").exists(), "nothing published"

    # A gold option that does not exist is the same kind of error, not refused data.
    with pytest.raises(ConfigurationError, match="argument --refresh: invalid choice: 'sideways'"):
        GOLD.execute(_job_arguments("gold", "--refresh", "sideways"), spark=spark)
    fault("broken suite file", "unknown expectation in gold.daily_sales.yml", "configuration error, nothing written")
    fault("bad job option", "gold --refresh sideways", "configuration error, not refused data")


def test_the_connect_task_fails_a_configuration_error_without_retries(spark, lakehouse, monkeypatch, fault):
    """In a process of its own, as an Airflow task runs it (its session's release would end the test
    process's own session otherwise)."""
    import subprocess
    import sys

    _point_jobs_at(monkeypatch, lakehouse)
    script = f"""
from types import SimpleNamespace
from airflow.sdk.exceptions import AirflowFailException
from include.config import get_settings
from include.orchestration import LayerConnectOperator
task = LayerConnectOperator(layer="gold", source="orders", settings=get_settings(), options=["--refresh", "sideways"])
task.job_arguments = {_job_arguments("gold", "--refresh", "sideways")!r}  # as Airflow renders them
ti = SimpleNamespace(dag_id="faults", run_id="config", task_id="orders.gold", map_index=-1, try_number=1)
try:
    task.execute({{"ti": ti}})
except AirflowFailException as error:
    print("AirflowFailException:", error)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"AirflowFailException: .*configuration error .*invalid choice.*not retried", done.stdout), \
        done.stdout + done.stderr
    fault("configuration error in a task", "connect task, bad gold option", "failed, not retried")


def _bronze_rows(spark, settings, day: date) -> int:
    from spark_jobs import tables

    return tables.read(spark, settings.table_path("bronze", "orders")).where(f"_ingestion_date = '{day}'").count()


def test_an_empty_redelivery_does_not_replace_a_date_s_rows_unless_marked_empty(spark, lakehouse, fault):
    """A header-only file, or a folder without a data file, over a date that holds rows is refused (a
    sender's failed export looks like that); `_EMPTY` in the folder says the date is empty on purpose.
    Upper-case suffixes are deliveries too."""
    import gzip

    from include.landing import DeliveryError

    folder = lakehouse.landing_dir("orders", DAY.isoformat())
    deliver(lakehouse, "orders", DAY.isoformat(), "DAY.CSV.GZ", gzip.compress(f"{ORDERS.header}\n{ORDER_LINE}\n"
                                                                               f"{ORDER_LINE}\n".encode()))
    assert run_bronze(spark, lakehouse, ORDERS, DAY, "upper-case").rows == 2

    for name in folder.iterdir():
        name.unlink()
    deliver(lakehouse, "orders", DAY.isoformat(), "day.csv", f"{ORDERS.header}\n")
    with pytest.raises(DeliveryError, match="no data lines .* bronze holds 2 rows for that date"):
        run_bronze(spark, lakehouse, ORDERS, DAY, "header only")
    (folder / "day.csv").unlink()
    (folder / "notes.txt").write_text("export failed\n")
    with pytest.raises(DeliveryError, match="put an empty file named _EMPTY"):
        run_bronze(spark, lakehouse, ORDERS, DAY, "nothing recognised")
    assert _bronze_rows(spark, lakehouse, DAY) == 2, "the date keeps its rows"
    fault("header-only redelivery", "day.csv with a header only over 2 rows", "refused, names _EMPTY",
          2 - _bronze_rows(spark, lakehouse, DAY))
    fault("unrecognised redelivery", "notes.txt only over 2 rows", "refused, names _EMPTY",
          2 - _bronze_rows(spark, lakehouse, DAY))
    fault("upper-case suffix", "DAY.CSV.GZ", "loaded, 2 rows", 0)

    (folder / "_EMPTY").touch()
    assert run_bronze(spark, lakehouse, ORDERS, DAY, "empty on purpose").rows == 0
    assert _bronze_rows(spark, lakehouse, DAY) == 0


def test_an_unreadable_delivery_is_refused_by_name_and_the_date_keeps_its_rows(spark, lakehouse, fault):
    """A redelivery that cannot be read whole (a 0-byte file, a gzip cut short, a plain file named .gz, a
    UTF-16 export) is refused before anything is written, with the file and what is wrong in the message;
    the date keeps the rows an earlier delivery gave it."""
    import gzip

    from include.landing import DeliveryError

    folder = lakehouse.landing_dir("orders", DAY.isoformat())
    good = f"{ORDERS.header}\n{ORDER_LINE}\n{ORDER_LINE}\n"
    deliver(lakehouse, "orders", DAY.isoformat(), "day.csv.gz", good, compress=True)
    assert run_bronze(spark, lakehouse, ORDERS, DAY, "first delivery").rows == 2
    cases = [
        ("0-byte file", "day.csv", b"", "day.csv: the file is empty"),
        ("corrupt gzip", "day.csv.gz", gzip.compress(good.encode())[:-12],
         "day.csv.gz: cannot be read as gzip-compressed CSV"),
        ("plain file named .gz", "day.csv.gz", good.encode(), "day.csv.gz: cannot be read as gzip-compressed CSV"),
        ("non-UTF-8 header", "day.csv", good.encode("utf-16"), "day.csv: the header line is not valid UTF-8"),
    ]
    for case, name, content, message in cases:
        for entry in folder.iterdir():
            entry.unlink()
        deliver(lakehouse, "orders", DAY.isoformat(), name, content)
        with pytest.raises(DeliveryError, match=re.escape(message)):
            run_bronze(spark, lakehouse, ORDERS, DAY, case)
        lost = 2 - _bronze_rows(spark, lakehouse, DAY)
        assert lost == 0, f"{case}: the date lost {lost} rows"
        fault(case, f"{name} ({len(content):,} bytes) over 2 rows", "refused, names the file", lost)


def test_a_moved_warehouse_runs_at_once(spark, tmp_path, fault):
    """Airflow registered the tables' assets at the old warehouse's paths; pointed at a new warehouse, the next
    run must not stop on 'inactive assets' (only a scheduler would ever retire the old ones)."""
    import json
    import re
    import subprocess

    from tests.helpers import airflow_env, prepare_airflow_db

    landing = tmp_path / "landing"
    (landing / "orders" / DAY.isoformat()).mkdir(parents=True)
    (landing / "orders" / DAY.isoformat() / "day.csv").write_text(f"{ORDERS.header}\n{ORDER_LINE}\n")
    env = airflow_env(tmp_path / "airflow", LAKEHOUSE_LANDING=str(landing), LAKEHOUSE_TASK_RETRIES="0",
                      LAKEHOUSE_WAREHOUSE=str(tmp_path / "old" / "warehouse"))
    prepare_airflow_db(env)
    done = subprocess.run(["airflow", "dags", "reserialize"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    moved = {**env, "LAKEHOUSE_WAREHOUSE": str(tmp_path / "new" / "warehouse")}
    done = subprocess.run(["airflow", "dags", "test", "lakehouse_daily", DAY.isoformat(),
                           "--conf", json.dumps({"sources": ["orders"]})],
                          env=moved, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert "inactive assets" not in output, [line for line in output.splitlines() if "inactive assets" in line]
    assert re.findall(r"DagRun Finished: dag_id=lakehouse_daily, logical_date=" + DAY.isoformat() +
                      r".*?state=(\w+)", output) == ["success"], output[-5000:]
    assert (tmp_path / "new" / "warehouse" / "gold" / "daily_sales" / "_delta_log").is_dir()
    fault("moved warehouse", "dags test after LAKEHOUSE_WAREHOUSE moved", "run succeeded, assets active")


class _Alerts:
    """A real HTTP endpoint that records the alerts posted to it."""

    def __init__(self):
        import http.server
        import json
        import threading

        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                 "body": json.loads(body)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def connection(self, token: str) -> str:
        import json

        return json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": self.server.server_address[1],
                           "password": token, "extra": {"path": "/hooks/lakehouse"}})


class _Mailbox:
    """A real SMTP server on 127.0.0.1 (the commands smtplib sends: EHLO/HELO, AUTH PLAIN, MAIL, RCPT, DATA,
    RSET, NOOP, QUIT) that keeps every login and message it is given."""

    def __init__(self):
        import socketserver
        import threading

        messages, logins = self.messages, self.logins = [], []

        class Session(socketserver.StreamRequestHandler):
            def handle(self):
                def say(line: str) -> None:
                    self.wfile.write(line.encode() + b"\r\n")
                    self.wfile.flush()

                say("220 127.0.0.1 test mailbox")
                envelope = {"from": None, "to": []}
                for raw in self.rfile:
                    command = raw.decode("utf-8", "replace").rstrip("\r\n")
                    verb = command[:4].upper()
                    if verb == "EHLO":
                        say("250-127.0.0.1")
                        say("250 AUTH PLAIN")
                    elif verb == "HELO":
                        say("250 127.0.0.1")
                    elif verb == "AUTH":
                        import base64

                        _, user, secret = base64.b64decode(command.split()[-1]).decode().split("\0")
                        logins.append((user, secret))
                        say("235 authenticated")
                    elif verb == "MAIL":
                        envelope = {"from": command.split(":", 1)[1].strip(), "to": []}
                        say("250 OK")
                    elif verb == "RCPT":
                        envelope["to"].append(command.split(":", 1)[1].strip())
                        say("250 OK")
                    elif verb == "DATA":
                        say("354 end with <CRLF>.<CRLF>")
                        lines = []
                        for data in self.rfile:
                            if data in (b".\r\n", b".\n"):
                                break
                            lines.append(data.decode("utf-8", "replace"))
                        messages.append({**envelope, "data": "".join(lines)})
                        say("250 OK")
                    elif verb == "QUIT":
                        say("221 bye")
                        return
                    else:  # RSET, NOOP
                        say("250 OK")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Session)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def connection(self, password: str) -> str:
        import json

        return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": self.server.server_address[1],
                           "login": "lakehouse", "password": password,
                           "extra": {"to": "data-team@example.com", "from_email": "lakehouse@example.com",
                                     "disable_ssl": True, "disable_tls": True}})


def test_a_failure_is_mailed_through_an_smtp_alert_connection(monkeypatch, capfd, caplog, fault):
    """With LAKEHOUSE_ALERT_CONN_ID naming an SMTP connection, a failed task's alert reaches the mail server:
    to the connection's addresses, naming the task, the run and the error; its password is never logged."""
    import email

    from include.alerts import LakehouseFailureNotifier

    mailbox, password = _Mailbox(), "smtp-password-that-must-not-be-logged"
    monkeypatch.setenv("AIRFLOW_CONN_LAKEHOUSE_MAIL", mailbox.connection(password))

    class TaskInstance:
        dag_id, run_id, task_id, try_number = "lakehouse_daily", "scheduled__2010-12-02", "orders.silver", 2
        log_url = "http://localhost:8080/dags/lakehouse_daily/runs/scheduled__2010-12-02/tasks/orders.silver"

    with caplog.at_level("INFO", logger="lakehouse.alerts"):
        LakehouseFailureNotifier("lakehouse_mail").notify(
            {"ti": TaskInstance(), "exception": RuntimeError("silver orders 2010-12-02 not published: 1 of 4 "
                                                             "suite(s) failed"), "logical_date": "2010-12-02"})
    # Where the lines go depends on whether Airflow's logging was set up in this process: its handler on the
    # standard output, or the standard logging records.
    logged = caplog.text + "".join(capfd.readouterr())
    assert "failure alert mailed to data-team@example.com through connection lakehouse_mail" in logged, logged
    assert password not in logged
    assert mailbox.logins == [("lakehouse", password)]
    (message,) = mailbox.messages
    assert "data-team@example.com" in message["to"][0] and "lakehouse@example.com" in message["from"]
    mail = email.message_from_string(message["data"])
    assert mail["Subject"] == "lakehouse: orders.silver failed (lakehouse_daily scheduled__2010-12-02)"
    body = "".join(part.get_payload(decode=True).decode() for part in mail.walk() if not part.is_multipart())
    assert "not published: 1 of 4 suite(s) failed" in body and "try_number: 2" in body
    fault("failure alert by mail", "a failed silver task, SMTP alert connection", "mailed, password not logged")


def test_a_source_that_stopped_delivering_fails_its_run_loudly_and_alerts(spark, tmp_path, fault):
    """A date without a delivery is skipped while the source's last delivery is recent; once it is
    LAKEHOUSE_STALE_AFTER_DAYS_<SOURCE> days old the run fails, and the failure is logged and posted to the
    alert connection (its token in the request, never in the log)."""
    import json
    import re
    import subprocess

    from include.config import Settings
    from include.orchestration import stale_source_message
    from tests.helpers import airflow_env, prepare_airflow_db

    landing = tmp_path / "landing"
    (landing / "orders" / "2010-12-01").mkdir(parents=True)
    (landing / "orders" / "not-a-date").mkdir()
    settings = Settings.from_env({"LAKEHOUSE_LANDING": str(landing), "LAKEHOUSE_STALE_AFTER_DAYS_ORDERS": "14"})
    assert stale_source_message(settings, "orders", "2010-11-30") is None, "before the first delivery"
    assert stale_source_message(settings, "orders", "2010-12-14") is None, "13 days: the shop may be closed"
    assert "none since 2010-12-01 (14 days)" in stale_source_message(settings, "orders", "2010-12-15")
    assert stale_source_message(settings, "events", "2010-12-15") is None, "a source that never delivered"
    off = Settings.from_env({"LAKEHOUSE_LANDING": str(landing), "LAKEHOUSE_STALE_AFTER_DAYS_ORDERS": "0"})
    assert stale_source_message(off, "orders", "2011-06-01") is None

    alerts, token = _Alerts(), "alert-token-that-must-not-be-logged"
    env = airflow_env(tmp_path / "airflow", LAKEHOUSE_LANDING=str(landing), LAKEHOUSE_TASK_RETRIES="0",
                      LAKEHOUSE_WAREHOUSE=str(tmp_path / "warehouse"), LAKEHOUSE_ALERT_CONN_ID="lakehouse_alerts",
                      AIRFLOW_CONN_LAKEHOUSE_ALERTS=alerts.connection(token))
    prepare_airflow_db(env)
    try:
        done = subprocess.run(["airflow", "dags", "test", "lakehouse_daily", "2010-12-20",
                               "--conf", json.dumps({"sources": ["orders"]})],
                              env=env, capture_output=True, text=True, timeout=600)
    finally:
        alerts.server.shutdown()
    output = done.stdout + done.stderr
    assert re.findall(r"DagRun Finished: dag_id=lakehouse_daily, logical_date=2010-12-20.*?state=(\w+)",
                      output) == ["failed"], output[-5000:]
    assert "no orders delivery for 2010-12-20, and none since 2010-12-01 (19 days)" in output
    assert "lakehouse task failed:" in output
    assert token not in output
    (alert,) = [item for item in alerts.received if item["body"]["task_id"] == "orders.find_delivery"]
    assert alert["path"] == "/hooks/lakehouse" and alert["authorization"] == f"Bearer {token}"
    assert alert["body"]["dag_id"] == "lakehouse_daily" and "none since 2010-12-01" in alert["body"]["error"]
    fault("source stopped delivering", "no orders for 19 days, alert connection", "run failed, alert posted")


def test_a_refused_gold_run_writes_no_rollup_either(spark, lakehouse, monkeypatch, fault):
    """Write-audit-publish holds for every table a job writes: a gold run whose marts fail their gate leaves
    the rollups it would have refreshed (gold/rollup_*) at their previous versions too."""
    import spark_jobs.transforms.gold as transforms
    from include.sources import EVENTS
    from include.tools import generate_events
    from spark_jobs import tables
    from spark_jobs.gold import run_gold

    days = [date(2019, 10, 1), date(2019, 10, 2)]
    generate_events.main(["--from", days[0].isoformat(), "--days", "2", "--events-per-day", "300",
                          "--landing", str(lakehouse.landing)])
    ungated = dataclasses.replace(lakehouse, gates=False)
    for day in days:
        run_bronze(spark, ungated, EVENTS, day, "bronze")
    run_silver(spark, ungated, EVENTS, days[0], "silver")
    run_gold(spark, lakehouse, EVENTS, days[0], "good")
    rollups = [mart.rollup.table for mart in transforms.marts_of("events") if mart.rollup is not None]
    assert rollups, "the events marts keep rollups"

    def versions() -> dict[str, int]:
        return {table: tables.version(spark, lakehouse.table_location("gold", table)) for table in rollups}

    def rows() -> int:
        return sum(tables.read(spark, lakehouse.table_location("gold", table)).count() for table in rollups)

    before, rows_before = versions(), rows()
    real = transforms.marts_of

    def nameless(aggregate):
        from pyspark.sql import functions as F

        return lambda rows: aggregate(rows).withColumn("product_id", F.lit(None).cast("bigint"))

    broken = [dataclasses.replace(mart, aggregate=nameless(mart.aggregate)) if mart.table == "product_conversion"
              else mart for mart in real("events")]
    monkeypatch.setattr(transforms, "marts_of", lambda source: tuple(broken) if source == "events" else real(source))
    run_silver(spark, ungated, EVENTS, days[1], "silver")
    from expectations.gate import GateFailed

    with pytest.raises(GateFailed, match="gold.product_conversion"):
        run_gold(spark, lakehouse, EVENTS, days[1], "broken")
    assert versions() == before, "a refused gold run refreshed a rollup"
    fault("gold gate fails", "product_conversion without product ids", "refused, rollups unchanged",
          rows_before - rows())

    monkeypatch.setattr(transforms, "marts_of", real)
    run_gold(spark, lakehouse, EVENTS, days[1], "fixed")
    assert all(versions()[table] > before[table] for table in rollups)


def test_duplicates_do_not_refuse_a_date_and_an_operator_can_accept_a_refused_one(spark, lakehouse, fault):
    """A clickstream day whose exact duplicate clicks are 6% of its lines passes the 5% events threshold:
    duplicates are counted apart from defects. A day refused for its defects is accepted when the run raises
    the threshold (the run's max_quarantine_share), and the silver log says so."""
    import csv
    import gzip
    import io

    from expectations.gate import GateFailed
    from include.sources import EVENTS
    from include.tools import generate_events

    day = date(2019, 10, 3)
    generate_events.main(["--from", day.isoformat(), "--days", "1", "--events-per-day", "500", "--defect-rate", "0",
                          "--landing", str(lakehouse.landing)])
    (path,) = lakehouse.landing_dir("events", day.isoformat()).iterdir()
    content = (gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()).decode()
    lines = content.splitlines()
    doubled = lines + lines[1:31]  # 30 of 500 clicks delivered twice: 30 / 530 = 5.7% of the lines
    path.unlink()
    deliver(lakehouse, "events", day.isoformat(), "events.csv", "\n".join(doubled) + "\n")
    run_bronze(spark, lakehouse, EVENTS, day, "bronze")
    result = run_silver(spark, lakehouse, EVENTS, day, "duplicates")
    assert (result.silver_rows, result.quarantined_rows, result.duplicate_rows) == (500, 30, 30)

    rows = list(csv.reader(io.StringIO(content)))
    user = rows[0].index("user_id")
    for row in rows[1:41]:  # 40 of 500 clicks without a user: 8% defects, over the 5% threshold
        row[user] = ""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    deliver(lakehouse, "events", day.isoformat(), "events.csv", out.getvalue())
    run_bronze(spark, lakehouse, EVENTS, day, "bronze again")
    with pytest.raises(GateFailed, match="'defective_rows': 40"):
        run_silver(spark, lakehouse, EVENTS, day, "refused")
    accepted = run_silver(spark, lakehouse, EVENTS, day, "accepted", max_quarantine_share=0.1)
    assert (accepted.silver_rows, accepted.quarantined_rows, accepted.duplicate_rows) == (460, 40, 0)
    fault("duplicate clicks 5.7%", "30 of 500 events delivered twice", "published, 30 duplicates apart",
          530 - result.silver_rows - result.quarantined_rows)
    fault("defects 8%, operator accepts", "max_quarantine_share 0.1 after a refusal", "published 460 + 40",
          500 - accepted.silver_rows - accepted.quarantined_rows)


SCRIPT = "<script>alert(1)</script>"


def test_a_delivered_script_in_a_failure_sample_is_shown_escaped(spark, lakehouse, monkeypatch, tmp_path, fault):
    """Data Docs pages show delivered values (failure samples): HTML in them must be text, not markup, in
    GX's own column samples and in the SQL checks' sample rows this project renders."""
    from expectations import gate

    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "silver.events.yml").write_text(
        "suite: silver.events\nexpectations:\n"
        "  - expect_column_values_to_be_in_set: {column: event_type, value_set: [view, cart, purchase]}\n"
        "  - unexpected_rows:\n      description: no event type outside the known ones\n"
        "      query: SELECT event_type FROM {batch} WHERE event_type NOT IN ('view', 'cart', 'purchase')\n")
    monkeypatch.setattr(gate, "SUITES_DIR", suites)
    frame = spark.createDataFrame([("view",), (SCRIPT,)], "event_type STRING")
    with pytest.raises(gate.GateFailed) as failure:
        gate.audit(spark, lakehouse, "silver", "events", DAY, [gate.Check("events", frame)])
    (page,) = lakehouse.data_docs.glob("validations/silver/events/*/*/*.html")
    text = page.read_text()
    assert SCRIPT not in text, "a delivered value is rendered as markup"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text or "&lt;script&gt;alert(1)&lt;&#x2F;script&gt;" in text
    assert SCRIPT in str(failure.value), "the task log keeps the value as delivered"
    fault("script in a failure sample", "<script> as an event type", "escaped in Data Docs")


def test_the_data_docs_plugin_serves_nothing_outside_its_site(lakehouse, monkeypatch, tmp_path, fault):
    """Encoded `..` in a Data Docs URL cannot reach files beside the site (served by the plugin's own app, the
    login dependency replaced by a signed-in user)."""
    from fastapi.testclient import TestClient

    import plugins.lakehouse_data_docs as plugin

    site = tmp_path / "site"
    (site / "validations").mkdir(parents=True)
    (site / "index.html").write_text("<html>site</html>")
    (tmp_path / "secret.txt").write_text("not for the web")
    monkeypatch.setattr(plugin, "_site", lambda: site)
    plugin.app.dependency_overrides[plugin.logged_in_user] = lambda: "someone"
    try:
        client = TestClient(plugin.app)
        assert client.get("/index.html").text == "<html>site</html>"
        for path in ("/..%2fsecret.txt", "/..%2F..%2Fsecret.txt", "/validations/..%2f..%2fsecret.txt",
                     "/%2e%2e/secret.txt", "/validations/%2e%2e%2f%2e%2e%2fsecret.txt"):
            response = client.get(path)
            assert response.status_code == 404 and "not for the web" not in response.text, path
        assert client.get("/runs/..%2f..%2fsecret.txt").status_code == 404
        fault("encoded .. in a Data Docs URL", "/data-docs/..%2f..%2fsecret.txt and others", "404")
    finally:
        plugin.app.dependency_overrides.clear()


LINE_B = "536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,1.85,17850,United Kingdom"
LINE_C = "536367,84879,ASSORTED COLOUR BIRD ORNAMENT,32,2010-12-01 08:34:00,1.69,13047,United Kingdom"


def _silver_rows(spark, settings, day: date) -> int:
    from spark_jobs import tables

    return tables.read(spark, settings.table_location("silver", "orders")).where(f"_ingestion_date = '{day}'").count()


def _two_order_days(spark, settings, first: list[str], second: list[str]) -> list[date]:
    """2010-12-01 and 2010-12-02 delivered with these order lines and loaded into bronze."""
    days = [date(2010, 12, 1), date(2010, 12, 2)]
    for day, lines in zip(days, (first, second)):
        deliver(settings, "orders", day.isoformat(), "day.csv", "\n".join([ORDERS.header, *lines]) + "\n")
        run_bronze(spark, dataclasses.replace(settings, gates=False), ORDERS, day, "bronze")
    return days


def test_silver_refuses_to_empty_a_later_date_whose_bronze_rows_were_lost(spark, lakehouse, fault):
    """Deciding a date again (it shares rows with an earlier date processed after it) rebuilds it from bronze;
    where bronze lost that date's rows, silver refuses rather than delete what it published."""
    from expectations.gate import GateFailed
    from spark_jobs import tables

    days = _two_order_days(spark, lakehouse, [ORDER_LINE], [ORDER_LINE, LINE_B])
    ungated = dataclasses.replace(lakehouse, gates=False)
    run_silver(spark, lakehouse, ORDERS, days[1], "silver day 2")
    assert _silver_rows(spark, lakehouse, days[1]) == 2
    spark.sql(f"DELETE FROM {tables.sql_name(lakehouse.table_location('bronze', 'orders'))} "
              f"WHERE _ingestion_date = DATE'{days[1]}'")
    with pytest.raises(GateFailed, match=r"2010-12-02 \(0 rows, where silver and quarantine hold 2\)"):
        run_silver(spark, lakehouse, ORDERS, days[0], "silver day 1")
    fault("bronze of a later date lost", "bronze 2010-12-02 deleted, silver 2010-12-01 run", "refused",
          2 - _silver_rows(spark, lakehouse, days[1]))

    run_bronze(spark, ungated, ORDERS, days[1], "bronze again")  # the delivery is still in the landing zone
    run_silver(spark, lakehouse, ORDERS, days[0], "silver day 1 again")
    assert (_silver_rows(spark, lakehouse, days[0]), _silver_rows(spark, lakehouse, days[1])) == (1, 1), \
        "day 1 keeps the shared line, day 2 its own one"


def test_a_lost_fingerprint_index_is_rebuilt_and_still_catches_duplicates(spark, lakehouse, fault):
    """Without silver/fingerprints a later date's copy of an earlier row would be kept as new: the dates
    silver holds and the index does not are decided again from bronze, which rebuilds their entries."""
    days = _two_order_days(spark, lakehouse, [ORDER_LINE, LINE_B], [ORDER_LINE, LINE_C])
    run_silver(spark, lakehouse, ORDERS, days[0], "silver day 1")
    shutil.rmtree(lakehouse.warehouse / "silver" / "fingerprints")
    result = run_silver(spark, lakehouse, ORDERS, days[1], "silver day 2")
    assert (result.silver_rows, result.duplicate_rows) == (1, 1), "day 2's copy of day 1's line is a duplicate"
    assert _silver_rows(spark, lakehouse, days[0]) == 2
    fault("fingerprint index deleted", "silver/fingerprints removed, next date run", "index rebuilt, duplicate caught",
          2 - _silver_rows(spark, lakehouse, days[0]))


def test_gold_rebuilds_from_a_silver_table_made_again_past_its_version(spark, lakehouse, fault):
    """Gold keys its progress on silver's version and table id: a silver table deleted and built again up to
    a later version than the marts saw must not be read as a change feed continuing the old one."""
    from spark_jobs import tables
    from spark_jobs.gold import run_gold
    from spark_jobs.transforms.gold import marts_of

    days = [date(2010, 12, 1), date(2010, 12, 2), date(2010, 12, 3)]
    lines = [ORDER_LINE, LINE_B, LINE_C]
    ungated = dataclasses.replace(lakehouse, gates=False)
    for day, line in zip(days, lines):
        deliver(lakehouse, "orders", day.isoformat(), "day.csv", f"{ORDERS.header}\n{line}\n")
        run_bronze(spark, ungated, ORDERS, day, "bronze")
    run_silver(spark, ungated, ORDERS, days[0], "silver")
    run_gold(spark, ungated, ORDERS, days[0], "gold")  # reflects silver version 0
    for table in ("orders", "fingerprints", "quarantine", "dim_customer", "dim_product"):
        shutil.rmtree(lakehouse.warehouse / "silver" / table, ignore_errors=True)
    run_silver(spark, ungated, ORDERS, days[1], "silver again")  # version 0 of a new table
    run_silver(spark, ungated, ORDERS, days[2], "silver again")  # version 1
    results = run_gold(spark, ungated, ORDERS, days[2], "gold")
    assert {result.refresh for result in results} == {"full"}
    silver = tables.read(spark, lakehouse.table_location("silver", "orders"))
    for mart in marts_of("orders"):
        stored = tables.read(spark, lakehouse.table_location("gold", mart.table))
        assert sorted(stored.collect()) == sorted(mart.build(silver).select(*stored.columns).collect()), mart.table
    fault("silver made again past gold's version", "silver deleted, 2 new commits, gold run", "gold rebuilt, exact")


def _accounting(spark, settings, day: date) -> tuple[int, int, int]:
    """The date's bronze rows, and its silver and quarantine rows."""
    from spark_jobs import tables

    quarantined = (tables.read(spark, settings.table_location("silver", "quarantine"))
                   .where(f"source = 'orders' AND _ingestion_date = '{day}'").count())
    return _bronze_rows(spark, settings, day), _silver_rows(spark, settings, day), quarantined


@pytest.mark.slow
def test_the_same_file_under_two_dates_gives_the_same_tables_in_either_order(spark, tmp_path, sample_orders_dir,
                                                                             fault):
    """A sender delivers a real day's file again under the next date: whichever date is processed first, the
    earlier date keeps the rows and the later one quarantines its copies as duplicates, every line accounted for."""
    from include.config import Settings
    from spark_jobs import tables as store
    from tests.conftest import TEST_SPARK_ENV

    days = [date(2010, 12, 1), date(2010, 12, 2)]
    content = (sample_orders_dir / "2010-12-01.csv.gz").read_bytes()
    tables = {}
    for order in (days, days[::-1]):
        label = "-".join(day.strftime("%d") for day in order)
        settings = Settings.from_env({**TEST_SPARK_ENV, "LAKEHOUSE_LANDING": str(tmp_path / label / "landing"),
                                      "LAKEHOUSE_WAREHOUSE": str(tmp_path / label / "warehouse")})
        for day in days:
            deliver(settings, "orders", day.isoformat(), f"{day}.csv.gz", content)
        for day in order:
            run_bronze(spark, settings, ORDERS, day, f"bronze {label}")
            run_silver(spark, settings, ORDERS, day, f"silver {label}")
        first, second = (_accounting(spark, settings, day) for day in days)
        assert first[0] == second[0] > 3000, "every delivered line of both copies is a bronze row"
        assert first[1] > 0 and second[1] == 0, "the earlier date keeps the rows; the later one holds none"
        lost = sum(bronze - kept - quarantined for bronze, kept, quarantined in (first, second))
        assert lost == 0
        tables[label] = {}
        for table in ("orders", "quarantine", "fingerprints", "dim_customer", "dim_product"):
            frame = store.read(spark, settings.table_location("silver", table))
            frame = frame.drop(*[column for column in frame.columns if column.lstrip("_") == "run_id"])
            tables[label][table] = sorted((tuple(row) for row in frame.collect()), key=repr)
        fault(f"same file under two dates, {label}", f"12-01's file as 12-01 and 12-02, run {label}",
              f"12-02's {second[2]:,} rows quarantined", lost)
    assert tables["01-02"] == tables["02-01"], "the same tables whichever date ran first"


@pytest.mark.slow
def test_a_line_of_10_mb_is_loaded_and_accounted_for(spark, lakehouse, fault):
    """A description of 10 MB (a sender's export gone wrong) is one line like any other: a bronze row, then a
    silver or quarantine row, the gates passing or refusing as for any value."""
    huge = "536370,22728,\"" + "ALARM CLOCK " * (10 * 2**20 // 12) + "\",24,2010-12-01 08:45:00,3.75,12583,France"
    deliver(lakehouse, "orders", DAY.isoformat(), "day.csv",
            "\n".join([ORDERS.header, ORDER_LINE, LINE_B, huge]) + "\n")
    assert run_bronze(spark, lakehouse, ORDERS, DAY, "huge line").rows == 3
    result = run_silver(spark, lakehouse, ORDERS, DAY, "huge line")
    bronze, kept, quarantined = _accounting(spark, lakehouse, DAY)
    assert (bronze, kept + quarantined) == (3, 3) and result.silver_rows == 3
    longest = (spark.read.format("delta").load(lakehouse.table_path("silver", "orders"))
               .selectExpr("max(length(description))").first()[0])
    assert longest >= 10 * 2**20 - 12
    fault("a line of 10 MB", "a 10 MB description among 3 lines", "loaded: 3 silver rows", bronze - kept - quarantined)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 MiB tmpfs of the test's own (the machine's disk is never filled); skipped where mounting is not
    allowed (not root, or a container without CAP_SYS_ADMIN)."""
    import subprocess

    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _versions(spark, warehouse) -> dict[str, int]:
    """Every Delta table under the warehouse, and its version."""
    from spark_jobs import tables

    return {f"{log.parent.parent.name}/{log.parent.name}": tables.version(spark, str(log.parent))
            for log in sorted(warehouse.glob("*/*/_delta_log"))}


def _fill(folder, leave_bytes: int):
    """Fill the file system of `folder` but `leave_bytes`; the filler file."""
    import os

    filler = folder / "filler"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(filler, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, max(free - leave_bytes, 0))
    return filler


@pytest.mark.slow
def test_a_full_disk_fails_the_write_clearly_and_publishes_nothing_half_done(spark, tiny_disk, sample_orders_dir,
                                                                               fault):
    """The warehouse's disk fills up during a layer's write: the job fails naming the cause, every table keeps
    the version it had, and once there is room again the same runs publish every row."""
    from include.config import Settings
    from spark_jobs.tables import WarehouseFull
    from tests.conftest import TEST_SPARK_ENV
    # The gate's results and Data Docs on another disk: the writes of the tables are what meets the full disk.
    settings = Settings.from_env({**TEST_SPARK_ENV, "LAKEHOUSE_LANDING": str(tiny_disk / "landing"),
                                  "LAKEHOUSE_WAREHOUSE": str(tiny_disk / "warehouse"),
                                  "LAKEHOUSE_GX_ROOT": str(tiny_disk.parent / "gx")})
    days = [date(2010, 12, 1), date(2010, 12, 2)]
    for day in days:
        deliver(settings, "orders", day.isoformat(), f"{day}.csv.gz",
                (sample_orders_dir / f"{day}.csv.gz").read_bytes())
    run_bronze(spark, settings, ORDERS, days[0], "day 1")
    run_silver(spark, settings, ORDERS, days[0], "day 1")
    before = _versions(spark, settings.warehouse)
    filler = _fill(tiny_disk, 16 * 1024)
    for run in (run_bronze, run_silver):
        with pytest.raises(WarehouseFull, match=r"warehouse/(bronze|silver)/\w+: the disk is full"):
            run(spark, settings, ORDERS, days[1] if run is run_bronze else days[0], "disk full")
        filler.unlink()
        assert _versions(spark, settings.warehouse) == before, "every table at the version it had"
        filler = _fill(tiny_disk, 16 * 1024)
    filler.unlink()
    run_bronze(spark, settings, ORDERS, days[1], "room again")
    run_silver(spark, settings, ORDERS, days[1], "room again")
    lost = 0
    for day in days:
        bronze, kept, quarantined = _accounting(spark, settings, day)
        assert bronze > 2000 and bronze == kept + quarantined, f"{day}: every bronze row in silver or quarantine"
        lost += bronze - kept - quarantined
    fault("disk full during bronze and silver", "a 64 MiB tmpfs warehouse filled but 16 KiB",
          "failed, says so, tables kept their versions", lost)


def _commits(warehouse) -> set:
    return set(warehouse.glob("*/*/_delta_log/*.json"))


def _settled(warehouse, quiet: float = 5.0, limit: float = 120.0) -> None:
    """Wait until no table of the warehouse has had a new commit for `quiet` seconds: what a killed client had
    already sent the server ends there (a Connect server finishes an operation whose client went away)."""
    import time

    deadline, seen, since = time.monotonic() + limit, _commits(warehouse), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the warehouse kept changing after the job was killed"
        time.sleep(0.5)
        now = _commits(warehouse)
        if now != seen:
            seen, since = now, time.monotonic()


def _job_process(layer: str, day: date, settings, run_id: str, output=None, **environment: str):
    """A layer job for one orders date in its own process, a client of the tests' Connect server (or of the
    server `environment` names), as Airflow or a person at a terminal starts it; its log goes to `output`
    (a file, `subprocess.PIPE`; by default nowhere)."""
    import os
    import subprocess
    import sys

    from tests.conftest import TEST_SPARK_ENV

    env = {**os.environ, **TEST_SPARK_ENV, "LAKEHOUSE_RUNTIME": "connect",
           "LAKEHOUSE_LANDING": str(settings.landing), "LAKEHOUSE_WAREHOUSE": str(settings.warehouse),
           "LAKEHOUSE_GX_ROOT": str(settings.gx_root), **environment}
    return subprocess.Popen([sys.executable, "-m", f"spark_jobs.{layer}", "--source", "orders",
                             "--ingestion-date", day.isoformat(), "--run-id", run_id],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL if output is None else output,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["first-commit", "random"])
def test_a_killed_job_is_made_whole_by_its_rerun(spark, tmp_path, sample_orders_dir, moment, fault):
    """SIGKILL of each layer's job process the moment its first Delta commit lands, or at a random moment of
    its run: every table stays readable, and running the layer and the ones after it again gives the tables
    of a run that was never killed."""
    import random
    import time

    from include.config import Settings
    from spark_jobs.gold import run_gold
    from tests.conftest import TEST_SPARK_ENV
    from tests.helpers import published_tables

    days = [date(2010, 12, 1), date(2010, 12, 2)]
    runs = {"bronze": run_bronze, "silver": run_silver, "gold": run_gold}

    def settings_at(name: str) -> Settings:
        return Settings.from_env({**TEST_SPARK_ENV, "LAKEHOUSE_LANDING": str(tmp_path / "landing"),
                                  "LAKEHOUSE_WAREHOUSE": str(tmp_path / name / "warehouse")})

    reference = settings_at("reference")
    for day in days:
        deliver(reference, "orders", day.isoformat(), f"{day}.csv.gz",
                (sample_orders_dir / f"{day}.csv.gz").read_bytes())
    for run in runs.values():
        run(spark, reference, ORDERS, days[0], "day 1")
    first_day = tmp_path / "after-day-1"
    shutil.copytree(reference.warehouse, first_day)

    # Day 2 of the reference runs as the killed jobs will, one process per layer, timed: a random moment is
    # drawn between a fifth and four fifths of that layer's process's life, so it falls inside the run; the
    # seed is in the case's row.
    took = {}
    for layer in runs:
        started = time.monotonic()
        assert _job_process(layer, days[1], reference, "day 2").wait() == 0, f"the reference {layer} job failed"
        took[layer] = time.monotonic() - started
    expected = published_tables(spark, reference.warehouse, "orders")
    seed = random.randrange(10**6)
    chance = random.Random(seed)

    for killed in runs:
        settings = settings_at(f"killed-{killed}")
        shutil.copytree(first_day, settings.warehouse)
        layers = list(runs)
        for layer in layers[:layers.index(killed)]:
            runs[layer](spark, settings, ORDERS, days[1], "day 2")
        before = _commits(settings.warehouse)
        job = _job_process(killed, days[1], settings, "killed")
        launched = time.monotonic()
        kill_at = launched + chance.uniform(0.2, 0.8) * took[killed]

        def due(settings=settings, before=before, kill_at=kill_at) -> bool:
            if moment == "first-commit":
                return bool(_commits(settings.warehouse) - before)
            return time.monotonic() >= kill_at

        try:
            while not due() and job.poll() is None:
                time.sleep(0.02)
        finally:
            ended_first = job.poll() is not None
            job.kill()  # SIGKILL
            job.wait()
        assert not (ended_first and moment == "first-commit"), f"the {killed} job ended before its first commit"
        when = (f"never: it ended before its random moment (seed {seed})" if ended_first
                else f"{time.monotonic() - launched:.1f} s after its start (seed {seed})" if moment == "random"
                else "once its first commit landed")
        committed = sorted(str(path.relative_to(settings.warehouse).parent.parent)
                           for path in _commits(settings.warehouse) - before)
        _settled(settings.warehouse)
        published_tables(spark, settings.warehouse, "orders")  # every table readable as it stands
        for layer in layers[layers.index(killed):]:
            runs[layer](spark, settings, ORDERS, days[1], "day 2 again")
        assert published_tables(spark, settings.warehouse, "orders") == expected, f"{killed} killed, then run again"
        lost = sum(bronze - kept - quarantined for bronze, kept, quarantined in
                   (_accounting(spark, settings, day) for day in days))
        assert lost == 0
        fault(f"{killed} job killed, {moment}", f"SIGKILL {when}, {len(committed)} commit(s) landed; rerun",
              "tables equal an unkilled run", lost)


def test_a_job_waits_while_another_process_holds_its_layer_s_lock(spark, lakehouse, monkeypatch, caplog, fault):
    """A writer outside Airflow's pools (`make dag-test` beside a scheduler, a job started by hand) holds the
    bronze lock: the bronze job says whom it waits for, commits nothing until the lock is free, then runs."""
    import threading
    import time

    from spark_jobs import locks
    from spark_jobs.bronze import JOB as BRONZE

    deliver(lakehouse, "orders", DAY.isoformat(), "day.csv", f"{ORDERS.header}\n{ORDER_LINE}\n")
    _point_jobs_at(monkeypatch, lakehouse)
    monkeypatch.setenv("LAKEHOUSE_GATES", "false")
    outcome = {}

    def job():
        try:
            outcome["result"] = BRONZE.execute(_job_arguments("bronze"), spark=spark)
        except BaseException as error:  # reported by the test's thread below
            outcome["error"] = error

    with caplog.at_level("INFO", logger="lakehouse.locks"):
        with locks.layer_lock(lakehouse, "bronze", "a writer started by hand"):
            runner = threading.Thread(target=job)
            runner.start()
            deadline = time.monotonic() + 60
            while "waiting for the bronze lock" not in caplog.text:
                assert runner.is_alive(), f"the job ended while the lock was held: {outcome}"
                assert time.monotonic() < deadline, "the job never said it waits for the lock"
                time.sleep(0.1)
            time.sleep(1)
            assert not list((lakehouse.warehouse / "bronze").glob("*/_delta_log/*.json")), "committed under the lock"
        runner.join(timeout=300)
    assert "error" not in outcome, outcome
    assert "held by a writer started by hand (pid" in caplog.text
    assert "took the bronze lock after waiting" in caplog.text
    assert _bronze_rows(spark, lakehouse, DAY) == 1
    assert not locks.holder(locks.lock_path(lakehouse, "bronze")), "the lock file still names a holder"
    fault("a writer holds the layer lock", "bronze job started while another process holds the bronze lock",
          "waited, said for whom, then ran", 0)


@pytest.mark.slow
def test_two_writers_of_a_layer_at_once_both_land_in_every_shared_table(spark, lakehouse, tmp_path, fault):
    """Two job processes of a layer for different dates, started together outside Airflow's pools: the second
    waits for the first's layer lock (and says whom it waits for), and both dates are in every table the
    layer's jobs share. While a third party holds the lock, neither job commits anything."""
    import time

    from spark_jobs import locks, tables

    days = [date(2010, 12, 1), date(2010, 12, 2)]
    for number, day in enumerate(days):
        deliver(lakehouse, "orders", day.isoformat(), "day.csv", "\n".join([
            ORDERS.header, ORDER_LINE.replace("536365", f"53636{number}"),
            ORDER_LINE.replace("536365", f"53637{number}").replace(",6,", ",2,"), "not,an,order,line"]) + "\n")

    logs = {}
    for layer in ("bronze", "silver"):
        with locks.layer_lock(lakehouse, layer, f"the {layer} lock held by the test"):
            jobs = []
            for day in days:
                logs[layer, day] = tmp_path / f"{layer}-{day}.log"
                with logs[layer, day].open("w") as log_file:
                    jobs.append(_job_process(layer, day, lakehouse, f"writer-{day}", log_file,
                                             LAKEHOUSE_GATES="false"))
            deadline = time.monotonic() + 180
            while not all(f"waiting for the {layer} lock" in logs[layer, day].read_text() for day in days):
                assert all(job.poll() is None for job in jobs), f"a {layer} job ended while the lock was held"
                assert time.monotonic() < deadline, f"the {layer} jobs never said they wait for the lock"
                time.sleep(0.2)
            assert f"held by the {layer} lock held by the test" in logs[layer, days[0]].read_text()
            assert not list((lakehouse.warehouse / layer).glob("*/_delta_log/*.json")), \
                f"a {layer} job committed while another process held the lock"
        for job, day in zip(jobs, days):
            assert job.wait(timeout=300) == 0, logs[layer, day].read_text()[-3000:]

    shared = {"bronze": ("orders", "ingested_files"), "silver": ("orders", "quarantine", "fingerprints")}
    for layer, names in shared.items():
        for name in names:
            column = "ingestion_date" if name == "ingested_files" else "_ingestion_date"
            found = {row[0] for row in tables.read(spark, lakehouse.table_location(layer, name))
                     .select(column).distinct().collect()}
            assert found == set(days), f"{layer}/{name} holds {sorted(found)}"
    lost = sum(bronze - kept - quarantined for bronze, kept, quarantined in
               (_accounting(spark, lakehouse, day) for day in days))
    assert lost == 0 and all(_accounting(spark, lakehouse, day)[0] == 3 for day in days)
    fault("two writers of a layer at once", "two bronze, then two silver job processes, lock held by a third",
          "waited their turn; both dates in every table", lost)


def test_with_the_gates_on_dates_in_reverse_order_and_rerun_give_the_tables_of_one_run_in_order(
        spark, tmp_path, sample_orders_dir, fault):
    """Three real order days (their first lines; the second day also re-sends lines of the first, the third of
    the second) through bronze, silver and gold with every gate on: run D3, D1, D2, D1, D1, every gate passes and
    they publish the same tables as D1, D2, D3 run once - the earlier date keeps a re-sent line whichever runs
    first. (The run in order, the reference, runs without the gates: they decide whether a job publishes, not
    what it writes, and the run out of order is the one whose gates are under test.)"""
    import gzip

    from include.config import Settings
    from spark_jobs.gold import run_gold
    from tests.conftest import TEST_SPARK_ENV
    from tests.helpers import published_tables

    days = [date(2010, 12, 1), date(2010, 12, 2), date(2010, 12, 3)]
    real = {day: gzip.decompress((sample_orders_dir / f"{day}.csv.gz").read_bytes()).decode().splitlines()
            for day in days}
    landing = tmp_path / "landing"
    for number, day in enumerate(days):
        lines = real[day][1:300] + (real[days[number - 1]][1:11] if number else [])
        folder = landing / "orders" / day.isoformat()
        folder.mkdir(parents=True)
        (folder / f"{day}.csv").write_text("\n".join([real[day][0], *lines]) + "\n")

    def build(name: str, order: list[date], gates: bool) -> dict:
        settings = Settings.from_env({**TEST_SPARK_ENV, "LAKEHOUSE_LANDING": str(landing),
                                      "LAKEHOUSE_WAREHOUSE": str(tmp_path / name / "warehouse")})
        assert settings.gates
        settings = dataclasses.replace(settings, gates=gates)
        for day in order:
            for run in (run_bronze, run_silver, run_gold):
                run(spark, settings, ORDERS, day, f"{name}-{day}")
        return published_tables(spark, settings.warehouse, "orders")

    in_order = build("in-order", days, gates=False)
    duplicates = [row for row in in_order["silver.quarantine"] if "duplicate" in row]
    assert len(duplicates) >= 20, "the re-sent lines are quarantined as duplicates of the earlier date's"
    reverse = build("reverse", [days[2], days[0], days[1], days[0], days[0]], gates=True)
    assert reverse == in_order
    fault("dates out of order and rerun, gates on", "3 real days: D3, D1, D2, D1, D1 gated against D1, D2, D3",
          "the same tables in every layer", 0)


@pytest.mark.slow
def test_a_connect_server_killed_mid_run_then_started_again_converges(spark, tmp_path, sample_orders_dir, fault):
    """The Spark Connect server killed (SIGKILL of its JVM) while a silver job runs on it, the moment the job's
    first commit lands: the job fails within a minute instead of hanging, every table stays readable, and
    once the server is started again the job's retry and the gold job after it give the tables of a run
    that never met the fault."""
    import os
    import secrets
    import signal
    import subprocess
    import time

    from include.config import Settings
    from include.tools import spark_connect
    from spark_jobs.gold import run_gold
    from tests.conftest import TEST_SPARK_ENV
    from tests.helpers import own_server_env, published_tables

    days = [date(2010, 12, 1), date(2010, 12, 2)]
    server_env = own_server_env(tmp_path / "server", LAKEHOUSE_CONNECT_TOKEN=secrets.token_urlsafe(24))

    def settings_at(name: str, **extra: str) -> Settings:
        return Settings.from_env({**TEST_SPARK_ENV, "LAKEHOUSE_LANDING": str(tmp_path / "landing"),
                                  "LAKEHOUSE_WAREHOUSE": str(tmp_path / name / "warehouse"), **extra})

    reference = settings_at("reference")
    for day in days:
        deliver(reference, "orders", day.isoformat(), f"{day}.csv.gz",
                (sample_orders_dir / f"{day}.csv.gz").read_bytes())
    for day in days:
        for run in (run_bronze, run_silver, run_gold):
            run(spark, reference, ORDERS, day, f"day {day}")
    expected = published_tables(spark, reference.warehouse, "orders")

    settings = settings_at("faulted")
    for run in (run_bronze, run_silver, run_gold):
        run(spark, settings, ORDERS, days[0], "day 1")
    run_bronze(spark, settings, ORDERS, days[1], "day 2")
    private = settings_at("faulted", **server_env)
    spark_connect.start(private, env={**os.environ, **TEST_SPARK_ENV, **server_env}, quiet=True)

    def silver_job():
        return _job_process("silver", days[1], settings, "day 2", subprocess.PIPE, **server_env)

    try:
        before = _commits(settings.warehouse)
        job = silver_job()
        while not (_commits(settings.warehouse) - before):
            assert job.poll() is None, f"the silver job ended before its first commit:\n{job.stdout.read()[-3000:]}"
            time.sleep(0.02)
        os.killpg(spark_connect.running_pid(private), signal.SIGKILL)
        killed_at = time.monotonic()
        output, _ = job.communicate(timeout=120)
        failed_after = time.monotonic() - killed_at
        assert job.returncode not in (0, 2, 3), output[-3000:]  # failed as an error worth retrying
        assert failed_after < 60, f"the job took {failed_after:.0f} s to fail"
        committed = len(_commits(settings.warehouse) - before)
        published_tables(spark, settings.warehouse, "orders")  # every table readable as it stands

        spark_connect.start(private, env={**os.environ, **TEST_SPARK_ENV, **server_env}, quiet=True)
        retry = silver_job()
        output, _ = retry.communicate(timeout=600)
        assert retry.returncode == 0, output[-3000:]
    finally:
        spark_connect.stop(private, quiet=True)
    run_gold(spark, settings, ORDERS, days[1], "day 2")
    assert published_tables(spark, settings.warehouse, "orders") == expected
    lost = sum(bronze - kept - quarantined for bronze, kept, quarantined in
               (_accounting(spark, settings, day) for day in days))
    assert lost == 0
    fault("Connect server killed mid-run", f"SIGKILL of the server JVM after {committed} silver commit(s); "
          "server started again, job retried", f"job failed in {failed_after:.0f} s; retry equals a clean run", lost)
