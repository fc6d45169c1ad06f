"""Start, stop and inspect the local Airflow: `airflow standalone` (API server and UI, scheduler, DAG
processor, triggerer; SQLite metadata, LocalExecutor, the simple auth manager) in the background.

    lakehouse-airflow start     # `make airflow`
    lakehouse-airflow stop      # `make airflow-stop`
    lakehouse-airflow status
    lakehouse-airflow backfill --from 2010-12-01 --to 2010-12-03   # `make backfill`

`start` migrates the metadata database, creates the pools and connections (include/orchestration.py),
starts the services as one process group, waits until the scheduler and the DAG processor report
healthy and lakehouse_daily is parsed, and prints the UI's address and login. `stop` stops the whole
group (running tasks and their Spark jobs included) and waits for it. Everything is under
$AIRFLOW_HOME: standalone.log, standalone.pid, and the generated admin password in
simple_auth_manager_passwords.json.generated. The port is AIRFLOW__API__PORT (8080).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DAG_ID = "lakehouse_daily"
# Longer waits for SQLite's write lock (see include/airflow_sqlite.py).
SQLITE_CONNECT_ARGS = "include.airflow_sqlite.CONNECT_ARGS"
USER = "admin"
EXECUTOR = "include.airflow_executor.LakehouseLocalExecutor"


@dataclass(frozen=True)
class Stack:
    home: Path
    port: int

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Stack:
        env = os.environ if env is None else env
        return cls(home=Path(env.get("AIRFLOW_HOME", Path.cwd() / ".airflow")).resolve(),
                   port=int(env.get("AIRFLOW__API__PORT", "8080")))

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "standalone.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "standalone.log"

    @property
    def password_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"

    def environment(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """The services' environment: tasks reach the execution API on this port, not the default 8080."""
        env = dict(os.environ if env is None else env)
        env.setdefault("AIRFLOW__API__BASE_URL", self.url)
        # The UI on this machine only, unless the environment says otherwise.
        env.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
        # Task processes forked with Great Expectations and the Spark Connect client already imported.
        env.setdefault("AIRFLOW__CORE__EXECUTOR", EXECUTOR)
        # A task marked failed in the UI learns it at its next heartbeat: every 2 s rather than 5, so that its
        # job stops on the Spark server before it gets further (a heartbeat is one small request to the API).
        env.setdefault("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "2")
        if env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite").startswith("sqlite"):
            for suffix in ("", "_ASYNC"):
                env.setdefault(f"AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS{suffix}", SQLITE_CONNECT_ARGS)
        env["AIRFLOW_HOME"] = str(self.home)
        return env

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.killpg(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def password(self) -> str:
        return json.loads(self.password_file.read_text())[USER]

    def token(self) -> str:
        """A JWT for the REST API (POST /auth/token with the admin login)."""
        request = urllib.request.Request(f"{self.url}/auth/token", method="POST",
                                         data=json.dumps({"username": USER, "password": self.password()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["access_token"]

    def api(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
        request = urllib.request.Request(f"{self.url}/api/v2{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {token or self.token()}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as response:
                return json.load(response)
        except (OSError, ValueError):
            return None


def start(stack: Stack, env: dict[str, str] | None = None, timeout: float = 300) -> None:
    """Start the services with `env` (default: this process's environment) and wait until they serve."""
    if pid := stack.running_pid():
        print(f"Airflow is already running (process group {pid}); `make airflow-stop` stops it.")
        return
    stack.home.mkdir(parents=True, exist_ok=True)
    env = stack.environment(env)
    for step in (["airflow", "db", "migrate"], [sys.executable, "-m", "include.orchestration"]):
        done = subprocess.run(step, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(step)} failed:\n{done.stdout}{done.stderr}")
        print("".join(line + "\n" for line in done.stdout.splitlines() if line.startswith("airflow setup")), end="")
    from include.config import Settings
    from include.tools import spark_connect

    settings = Settings.from_env(env)
    if settings.runtime == "connect":  # the layer tasks' server, up before the scheduler runs any
        spark_connect.start(settings, env=env)
    started = time.monotonic()
    with stack.log_file.open("ab") as log:
        process = subprocess.Popen(["airflow", "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    stack.pid_file.write_text(str(process.pid))
    print(f"Airflow starting (process group {process.pid}, log {stack.log_file}) ...", flush=True)
    while True:
        if process.poll() is not None:
            stack.pid_file.unlink(missing_ok=True)
            raise SystemExit(f"airflow standalone exited with status {process.returncode}; "
                             f"last lines of {stack.log_file}:\n{_tail(stack.log_file)}")
        if _ready(stack):
            break
        if time.monotonic() - started > timeout:
            stop(stack)
            raise SystemExit(f"Airflow was not ready after {timeout:.0f} s; last lines of {stack.log_file}:\n"
                             f"{_tail(stack.log_file)}")
        time.sleep(2)
    print(f"Airflow is up after {time.monotonic() - started:.0f} s: {stack.url}\n"
          f"  login: {USER} / {stack.password()}   (from {stack.password_file})\n"
          f"  DAG:   {stack.url}/dags/{DAG_ID}   (paused at creation: unpause it for the daily schedule)\n"
          f"  Data Docs: {stack.url}/plugin/data-docs\n"
          f"  stop:  make airflow-stop")


def _ready(stack: Stack) -> bool:
    health = stack.health()
    if not health or any(health.get(part, {}).get("status") != "healthy"
                         for part in ("metadatabase", "scheduler", "dag_processor")):
        return False
    try:
        return stack.api("GET", f"/dags/{DAG_ID}")["dag_id"] == DAG_ID
    except (OSError, ValueError, KeyError):
        return False  # not parsed yet, or the password not generated yet


def stop(stack: Stack, timeout: float = 20) -> None:
    pid = stack.running_pid()
    if pid is None:
        print("Airflow is not running.")
        stack.pid_file.unlink(missing_ok=True)
        return
    # standalone stops its services on SIGINT; what is left after `timeout` (a task's JVM) is killed.
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.5)
        if not _group_alive(pid):
            break
    stack.pid_file.unlink(missing_ok=True)
    print(f"Airflow stopped (process group {pid}).")


def _group_alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    except ChildProcessError:
        pass
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def backfill(stack: Stack, first: str, last: str, reprocess: str = "none", max_active_runs: int | None = None,
             env: dict[str, str] | None = None, attempts: int = 6) -> None:
    """`airflow backfill create` over the ingestion dates first..last (inclusive), then unpausing the DAG
    (the runs of a paused DAG's backfill stay queued).

    On SQLite the CLI's transaction can meet the scheduler's and fail with "database is locked"; Airflow
    then removes the half-created backfill, and it is tried again. The DAG is unpaused only once the backfill
    is there: a scheduler that had started on runs the failed try made, and that try then removed, died on
    them (`ObjectDeletedError`), and `airflow standalone` does not start it again. A DAG someone unpaused
    before keeps that risk; its daily runs are not paused for a backfill.
    """
    env = stack.environment(env)
    command = ["airflow", "backfill", "create", "--dag-id", DAG_ID, "--from-date", first, "--to-date", last,
               "--reprocess-behavior", reprocess]
    if max_active_runs:
        command += ["--max-active-runs", str(max_active_runs)]
    for attempt in range(1, attempts + 1):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode == 0:
            created = sum("Created backfill Dag run" in line for line in (done.stdout + done.stderr).splitlines())
            print(f"backfill of {DAG_ID} from {first} to {last}: {created} run(s) created "
                  f"(reprocess: {reprocess}); watch them at {stack.url}/dags/{DAG_ID}/runs")
            unpause = subprocess.run(["airflow", "dags", "unpause", DAG_ID], env=env, capture_output=True, text=True)
            if unpause.returncode != 0:
                raise SystemExit(f"airflow dags unpause {DAG_ID} failed (the backfill's runs wait for it):\n"
                                 f"{unpause.stdout}{unpause.stderr}")
            return
        output = done.stdout + done.stderr
        if "database is locked" not in output or attempt == attempts:
            raise SystemExit(f"{' '.join(command)} failed:\n{output[-4000:]}")
        print(f"backfill: the metadata database was locked by another Airflow process; trying again "
              f"({attempt + 1} of {attempts})", flush=True)
        # Longer each time: the scheduler's busy spell after an unpause (its first runs, its parsing) passes.
        time.sleep(5 * attempt)


def status(stack: Stack, quiet: bool = False) -> int:
    pid = stack.running_pid()
    if pid is None:
        if not quiet:
            print("Airflow is not running.")
        return 1
    if not quiet:
        print(f"Airflow is running (process group {pid}) at {stack.url}: {json.dumps(stack.health())}")
    return 0


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("start", "stop", "status", "backfill"))
    parser.add_argument("--from", dest="first", help="backfill: first ingestion date, YYYY-MM-DD")
    parser.add_argument("--to", dest="last", help="backfill: last ingestion date, YYYY-MM-DD (inclusive)")
    parser.add_argument("--reprocess", choices=("none", "failed", "completed"), default="none",
                        help="backfill: dates that already have a run: leave them (none), rerun failed ones, or all")
    parser.add_argument("--max-active-runs", type=int, help="backfill: dates run at once (default: the DAG's)")
    args = parser.parse_args(argv)
    stack = Stack.from_env()
    if args.command == "start":
        start(stack)
    elif args.command == "stop":
        stop(stack)
    elif args.command == "backfill":
        if not (args.first and args.last):
            parser.error("backfill needs --from and --to")
        if status(stack, quiet=True) != 0:
            raise SystemExit("Airflow is not running: `make airflow` starts it")
        backfill(stack, args.first, args.last, args.reprocess, args.max_active_runs)
    else:
        return status(stack)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
