"""A stand-in Databricks workspace for the tests: an HTTP server that speaks the parts of the REST API the
DAG uses - Jobs `runs/submit`, `runs/get`, `runs/get-output`, `runs/cancel` (API 2.1 and 2.2 paths) and
the Files API's directory listing of a volume - with runs whose fate the test scripts per task key.

It keeps every request it receives, checks the bearer token, and honours idempotency tokens as
Databricks documents them (a submit with a token already used returns that run). A run goes PENDING ->
RUNNING -> TERMINATED over successive `runs/get` calls; its result is the scripted one: SUCCESS, FAILED
with an error in the task's output, or nothing until it is cancelled.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class Outcome:
    result: str = "SUCCESS"  # SUCCESS | FAILED | HANG (running until cancelled)
    error: str = ""
    polls: int = 2  # runs/get calls before the run ends


@dataclass
class Run:
    run_id: int
    task_run_id: int
    request: dict
    outcome: Outcome
    polls: int = 0
    cancelled: bool = False

    @property
    def task_key(self) -> str:
        return self.request["tasks"][0]["task_key"]

    def state(self) -> dict:
        if self.cancelled:
            return {"life_cycle_state": "TERMINATED", "result_state": "CANCELED",
                    "state_message": "Run cancelled.", "user_cancelled_or_timedout": True}
        if self.polls <= 1:
            return {"life_cycle_state": "PENDING", "state_message": "Waiting for cluster"}
        if self.outcome.result == "HANG" or self.polls <= self.outcome.polls:
            return {"life_cycle_state": "RUNNING", "state_message": "In run"}
        if self.outcome.result == "FAILED":
            return {"life_cycle_state": "TERMINATED", "result_state": "FAILED",
                    "state_message": "Workload failed, see run output for details"}
        return {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS", "state_message": ""}


@dataclass
class Workspace:
    token: str
    volume_root: str  # e.g. /Volumes/lakehouse/landing/deliveries
    volume_dir: Path  # the local folder standing for it
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # by task key; default SUCCESS
    requests: list[tuple[str, str, dict]] = field(default_factory=list)
    runs: dict[int, Run] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    unauthorized: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submits(self) -> list[dict]:
        return [body for method, path, body in self.requests if path.endswith("/jobs/runs/submit")]

    def cancels(self) -> list[int]:
        return [body["run_id"] for method, path, body in self.requests if path.endswith("/jobs/runs/cancel")]

    def handle(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.requests.append((method, path, body if method == "POST" else query))
            if path.startswith("/api/2.0/fs/directories/"):
                return self._list(unquote(path[len("/api/2.0/fs/directories"):]))
            if not path.startswith(("/api/2.1/jobs/runs/", "/api/2.2/jobs/runs/")):
                return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"no API at {path}"}
            action = path.rsplit("/", 1)[1]
            if method == "POST" and action == "submit":
                return self._submit(body)
            if method == "POST" and action == "cancel":
                run = self.runs.get(int(body.get("run_id", 0)))
                if run is None:
                    return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "Run does not exist"}
                if "result_state" not in run.state():
                    run.cancelled = True
                return 200, {}
            if method == "GET" and action in ("get", "get-output"):
                run_id = int(query.get("run_id", ["0"])[0])
                if action == "get-output":
                    run = next((run for run in self.runs.values() if run.task_run_id == run_id), None)
                    if run is None:
                        return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "Run does not exist"}
                    output = {"metadata": {"run_id": run.task_run_id, "state": run.state()}}
                    if run.state().get("result_state") == "FAILED":
                        output["error"] = run.outcome.error
                        output["error_trace"] = f"Traceback (most recent call last):\n  ...\n{run.outcome.error}"
                    return 200, output
                run = self.runs.get(run_id)
                if run is None:
                    return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Run {run_id} does not exist"}
                run.polls += 1
                state = run.state()
                return 200, {"run_id": run.run_id, "run_name": run.request.get("run_name"),
                             "run_page_url": f"https://workspace.example/#job/0/run/{run.run_id}", "state": state,
                             "tasks": [{"run_id": run.task_run_id, "task_key": run.task_key, "state": state,
                                        "attempt_number": 0}]}
            return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"no {method} {path}"}

    def _submit(self, body: dict) -> tuple[int, dict]:
        token = body.get("idempotency_token")
        if token and token in self.tokens:
            return 200, {"run_id": self.tokens[token]}
        if len(body.get("tasks", [])) != 1:
            return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "expected one task"}
        run_id = 1000 + len(self.runs) + 1
        run = Run(run_id, run_id * 10 + 1, body, self.outcomes.get(body["tasks"][0]["task_key"], Outcome()))
        self.runs[run_id] = run
        if token:
            self.tokens[token] = run_id
        return 200, {"run_id": run_id}

    def _list(self, path: str) -> tuple[int, dict]:
        if not path.startswith(self.volume_root):
            return 404, {"error_code": "NOT_FOUND", "message": f"{path} is not in a volume"}
        local = self.volume_dir / path[len(self.volume_root):].lstrip("/")
        if not local.is_dir():
            return 404, {"error_code": "NOT_FOUND", "message": f"The directory {path} does not exist"}
        return 200, {"contents": [{"path": f"{path.rstrip('/')}/{entry.name}", "name": entry.name,
                                   "is_directory": entry.is_dir(),
                                   **({} if entry.is_dir() else {"file_size": entry.stat().st_size})}
                                  for entry in sorted(local.iterdir())]}


def serve(workspace: Workspace) -> ThreadingHTTPServer:
    """Start the double on a free port of 127.0.0.1 in a thread; `server.shutdown()` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            url = urlparse(self.path)
            if self.headers.get("Authorization") != f"Bearer {workspace.token}":
                workspace.unauthorized += 1
                status, payload = 401, {"error_code": "UNAUTHENTICATED", "message": "Invalid access token."}
            else:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if method == "POST" else {}
                status, payload = workspace.handle(method, url.path, parse_qs(url.query), body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._answer("POST")

        def log_message(self, format, *args) -> None:  # the tests read `workspace.requests` instead
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
