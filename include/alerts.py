"""Telling people that a task failed: every failure is logged as one line, and posted or mailed where the
operator configured an alert connection.

`LAKEHOUSE_ALERT_CONN_ID` names an Airflow connection (UI, CLI, `AIRFLOW_CONN_<ID>` or a secret backend):

- type `http` (or `https`): the failure is POSTed as JSON to `<schema>://<host>:<port>/<path>`, the path
  from the connection's extra `{"path": "/hooks/lakehouse"}`; a password is sent as a bearer token;
- type `email` or `smtp`: mailed through the SMTP provider's notifier, to the addresses in the extra
  `{"to": "data-team@example.com"}` (the connection itself holds the server, login and password).

A notification that cannot be sent is logged and never fails the task's own outcome.
"""

from __future__ import annotations

import json
import logging
import urllib.request

from airflow.sdk import BaseNotifier

log = logging.getLogger("lakehouse.alerts")


def failure_summary(context) -> dict:
    """What a reader of the alert needs: which task of which run, which try, why, and where to look."""
    ti = context.get("ti") or context.get("task_instance")
    error = context.get("exception")
    run = context.get("dag_run")
    return {
        "dag_id": getattr(ti, "dag_id", None),
        "run_id": getattr(ti, "run_id", None) or getattr(run, "run_id", None),
        "task_id": getattr(ti, "task_id", None),
        "try_number": getattr(ti, "try_number", None),
        "logical_date": str(context.get("logical_date") or getattr(run, "logical_date", "") or ""),
        "error": (str(error).splitlines() or [type(error).__name__])[0][:500] if error is not None else None,
        "log_url": getattr(ti, "log_url", None),
    }


class LakehouseFailureNotifier(BaseNotifier):
    """The DAG's `on_failure_callback`: log the failure, then send it through the alert connection if any."""

    def __init__(self, conn_id: str | None = None, timeout: float = 10.0):
        super().__init__()
        self.conn_id = conn_id
        self.timeout = timeout

    def notify(self, context) -> None:
        summary = failure_summary(context)
        log.error("lakehouse task failed: %s", json.dumps(summary))
        if not self.conn_id:
            return
        try:
            self._send(summary)
        except Exception as error:  # the alert is a courtesy: the task's failure stands as it is
            log.warning("could not send the failure alert through connection %s: %s", self.conn_id,
                        f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")

    def _send(self, summary: dict) -> None:
        from airflow.sdk import BaseHook

        connection = BaseHook.get_connection(self.conn_id)
        extra = connection.extra_dejson or {}
        kind = (connection.conn_type or "").lower()
        if kind in ("http", "https"):
            scheme = connection.schema or ("https" if kind == "https" else "http")
            port = f":{connection.port}" if connection.port else ""
            path = "/" + str(extra.get("path", "")).lstrip("/")
            request = urllib.request.Request(f"{scheme}://{connection.host}{port}{path}",
                                             data=json.dumps(summary).encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
            if connection.password:
                request.add_header("Authorization", f"Bearer {connection.password}")
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
            log.info("failure alert posted through connection %s", self.conn_id)
        elif kind in ("email", "smtp"):
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            to = extra.get("to")
            if not to:
                raise ValueError(f'connection {self.conn_id} has no "to" in its extra')
            subject = f"lakehouse: {summary['task_id']} failed ({summary['dag_id']} {summary['run_id']})"
            body = "<br>".join(f"{name}: {value}" for name, value in summary.items())
            SmtpNotifier(to=to, smtp_conn_id=self.conn_id, subject=subject, html_content=body).notify({})
            log.info("failure alert mailed to %s through connection %s", to, self.conn_id)
        else:
            raise ValueError(f"connection {self.conn_id} is of type {connection.conn_type!r}; "
                             "expected http, https, email or smtp")
