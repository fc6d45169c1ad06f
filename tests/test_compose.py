"""docker-compose.yaml and the Databricks Asset Bundle, checked statically (no Docker engine or Databricks
workspace on the development machine): they parse, everything they reference exists, and their versions
and paths agree with requirements.txt and the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from include.config import PROJECT_ROOT
from include.databricks import DatabricksSettings, run_request, wheel_name

AIRFLOW_SERVICES = {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                    "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer"}


def pins() -> dict[str, str]:
    found = {}
    for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines():
        if match := re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s#]+)", line.strip()):
            found[match[1].lower()] = match[2]
    return found


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yaml").read_text())


def command_of(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def test_services_volumes_and_dependencies_exist(compose):
    services, volumes = compose["services"], compose["volumes"]
    assert {"postgres", "airflow-init", *AIRFLOW_SERVICES, "spark-master", "spark-worker"} <= set(services)
    used = set()
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on a service that does not exist: {dependency}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in volumes, f"{name} mounts an undeclared volume {source}"
                used.add(source)
    assert used == set(volumes), f"declared but unused volumes: {set(volumes) - used}"
    # Long-running services say when they are healthy; one-shot init is waited for by the others.
    for name, service in services.items():
        if name != "airflow-init":
            assert "healthcheck" in service, f"{name} has no health check"
    for name in AIRFLOW_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["airflow-init"]["condition"] == "service_completed_successfully"


def test_airflow_runs_its_services_on_postgres_with_the_ui_on_8080(compose):
    services = compose["services"]
    for name, subcommand in AIRFLOW_SERVICES.items():
        assert command_of(services[name]) == f"airflow {subcommand}", name
    assert "8080:8080" in services["airflow-apiserver"]["ports"]
    assert "/api/v2/monitor/health" in " ".join(services["airflow-apiserver"]["healthcheck"]["test"])
    environment = services["airflow-scheduler"]["environment"]
    assert environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
    assert "@postgres:5432/airflow" in environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert environment["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert environment["LAKEHOUSE_RUNTIME"] == "spark"
    assert environment["AIRFLOW_CONN_SPARK_DEFAULT"] == "spark://spark-master:7077"
    assert "include.orchestration" in command_of(services["airflow-init"])


def test_secrets_come_from_the_environment_not_the_file():
    text = (PROJECT_ROOT / "docker-compose.yaml").read_text()
    compose = yaml.safe_load(text)
    password = compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert re.fullmatch(r"\$\{AIRFLOW_DB_PASSWORD:\?[^}]+\}", password)
    environment = compose["services"]["airflow-scheduler"]["environment"]
    assert re.fullmatch(r"\$\{AIRFLOW_JWT_SECRET:\?[^}]+\}", environment["AIRFLOW__API_AUTH__JWT_SECRET"])
    assert "${AIRFLOW_DB_PASSWORD:?" in environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert "/.env" in (PROJECT_ROOT / ".gitignore").read_text().splitlines()
    example = (PROJECT_ROOT / "include" / "docker" / "env.example").read_text()
    assert re.search(r"^AIRFLOW_DB_PASSWORD=$", example, re.M) and re.search(r"^AIRFLOW_JWT_SECRET=$", example, re.M)


def test_the_image_is_the_pinned_airflow_with_java_and_the_project(compose):
    build = compose["services"]["airflow-scheduler"]["build"]
    dockerfile = PROJECT_ROOT / build["context"] / build["dockerfile"]
    text = dockerfile.read_text()
    base = re.search(r"^FROM apache/airflow:(\S+)-python(3\.\d+)$", text, re.M)
    assert base, "the image must build on the official Airflow image"
    assert base[1] == pins()["apache-airflow"], "the base image's Airflow is not the version requirements.txt pins"
    assert compose["services"]["airflow-scheduler"]["image"].endswith(f":{pins()['apache-airflow']}")
    assert "openjdk-17-jre-headless" in text and "-r /opt/lakehouse/requirements.txt" in text
    assert "-c /opt/lakehouse/requirements.lock" in text, "the image installs the locked versions"
    for sources in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for source in sources.split():
            assert (PROJECT_ROOT / build["context"] / source).exists(), f"the Dockerfile copies a missing {source}"
    for package in ("dags", "plugins", "include", "spark_jobs", "expectations"):
        assert re.search(rf"^COPY .* {package} /opt/lakehouse/{package}$", text, re.M), package
    assert re.search(r"^RUN pip install .*--no-deps --editable /opt/lakehouse$", text, re.M), "the project installed"
    assert "PYTHONPATH" not in text, "the package is installed, not put on the path by hand"
    # Spark's master and worker come from the same image: the pinned pyspark, the same Java.
    for name, main in (("spark-master", "deploy.master.Master"), ("spark-worker", "deploy.worker.Worker")):
        service = compose["services"][name]
        assert service["image"] == compose["services"]["airflow-scheduler"]["image"], name
        assert "bin/spark-class" in command_of(service) and f"org.apache.spark.{main}" in command_of(service)
    assert "spark://spark-master:7077" in command_of(compose["services"]["spark-worker"])
    assert "--port 7077" in command_of(compose["services"]["spark-master"])
    assert compose["services"]["postgres"]["image"].split(":")[1][0].isdigit(), "pin the PostgreSQL image"


def test_spark_and_airflow_see_the_data_at_the_same_paths(compose):
    services = compose["services"]
    data = {mount for mount in services["airflow-scheduler"]["volumes"] if "/opt/lakehouse/data" in mount}
    assert data and data == set(services["spark-worker"]["volumes"])
    environment = services["airflow-scheduler"]["environment"]
    for variable in ("LAKEHOUSE_LANDING", "LAKEHOUSE_WAREHOUSE", "LAKEHOUSE_GX_ROOT"):
        assert any(mount.split(":")[1] == environment[variable] for mount in data), variable


def test_the_bundle_uploads_the_wheel_where_the_dag_installs_it_from():
    bundle = yaml.safe_load((PROJECT_ROOT / "include" / "databricks.yml").read_text())
    assert bundle["bundle"]["name"] == "lakehouse"
    root = bundle["workspace"]["root_path"].replace("${bundle.name}", "lakehouse").replace("${bundle.target}", "prod")
    assert "prod" in bundle["targets"] and "root_path" not in bundle["targets"]["prod"].get("workspace", {})
    assert f"{root}/files" == DatabricksSettings.files, "the bundle deploys where the DAG does not look"
    # The sync root is the repository: `make wheel`'s dist/<wheel> is <files>/dist/<wheel>, as the runs ask.
    assert bundle["sync"]["paths"] == [".."]
    assert bundle["sync"]["include"] == [f"../dist/{wheel_name('*')}"]
    request = run_request(DatabricksSettings.from_env({"LAKEHOUSE_DATABRICKS_NODE_TYPE": "i3.xlarge"}), "gold",
                          "orders", [])
    assert request["tasks"][0]["libraries"] == [{"whl": f"{DatabricksSettings.files}/dist/{wheel_name()}"}]
    assert not any(pattern.startswith(("../dist", "../spark_jobs")) for pattern in bundle["sync"]["exclude"])
    assert request["tasks"][0]["spark_python_task"]["python_file"] == f"{DatabricksSettings.files}/spark_jobs/gold.py"
    for layer in ("bronze", "silver", "gold"):
        assert (PROJECT_ROOT / "spark_jobs" / f"{layer}.py").is_file()
    assert not re.search(r"(?i)token|password|dapi", Path(PROJECT_ROOT / "include" / "databricks.yml").read_text()
                         .split("bundle:")[1]), "no credentials in the bundle"
