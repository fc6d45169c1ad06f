"""The Spark Connect server the layer jobs run on with LAKEHOUSE_RUNTIME=connect: one long-running Spark
driver on this machine, started from pip pyspark's own jar, that every layer task of every date uses as a
thin client. The JVM, its JIT-compiled code, Delta's table snapshots and the planner's caches stay warm
between tasks.

    lakehouse-spark-connect start     # `make spark-connect`
    lakehouse-spark-connect stop      # `make spark-connect-stop`
    lakehouse-spark-connect status

`start` runs pip pyspark's Spark Connect service through spark-submit (pip pyspark has no start script;
its driver program, include/connect_server.py, is the stock server's but for sessions that share generated
code) with the Delta jars `make setup` keeps in the venv, Delta's SQL extension and catalog,
the fair scheduler between sessions (include/spark-fairscheduler.xml) and a heap of
LAKEHOUSE_CONNECT_MEMORY (8g: room for several dates at once on a 24 GiB machine). It listens on
127.0.0.1:$LAKEHOUSE_CONNECT_PORT (15002) only, with its Spark UI on 127.0.0.1:$LAKEHOUSE_CONNECT_UI_PORT
(4040, without kill links), and waits until an authenticated client is served. A second `start` finds the
running server and reuses it. Its process id, log (server.log) and scratch space are under
$LAKEHOUSE_CONNECT_HOME (./.spark-connect).

The server takes its token from its environment (SPARK_CONNECT_AUTHENTICATE_TOKEN, set here for the
server's process only), so the token is on no command line and in no process title: it comes from
LAKEHOUSE_CONNECT_TOKEN or the password of the Airflow connection LAKEHOUSE_CONNECT_CONN_ID
(spark_connect_default, which `make airflow-db` creates with a random token when it does not exist).
Clients without that token are refused.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from include.config import PROJECT_ROOT, Settings, delta_jars, delta_package, get_settings
from include.spark import ServerUnavailable, connect_session, connect_token, server_listening

# The server's driver program: Spark Connect's service with sessions that share generated code (see there).
SERVER_PROGRAM = PROJECT_ROOT / "include" / "connect_server.py"
START_TIMEOUT = 180


def pid_file(settings: Settings) -> Path:
    return settings.connect_home / "server.pid"


def log_file(settings: Settings) -> Path:
    return settings.connect_home / "server.log"


def running_pid(settings: Settings) -> int | None:
    """The server's process id when its process is alive."""
    try:
        pid = int(pid_file(settings).read_text())
    except (OSError, ValueError):
        return None
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def healthy(settings: Settings, token: str | None) -> bool:
    """Whether the server serves an authenticated client: a session opens and answers a query."""
    if not server_listening(settings, timeout=1):
        return False
    try:
        spark = connect_session(settings, token=token, current=False)
    except ServerUnavailable:
        return False
    try:
        return spark.range(1).count() == 1
    except Exception:
        return False
    finally:
        spark.stop()


def command(settings: Settings) -> list[str]:
    """The server's spark-submit command line (no secret in it)."""
    conf = settings.connect_server_conf()
    line = ["spark-submit", "--master", settings.spark_master,
            "--name", "lakehouse-connect", "--driver-memory", settings.connect_memory]
    for key, value in conf.items():
        line += ["--conf", f"{key}={value}"]
    jars = delta_jars()
    line += ["--jars", ",".join(jars)] if jars else ["--packages", delta_package()]
    return [*line, str(SERVER_PROGRAM)]


@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """One start or stop at a time (two test workers, `make run` beside `make airflow`)."""
    settings.connect_home.mkdir(parents=True, exist_ok=True)
    with open(settings.connect_home / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def start(settings: Settings | None = None, env: dict[str, str] | None = None, timeout: float = START_TIMEOUT,
          quiet: bool = False) -> bool:
    """Start the server unless it is up already (then reuse it); wait until it serves. True when this call
    started it."""
    settings = settings or get_settings()
    env = dict(os.environ if env is None else env)
    token = connect_token(settings, env)
    if not token:
        raise SystemExit(f"no token for the Spark Connect server: set LAKEHOUSE_CONNECT_TOKEN, or create the Airflow "
                         f"connection {settings.connect_conn_id} with a password (`make airflow-db` does)")
    say = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
    with _locked(settings):
        if running_pid(settings) and _wait_healthy(settings, token, 30):
            say(f"The Spark Connect server is already running at 127.0.0.1:{settings.connect_port} "
                f"(process {running_pid(settings)}); reusing it.")
            return False
        if running_pid(settings):
            raise SystemExit(f"a Spark Connect server runs (process {running_pid(settings)}) but does not serve this "
                             f"token at 127.0.0.1:{settings.connect_port}: `make spark-connect-stop` first")
        if server_listening(settings):
            raise SystemExit(f"port {settings.connect_port} on 127.0.0.1 is taken by another program: set "
                             f"LAKEHOUSE_CONNECT_PORT to a free port")
        (settings.connect_home / "scratch").mkdir(parents=True, exist_ok=True)
        # Not the client mode a process that opened sessions has set (include/spark.py): the server's own
        # session is a classic one.
        server_env = {key: value for key, value in env.items()
                      if key not in ("LAKEHOUSE_CONNECT_TOKEN", "SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE")}
        server_env["SPARK_CONNECT_AUTHENTICATE_TOKEN"] = token
        server_env["SPARK_LOCAL_IP"] = "127.0.0.1"  # the UI's and the block manager's address
        server_env.setdefault("PYSPARK_PYTHON", sys.executable)
        started = time.monotonic()
        with log_file(settings).open("ab") as log:
            process = subprocess.Popen(command(settings), env=server_env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       cwd=settings.connect_home)
        pid_file(settings).write_text(str(process.pid))
        say(f"Spark Connect server starting (process {process.pid}, heap {settings.connect_memory}, "
            f"log {log_file(settings)}) ...")
        while not healthy(settings, token):
            if process.poll() is not None:
                pid_file(settings).unlink(missing_ok=True)
                raise SystemExit(f"the Spark Connect server exited with status {process.returncode}; last lines of "
                                 f"{log_file(settings)}:\n{_tail(log_file(settings))}")
            if time.monotonic() - started > timeout:
                _stop(settings)
                raise SystemExit(f"the Spark Connect server did not serve after {timeout:.0f} s; last lines of "
                                 f"{log_file(settings)}:\n{_tail(log_file(settings))}")
            time.sleep(1)
    say(f"Spark Connect server up after {time.monotonic() - started:.0f} s: sc://localhost:{settings.connect_port} "
        f"(127.0.0.1 only), Spark UI http://127.0.0.1:{settings.connect_ui_port}\n"
        f"  stop: make spark-connect-stop")
    return True


def ensure(settings: Settings | None = None) -> None:
    """Start the server when the runtime needs it and it is not up (`make run`, `make dag-test`, `make airflow`)."""
    settings = settings or get_settings()
    if settings.runtime == "connect":
        start(settings)


def _wait_healthy(settings: Settings, token: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if healthy(settings, token):
            return True
        if time.monotonic() > deadline or running_pid(settings) is None:
            return False
        time.sleep(1)


def stop(settings: Settings | None = None, quiet: bool = False) -> None:
    settings = settings or get_settings()
    with _locked(settings):
        _stop(settings, quiet)


def _stop(settings: Settings, quiet: bool = False, timeout: float = 30) -> None:
    pid = running_pid(settings)
    if pid is None:
        pid_file(settings).unlink(missing_ok=True)
        if not quiet:
            print("The Spark Connect server is not running.")
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)  # spark-submit execs java in its own session: the group is the JVM
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and running_pid(settings):
            time.sleep(0.2)
        if not running_pid(settings):
            break
    pid_file(settings).unlink(missing_ok=True)
    if not quiet:
        print(f"Spark Connect server stopped (process {pid}).")


def ui_state(settings: Settings, path: str) -> list | dict:
    """What the server's Spark UI reports under /api/v1/applications/<app>/<path> (jobs, storage/rdd, ...)."""
    base = f"http://127.0.0.1:{settings.connect_ui_port}/api/v1/applications"
    with urllib.request.urlopen(base, timeout=10) as response:
        (app, *_) = json.load(response)
    with urllib.request.urlopen(f"{base}/{app['id']}/{path}", timeout=10) as response:
        return json.load(response)


def memory_kb(settings: Settings) -> tuple[int, int] | None:
    """The server JVM's resident memory now and at its peak, in KB (from /proc), when it runs."""
    pid = running_pid(settings)
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
              if line.startswith(("VmRSS", "VmHWM"))}
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def status(settings: Settings | None = None) -> int:
    settings = settings or get_settings()
    pid = running_pid(settings)
    if pid is None:
        print("The Spark Connect server is not running (`make spark-connect` starts it).")
        return 1
    token = connect_token(settings)
    serving = healthy(settings, token)
    memory = memory_kb(settings) or (0, 0)
    try:
        running = len(ui_state(settings, "jobs?status=running"))
    except (OSError, ValueError):
        running = "?"
    print(f"Spark Connect server (process {pid}) at sc://localhost:{settings.connect_port}: "
          f"{'serving' if serving else 'NOT serving this token'}, {running} job(s) running, "
          f"memory {memory[0] // 1024:,} MB (peak {memory[1] // 1024:,} MB); "
          f"Spark UI http://127.0.0.1:{settings.connect_ui_port}")
    return 0 if serving else 1


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "status", "ensure"),
                        help="ensure: start it only when LAKEHOUSE_RUNTIME is connect")
    args = parser.parse_args(argv)
    if args.command == "start":
        start()
    elif args.command == "ensure":
        ensure()
    elif args.command == "stop":
        stop()
    else:
        return status()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
