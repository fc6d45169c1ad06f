"""A Spark standalone cluster on this machine, from the pyspark distribution: one master and one or more
workers on 127.0.0.1, for `LAKEHOUSE_RUNTIME=spark`.

    lakehouse-spark-cluster start [--workers 1] [--cores 2] [--memory 4g]   # `make spark-cluster`
    lakehouse-spark-cluster stop                                          # `make spark-cluster-stop`
    lakehouse-spark-cluster status

The master listens on spark://127.0.0.1:$LAKEHOUSE_SPARK_CLUSTER_PORT (7077) with its web UI on
$LAKEHOUSE_SPARK_CLUSTER_UI_PORT (8081; Airflow's UI has 8080); workers' UIs take the next ports.
`start` waits until every worker has registered with the master (read from the master's JSON at
/json/), then prints the master URL the `spark_default` connection must hold. Process ids and logs are
under $LAKEHOUSE_SPARK_CLUSTER_HOME (./.spark-cluster). Executors run in the workers' environment:
start the cluster with the project's virtualenv first on PATH (the make target does), so that they use
the same Python and packages as the driver.

The cluster shares this machine's disk, so the landing zone and the warehouse are the same paths for
the driver and the executors. A cluster of several machines needs them on storage every node sees.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from include.config import PROJECT_ROOT

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
HOST = "127.0.0.1"


def spark_class() -> str:
    """`bin/spark-class` of the installed pyspark (the wheel has no sbin/start-master.sh)."""
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-class")


@dataclass(frozen=True)
class Cluster:
    home: Path
    port: int = 7077
    ui_port: int = 8081

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Cluster:
        env = os.environ if env is None else env
        return cls(home=Path(env.get("LAKEHOUSE_SPARK_CLUSTER_HOME") or PROJECT_ROOT / ".spark-cluster").resolve(),
                   port=int(env.get("LAKEHOUSE_SPARK_CLUSTER_PORT", "7077")),
                   ui_port=int(env.get("LAKEHOUSE_SPARK_CLUSTER_UI_PORT", "8081")))

    @property
    def master_url(self) -> str:
        return f"spark://{HOST}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.ui_port}"

    def pid_files(self) -> list[Path]:
        return sorted(self.home.glob("*.pid"))

    def state(self) -> dict | None:
        """The master's own account of the cluster (workers, running and completed applications)."""
        try:
            with urllib.request.urlopen(f"{self.ui_url}/json/", timeout=5) as response:
                return json.load(response)
        except (OSError, ValueError):
            return None

    def alive_workers(self) -> int:
        state = self.state() or {}
        return sum(1 for worker in state.get("workers", []) if worker.get("state") == "ALIVE")


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _running(cluster: Cluster) -> dict[str, int]:
    running = {}
    for path in cluster.pid_files():
        try:
            pid = int(path.read_text())
        except ValueError:
            continue
        if _alive(pid):
            running[path.stem] = pid
    return running


def _launch(cluster: Cluster, name: str, arguments: list[str], env: dict[str, str]) -> None:
    log = cluster.home / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen([spark_class(), *arguments], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    (cluster.home / f"{name}.pid").write_text(str(process.pid))


def start(cluster: Cluster, workers: int = 1, cores: int | None = None, memory: str = "4g",
          env: dict[str, str] | None = None, timeout: float = 120) -> None:
    """Start the master and `workers` workers (each offering `cores` cores and `memory`), and wait for them."""
    if running := _running(cluster):
        print(f"The Spark cluster is already running ({', '.join(sorted(running))}); "
              f"`make spark-cluster-stop` stops it. Master: {cluster.master_url}")
        return
    cluster.home.mkdir(parents=True, exist_ok=True)
    for stale in cluster.pid_files():
        stale.unlink()
    env = dict(os.environ if env is None else env)
    # Executors start the Python the driver names ("python3" unless PYSPARK_PYTHON is set) on the
    # workers' PATH; the workers' scratch space stays under the cluster's home.
    env["SPARK_WORKER_DIR"] = str(cluster.home / "work")
    env.setdefault("SPARK_LOCAL_IP", HOST)
    cores = cores or os.cpu_count() or 1
    started = time.monotonic()
    _launch(cluster, "master", [MASTER_CLASS, "--host", HOST, "--port", str(cluster.port),
                                "--webui-port", str(cluster.ui_port)], env)
    for number in range(1, workers + 1):
        _launch(cluster, f"worker-{number}", [WORKER_CLASS, "--host", HOST, "--cores", str(cores),
                                              "--memory", memory, "--webui-port", str(cluster.ui_port + number),
                                              cluster.master_url], env)
    while cluster.alive_workers() < workers:
        gone = [path.stem for path in cluster.pid_files() if not _alive(int(path.read_text()))]
        if gone or time.monotonic() - started > timeout:
            log = cluster.home / f"{(gone or ['master'])[0]}.log"
            stop(cluster, quiet=True)
            reason = f"{', '.join(gone)} exited" if gone else f"not ready after {timeout:.0f} s"
            raise SystemExit(f"the Spark cluster did not start ({reason}); last lines of {log}:\n{_tail(log)}")
        time.sleep(1)
    print(f"Spark cluster up after {time.monotonic() - started:.0f} s: master {cluster.master_url} "
          f"(UI {cluster.ui_url}), {workers} worker(s) with {cores} core(s) and {memory} each.\n"
          f"  Run the DAG on it: LAKEHOUSE_RUNTIME=spark with the connection spark_default = {cluster.master_url}\n"
          f"  stop: make spark-cluster-stop")


def stop(cluster: Cluster, quiet: bool = False, timeout: float = 20) -> None:
    """Stop the workers, then the master (SIGTERM, SIGKILL after `timeout`)."""
    running = _running(cluster)
    if not running:
        for stale in cluster.pid_files():
            stale.unlink()
        if not quiet:
            print("The Spark cluster is not running.")
        return
    order = sorted(running, key=lambda name: name == "master")  # workers first
    for name in order:
        pid = running[name]
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
            try:
                os.killpg(pid, sig)  # spark-class execs java in its own session: the group is the JVM
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.2)
            if not _alive(pid):
                break
        (cluster.home / f"{name}.pid").unlink(missing_ok=True)
    if not quiet:
        print(f"Spark cluster stopped ({', '.join(order)}).")


def status(cluster: Cluster) -> int:
    running = _running(cluster)
    state = cluster.state()
    if not running or state is None:
        print("The Spark cluster is not running." if not running else
              f"Processes {', '.join(sorted(running))} are running but the master does not answer at {cluster.ui_url}.")
        return 1
    print(f"master {cluster.master_url} ({state.get('status')}), {cluster.alive_workers()} worker(s) alive, "
          f"{state.get('cores')} cores, {len(state.get('activeapps', []))} running and "
          f"{len(state.get('completedapps', []))} completed application(s); UI {cluster.ui_url}")
    return 0


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("start", help="start a master and its workers on 127.0.0.1")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--cores", type=int, default=None, help="cores each worker offers (default: all)")
    up.add_argument("--memory", default="4g", help="memory each worker offers to executors (4g)")
    commands.add_parser("stop", help="stop the workers and the master")
    commands.add_parser("status", help="what the master reports")
    args = parser.parse_args(argv)
    cluster = Cluster.from_env()
    if args.command == "start":
        start(cluster, workers=args.workers, cores=args.cores, memory=args.memory)
    elif args.command == "stop":
        stop(cluster)
    else:
        return status(cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
