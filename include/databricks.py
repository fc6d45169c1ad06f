"""LAKEHOUSE_RUNTIME=databricks: every layer job runs on Databricks as a one-time run (Jobs API
`runs/submit`) whose single `spark_python_task` is the same job file with the same arguments as under
spark-submit, with the project's wheel as the run's library.

Where things are on Databricks:
- the code: the project's wheel (`make wheel`), which a Databricks Asset Bundle uploads with the job files
  (`include/databricks.yml`, `databricks bundle deploy -t prod`) under LAKEHOUSE_DATABRICKS_FILES (the wheel
  in its dist/); each run installs the wheel, and with it what the wheel requires (Great Expectations at the
  pinned version), and runs `spark_jobs/<layer>.py`, which imports the project from the wheel. Not a
  `python_wheel_task`: the provider fills such a task's `named_parameters` with the DAG's params, which
  reach the job as options (`--full_refresh=...`) its argument parser does not know;
- the tables: Unity Catalog, `<LAKEHOUSE_DATABRICKS_CATALOG>.<layer>.<table>` (schemas bronze, silver
  and gold), instead of paths;
- the landing zone: a Unity Catalog volume, LAKEHOUSE_DATABRICKS_LANDING
  (`/Volumes/<catalog>/landing/deliveries/<source>/<date>/`), which `find_delivery` lists through the
  Files API;
- the Great Expectations project and its Data Docs: LAKEHOUSE_DATABRICKS_GX_ROOT (a volume too);
- the tables' Airflow Assets: databricks://<LAKEHOUSE_DATABRICKS_HOST>/<catalog>/<layer>/<table>, the
  Databricks provider's form (the host defaults to the connection id).

Compute (LAKEHOUSE_DATABRICKS_COMPUTE):
- `job_cluster` (default): a new cluster per run, LAKEHOUSE_DATABRICKS_SPARK_VERSION,
  LAKEHOUSE_DATABRICKS_NODE_TYPE (required), LAKEHOUSE_DATABRICKS_WORKERS;
- `existing`: the all-purpose cluster LAKEHOUSE_DATABRICKS_CLUSTER_ID;
- `serverless`: serverless jobs compute with environment LAKEHOUSE_DATABRICKS_ENVIRONMENT_VERSION.

The workspace and its token come only from the Airflow connection LAKEHOUSE_DATABRICKS_CONN_ID
(`databricks_default`): host and a personal access token or service principal, as the Databricks provider
reads them. Nothing here reads or logs a secret.

Retries: the operator is durable (Airflow 3.3 keeps the remote run id across tries): a retry whose
earlier run is still running follows that run instead of submitting another, and each submit carries an
idempotency token derived from the DAG, run, task and try, so a request repeated after a lost answer
returns the same run. A retry also first asks for the previous try's token, which returns that try's
run if it was submitted after all (the worker died before the id was stored). Killing the Airflow task
(marking it failed or cleared in the UI, a timeout) cancels the remote run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from urllib.parse import quote

from airflow.providers.databricks.hooks.databricks import DatabricksHook, RunState
from airflow.providers.databricks.operators.databricks import DatabricksSubmitRunOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from include.orchestration import misconfigured
from spark_jobs.common import MISCONFIGURED, REFUSED

COMPUTES = ("job_cluster", "existing", "serverless")
ENVIRONMENT_KEY = "lakehouse"


@dataclass(frozen=True)
class DatabricksSettings:
    conn_id: str = "databricks_default"
    host: str = "databricks_default"
    compute: str = "job_cluster"
    catalog: str = "lakehouse"
    files: str = "/Workspace/Shared/.bundle/lakehouse/prod/files"
    landing: str = "/Volumes/lakehouse/landing/deliveries"
    gx_root: str = "/Volumes/lakehouse/quality/gx"
    cluster_id: str | None = None
    spark_version: str = "17.3.x-scala2.13"
    node_type: str | None = None
    workers: int = 2
    environment_version: str = "3"
    poll_seconds: int = 30
    timeout_seconds: int = 4 * 3600

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DatabricksSettings:
        env = os.environ if env is None else env

        def get(name: str, default: str | None = None) -> str | None:
            return env.get(f"LAKEHOUSE_DATABRICKS_{name}") or default

        compute = get("COMPUTE", "job_cluster")
        if compute not in COMPUTES:
            raise ValueError(f"LAKEHOUSE_DATABRICKS_COMPUTE={compute!r}: expected one of {', '.join(COMPUTES)}")
        catalog = get("CATALOG", "lakehouse")
        settings = cls(
            conn_id=get("CONN_ID", "databricks_default"),
            # Only names the workspace in the tables' Asset URIs (the connection says where requests go).
            host=get("HOST") or get("CONN_ID", "databricks_default").replace("_", "-"),
            compute=compute,
            catalog=catalog,
            files=get("FILES", cls.files).rstrip("/"),
            landing=get("LANDING", f"/Volumes/{catalog}/landing/deliveries").rstrip("/"),
            gx_root=get("GX_ROOT", f"/Volumes/{catalog}/quality/gx").rstrip("/"),
            cluster_id=get("CLUSTER_ID"),
            spark_version=get("SPARK_VERSION", cls.spark_version),
            node_type=get("NODE_TYPE"),
            workers=int(get("WORKERS", "2")),
            environment_version=get("ENVIRONMENT_VERSION", cls.environment_version),
            poll_seconds=int(get("POLL_SECONDS", "30")),
            timeout_seconds=int(get("TIMEOUT_SECONDS", str(4 * 3600))),
        )
        if compute == "existing" and not settings.cluster_id:
            raise ValueError("LAKEHOUSE_DATABRICKS_COMPUTE=existing needs LAKEHOUSE_DATABRICKS_CLUSTER_ID")
        if compute == "job_cluster" and not settings.node_type:
            raise ValueError("LAKEHOUSE_DATABRICKS_COMPUTE=job_cluster needs LAKEHOUSE_DATABRICKS_NODE_TYPE "
                             "(the workspace's cloud decides: i3.xlarge on AWS, Standard_D4ds_v5 on Azure, ...)")
        return settings

    def job_settings(self) -> dict[str, str]:
        """The lakehouse settings a job on Databricks runs with, passed as `--setting` arguments. Serverless
        compute is Spark Connect without a cache: the jobs compute each frame again where they would reuse it."""
        settings = {"LAKEHOUSE_CATALOG": self.catalog, "LAKEHOUSE_LANDING": self.landing,
                    "LAKEHOUSE_GX_ROOT": self.gx_root}
        if self.compute == "serverless":
            settings["LAKEHOUSE_CACHE_FRAMES"] = "false"
        return settings

    def landing_dir(self, source: str, ingestion_date: str) -> str:
        return f"{self.landing}/{source}/{ingestion_date}"


# The project's distribution (pyproject.toml): its wheel is what a run installs.
DISTRIBUTION = "lakehouse"


def wheel_name(version: str | None = None) -> str:
    """The file name `make wheel` gives the wheel of this checkout's version (PEP 427)."""
    return f"{DISTRIBUTION}-{version or metadata.version(DISTRIBUTION)}-py3-none-any.whl"


def run_request(databricks: DatabricksSettings, layer: str, source: str, parameters: list[str]) -> dict:
    """The `runs/submit` request of one layer job (before Airflow renders `{{ ds }}` and `{{ run_id }}`)."""
    task = {
        "task_key": f"{layer}_{source}",
        "spark_python_task": {
            "python_file": f"{databricks.files}/spark_jobs/{layer}.py",
            "source": "WORKSPACE",
            "parameters": [*parameters,
                           *[part for name, value in databricks.job_settings().items()
                             for part in ("--setting", f"{name}={value}")]],
        },
    }
    request = {"run_name": f"lakehouse {layer} {source} {{{{ ds }}}}", "timeout_seconds": databricks.timeout_seconds,
               "tasks": [task]}
    wheel = f"{databricks.files}/dist/{wheel_name()}"
    libraries = [{"whl": wheel}]
    if databricks.compute == "serverless":
        task["environment_key"] = ENVIRONMENT_KEY
        request["environments"] = [{"environment_key": ENVIRONMENT_KEY,
                                    "spec": {"environment_version": databricks.environment_version,
                                             "dependencies": [wheel]}}]
    elif databricks.compute == "existing":
        task["existing_cluster_id"] = databricks.cluster_id
        task["libraries"] = libraries
    else:
        task["new_cluster"] = {
            "spark_version": databricks.spark_version,
            "node_type_id": databricks.node_type,
            "num_workers": databricks.workers,
            "data_security_mode": "SINGLE_USER",
            "spark_conf": {"spark.sql.session.timeZone": "UTC"},
        }
        task["libraries"] = libraries
    return request


def idempotency_token(dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
    """At most 64 characters, the same for the same try of the same task instance."""
    key = f"{dag_id}|{run_id}|{task_id}|{map_index}|{try_number}"
    return f"lakehouse-{hashlib.sha256(key.encode()).hexdigest()[:40]}"


class LayerDatabricksOperator(DatabricksSubmitRunOperator):
    """One layer job for one source and the run's ingestion date, as a Databricks one-time run."""

    def __init__(self, *, layer: str, source: str, databricks: DatabricksSettings, parameters: list[str],
                 **kwargs) -> None:
        super().__init__(
            task_id=layer,
            json=run_request(databricks, layer, source, parameters),
            databricks_conn_id=databricks.conn_id,
            polling_period_seconds=databricks.poll_seconds,
            **kwargs,
        )
        self.layer = layer
        self.source = source

    def _token(self, context, try_number: int) -> str:
        ti = context["ti"]
        return idempotency_token(ti.dag_id, ti.run_id, ti.task_id, ti.map_index, try_number)

    @cached_property
    def runs(self) -> DatabricksHook:
        """The Jobs API, configured as the operator configures its own client."""
        return DatabricksHook(self.databricks_conn_id, retry_limit=self.databricks_retry_limit,
                              retry_delay=self.databricks_retry_delay, retry_args=self.databricks_retry_args)

    def submit_job(self, context) -> int:
        try_number = context["ti"].try_number
        if try_number > 1:
            # The previous try's token returns its run if it was submitted; otherwise this starts the run.
            self.idempotency_token = self._token(context, try_number - 1)
            run_id = super().submit_job(context)
            state = RunState(**self.runs.get_run(run_id)["state"])
            if not state.is_terminal or state.is_successful:
                self.log.info("Following run %s of the previous try (%s) instead of submitting another",
                              run_id, state.life_cycle_state)
                return run_id
        self.idempotency_token = self._token(context, try_number)
        return super().submit_job(context)

    def execute(self, context):
        try:
            return super().execute(context)
        except AirflowException as error:
            if REFUSED in str(error):
                raise AirflowFailException(
                    f"{self.layer} {self.source} refused its input on Databricks (the run's error is above): "
                    "not retried, the same data would be refused again") from error
            if MISCONFIGURED in str(error):
                raise AirflowFailException(misconfigured(self.layer, self.source, "on Databricks")) from error
            raise


def list_volume_folder(conn_id: str, path: str) -> list[str] | None:
    """The names in a Unity Catalog volume folder (Files API), or None when the folder does not exist."""
    from airflow.providers.databricks.exceptions import DatabricksApiError

    hook = DatabricksHook(conn_id, retry_limit=3)
    try:
        listing = hook._do_api_call(("GET", f"2.0/fs/directories{quote(path)}"), {})
    except DatabricksApiError as error:
        if getattr(error, "http_status_code", None) == 404:
            return None
        raise
    return sorted(entry["name"] for entry in listing.get("contents", []))
