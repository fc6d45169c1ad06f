"""LAKEHOUSE_RUNTIME=databricks without a workspace: the Jobs API requests the DAG renders for each
layer, and lakehouse_daily run by Airflow against a local double of the Databricks REST API
(tests/databricks_double.py): success, a remote failure shown in the Airflow log, a refusal not retried,
and a killed task cancelling its remote run. Nothing here talks to a real workspace."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from importlib import metadata

import pytest
from airflow.providers.databricks.utils.databricks import normalise_json_content

from include.config import delta_package
from include.databricks import DatabricksSettings, idempotency_token, run_request
from include.orchestration import job_parameters
from tests.databricks_double import Outcome, Workspace, serve
from tests.helpers import airflow_env, prepare_airflow_db

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("databricks")]

TOKEN = "dapi-test-0123456789abcdef"
DAY = "2010-12-01"
FILES = "/Workspace/Shared/.bundle/lakehouse/prod/files"
# The wheel `make wheel` builds of this checkout, where the bundle uploads it.
WHEEL = f"{FILES}/dist/lakehouse-{metadata.version('lakehouse')}-py3-none-any.whl"
SETTINGS_ARGS = ["--setting", "LAKEHOUSE_CATALOG=lakehouse",
                 "--setting", "LAKEHOUSE_LANDING=/Volumes/lakehouse/landing/deliveries",
                 "--setting", "LAKEHOUSE_GX_ROOT=/Volumes/lakehouse/quality/gx"]


def test_the_request_of_each_compute_choice():
    arguments = ["--source", "orders", "--ingestion-date", DAY, "--run-id", "r1"]
    task = {"task_key": "silver_orders",
            "spark_python_task": {"python_file": f"{FILES}/spark_jobs/silver.py", "source": "WORKSPACE",
                                  "parameters": arguments + SETTINGS_ARGS}}
    job_cluster = DatabricksSettings.from_env({"LAKEHOUSE_DATABRICKS_NODE_TYPE": "i3.xlarge"})
    assert run_request(job_cluster, "silver", "orders", arguments) == {
        "run_name": "lakehouse silver orders {{ ds }}", "timeout_seconds": 14400,
        "tasks": [{**task,
                   "new_cluster": {"spark_version": "17.3.x-scala2.13", "node_type_id": "i3.xlarge", "num_workers": 2,
                                   "data_security_mode": "SINGLE_USER",
                                   "spark_conf": {"spark.sql.session.timeZone": "UTC"}},
                   "libraries": [{"whl": WHEEL}]}]}
    existing = DatabricksSettings.from_env({"LAKEHOUSE_DATABRICKS_COMPUTE": "existing",
                                           "LAKEHOUSE_DATABRICKS_CLUSTER_ID": "0923-164208-abcd"})
    assert run_request(existing, "silver", "orders", arguments)["tasks"] == [
        {**task, "existing_cluster_id": "0923-164208-abcd", "libraries": [{"whl": WHEEL}]}]
    serverless = DatabricksSettings.from_env({"LAKEHOUSE_DATABRICKS_COMPUTE": "serverless",
                                             "LAKEHOUSE_DATABRICKS_CATALOG": "main"})
    request = run_request(serverless, "silver", "orders", arguments)
    assert request["tasks"][0]["environment_key"] == "lakehouse" and "libraries" not in request["tasks"][0]
    assert request["tasks"][0]["spark_python_task"]["parameters"][-8:] == [
        "--setting", "LAKEHOUSE_CATALOG=main", "--setting", "LAKEHOUSE_LANDING=/Volumes/main/landing/deliveries",
        "--setting", "LAKEHOUSE_GX_ROOT=/Volumes/main/quality/gx", "--setting", "LAKEHOUSE_CACHE_FRAMES=false"]
    assert request["environments"] == [{"environment_key": "lakehouse",
                                        "spec": {"environment_version": "3", "dependencies": [WHEEL]}}]
    for env, needed in (({}, "LAKEHOUSE_DATABRICKS_NODE_TYPE"),
                        ({"LAKEHOUSE_DATABRICKS_COMPUTE": "existing"}, "LAKEHOUSE_DATABRICKS_CLUSTER_ID"),
                        ({"LAKEHOUSE_DATABRICKS_COMPUTE": "gpu"}, "LAKEHOUSE_DATABRICKS_COMPUTE")):
        with pytest.raises(ValueError, match=needed):
            DatabricksSettings.from_env(env)
    assert delta_package() not in json.dumps(request), "Databricks runtimes bring Delta; no package is shipped"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("databricks")
    volume = root / "volume"
    for source in ("orders", "events"):
        (volume / source / DAY).mkdir(parents=True)
        (volume / source / DAY / f"{source}-{DAY}.csv").write_text("a header line\n")
    workspace = Workspace(token=TOKEN, volume_root="/Volumes/lakehouse/landing/deliveries", volume_dir=volume)
    server = serve(workspace)
    env = airflow_env(
        root / "airflow",
        LAKEHOUSE_RUNTIME="databricks",
        LAKEHOUSE_DATABRICKS_NODE_TYPE="i3.xlarge",
        LAKEHOUSE_DATABRICKS_POLL_SECONDS="1",
        LAKEHOUSE_TASK_RETRIES="0",
        # The workspace and its token, only in the connection (here from the environment, as a secret
        # backend or the UI would hold it); plain http to the double.
        AIRFLOW_CONN_DATABRICKS_DEFAULT=json.dumps({
            "conn_type": "databricks", "host": "127.0.0.1", "port": server.server_address[1], "schema": "http",
            "password": TOKEN}),
    )
    prepare_airflow_db(env)
    yield workspace, env
    server.shutdown()


def task_states(env, run_id: str) -> dict[str, str]:
    done = subprocess.run(["airflow", "tasks", "states-for-dag-run", "lakehouse_daily", run_id, "-o", "json"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return {row["task_id"]: row["state"] for row in json.loads(done.stdout[done.stdout.index("["):])}


def test_the_dag_on_databricks_follows_the_remote_runs(workspace):
    workspace, env = workspace
    refusal = "RefusedInput: silver events 2010-12-01: gate silver.events failed: 31.2% of the rows quarantined"
    workspace.outcomes["silver_events"] = Outcome(result="FAILED", error=refusal)
    done = subprocess.run(["airflow", "dags", "test", "lakehouse_daily", DAY], env=env,
                          capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert re.findall(r"DagRun Finished: dag_id=lakehouse_daily, logical_date=" + DAY + r".*?state=(\w+)",
                      output) == ["failed"], output[-5000:]

    submits = workspace.submits()
    run_id = submits[0]["tasks"][0]["spark_python_task"]["parameters"][5]
    databricks = DatabricksSettings.from_env(env)
    expected = {}
    for source, layers in (("orders", ("bronze", "silver", "gold")), ("events", ("bronze", "silver"))):
        for layer in layers:
            options = {"gold": ["--refresh", "incremental"],
                       "silver": ["--max-quarantine-share", "default"]}.get(layer, [])
            request = json.loads(json.dumps(run_request(databricks, layer, source, job_parameters(source, options)))
                                 .replace("{{ ds }}", DAY).replace("{{ run_id }}", run_id))
            request["idempotency_token"] = idempotency_token("lakehouse_daily", run_id, f"{source}.{layer}", -1, 1)
            # The provider sends numbers as strings, as the Jobs API accepts them.
            expected[f"{layer}_{source}"] = normalise_json_content(request)
    # Exactly one submit per layer job, each the rendered request: the layer's job file and the date.
    assert {body["tasks"][0]["task_key"]: body for body in submits} == expected
    assert len(submits) == len(expected)
    for key, body in expected.items():
        layer, source = key.split("_")
        assert body["tasks"][0]["spark_python_task"]["python_file"].endswith(f"/spark_jobs/{layer}.py")
        assert body["tasks"][0]["spark_python_task"]["parameters"][:4] == ["--source", source, "--ingestion-date", DAY]

    # The task states follow the runs: orders succeeded; events' silver run failed, gold never ran.
    states = task_states(env, run_id)
    assert states == {"orders.find_delivery": "success", "orders.bronze": "success", "orders.silver": "success",
                      "orders.gold": "success", "events.find_delivery": "success", "events.bronze": "success",
                      "events.silver": "failed", "events.gold": "upstream_failed"}
    # The remote error is in the Airflow log, the refusal is not retried, and the token never shows.
    assert refusal in output
    assert "refused its input on Databricks" in output
    assert TOKEN not in output
    assert workspace.unauthorized == 0
    assert not workspace.cancels()


def test_the_dag_on_serverless_compute_submits_environment_tasks_without_a_cluster(workspace):
    """Serverless jobs compute is Spark Connect only: the same job files, in an environment with the
    project's wheel, no cluster and no libraries, told that there is no cache to keep frames in."""
    workspace, env = workspace
    env = {**env, "LAKEHOUSE_DATABRICKS_COMPUTE": "serverless"}
    before = len(workspace.submits())
    done = subprocess.run(
        ["airflow", "dags", "test", "lakehouse_daily", DAY, "--conf", json.dumps({"sources": ["orders"]})],
        env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert re.findall(r"DagRun Finished: dag_id=lakehouse_daily, logical_date=" + DAY + r".*?state=(\w+)",
                      output) == ["success"], output[-5000:]
    submits = workspace.submits()[before:]
    assert [body["tasks"][0]["task_key"] for body in submits] == ["bronze_orders", "silver_orders", "gold_orders"]
    for body in submits:
        (task,) = body["tasks"]
        assert task["environment_key"] == "lakehouse"
        assert not {"new_cluster", "existing_cluster_id", "libraries"} & set(task), task
        assert body["environments"] == [{"environment_key": "lakehouse",
                                         "spec": {"environment_version": "3", "dependencies": [WHEEL]}}]
        parameters = task["spark_python_task"]["parameters"]
        assert parameters[parameters.index("LAKEHOUSE_CACHE_FRAMES=false") - 1] == "--setting"
    assert TOKEN not in output


def test_a_source_without_a_folder_in_the_volume_is_skipped(workspace):
    workspace, env = workspace
    day = "2010-12-02"
    (workspace.volume_dir / "orders" / day).mkdir()
    before = len(workspace.submits())
    done = subprocess.run(["airflow", "tasks", "test", "lakehouse_daily", "events.find_delivery", day],
                          env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert "no events delivery for 2010-12-02: /Volumes/lakehouse/landing/deliveries/events/2010-12-02 does not exist" \
        in output, output[-3000:]
    assert len(workspace.submits()) == before


def test_killing_the_task_cancels_its_remote_run(workspace):
    workspace, env = workspace
    workspace.outcomes["bronze_orders"] = Outcome(result="HANG")
    before = len(workspace.submits())
    task = subprocess.Popen(["airflow", "tasks", "test", "lakehouse_daily", "orders.bronze", "2010-12-03"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while len(workspace.submits()) == before:
        assert task.poll() is None and time.monotonic() < deadline, "no run was submitted"
        time.sleep(0.5)
    run_id = max(workspace.runs)
    while workspace.runs[run_id].polls < 3:  # the task is following the running run
        assert time.monotonic() < deadline
        time.sleep(0.5)
    task.send_signal(signal.SIGTERM)
    output, _ = task.communicate(timeout=120)
    assert workspace.cancels() == [run_id], output[-3000:]
    assert workspace.runs[run_id].state()["result_state"] == "CANCELED"
    assert f"run_id: {run_id} was requested to be cancelled" in output


def test_a_retry_follows_the_run_of_the_previous_try_instead_of_starting_another(workspace, monkeypatch):
    """Each try submits with its own idempotency token, after asking with the previous try's: a run that
    try started (even if the worker died before it was recorded) and that is still going is followed."""
    from types import SimpleNamespace

    from include.databricks import LayerDatabricksOperator

    workspace, env = workspace
    monkeypatch.setenv("AIRFLOW_CONN_DATABRICKS_DEFAULT", env["AIRFLOW_CONN_DATABRICKS_DEFAULT"])
    workspace.outcomes["gold_events"] = Outcome(result="HANG")
    operator = LayerDatabricksOperator(layer="gold", source="events", databricks=DatabricksSettings.from_env(env),
                                       parameters=job_parameters("events"))
    operator.task_id = "events.gold"

    def submit(try_number: int) -> int:
        ti = SimpleNamespace(dag_id="lakehouse_daily", run_id="scheduled__2010-12-04", task_id="events.gold",
                             map_index=-1, try_number=try_number)
        return operator.submit_job({"ti": ti})

    before = len(workspace.runs)
    first = submit(1)
    assert submit(2) == first, "the second try started another run while the first was still running"
    assert len(workspace.runs) == before + 1
    workspace.runs[first].cancelled = True  # the run ends without success: the next try starts a new one
    third = submit(3)
    assert third != first and len(workspace.runs) == before + 2
    assert submit(3) == third, "a repeated request of one try returned another run"
