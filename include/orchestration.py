"""How the lakehouse runs inside Airflow: the layer job operator, its Data Docs link, and the pools and
connections Airflow's metadata database must hold.

Concurrent runs: Delta on a local file system does not protect two writers in separate processes from
each other (two Spark applications can both commit version N of a table, and one commit is lost). Every
layer job of every source writes a table shared by the sources (`bronze/ingested_files`,
`silver/quarantine`, gold's progress table), so each layer has an Airflow pool with one slot: at most one
bronze, one silver and one gold job run at a time, whatever the number of active runs. Runs of
different dates still overlap (bronze of one date beside silver of another), and because every job is
idempotent per ingestion date, the order in which the dates pass a layer does not change the tables.
Writers outside Airflow's pools (`make dag-test` beside a running scheduler, a job started by hand) are
kept apart by the layer's lock file in the warehouse (spark_jobs/locks.py), which every layer job holds
while it runs; inside Airflow the pools keep a waiting job from holding a worker.

`python -m include.orchestration` creates or updates the pools and connections (`make airflow` and
`make run` do).
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlparse

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset, BaseOperator, BaseOperatorLink
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from include.config import (
    CONFIGURATION_EXIT_STATUS,
    DEFAULT_STALE_AFTER_DAYS,
    DEFAULT_TASK_TIMEOUT_MINUTES,
    LAYERS,
    PROJECT_ROOT,
    QUICK_COMPILER,
    ConfigurationError,
    Settings,
    delta_jars,
    delta_package,
    get_settings,
)
from include.sources import PUBLISHED_TABLES, validation_run_name

# A job that refuses its input (a failed gate, a delivery it cannot read) exits with this status.
REFUSED_EXIT_STATUS = 2
# Where the Airflow plugin in plugins/ serves the Data Docs site.
DATA_DOCS_PREFIX = "/data-docs"


def pool_name(layer: str) -> str:
    return f"lakehouse_{layer}"


POOLS = {
    pool_name(layer): (1, f"{layer} jobs, one at a time: Delta on a local file system does not serialise "
                          f"concurrent writers of a table, and the {layer} jobs of both sources share tables")
    for layer in LAYERS
}


def data_docs_run_url(run_name: str) -> str:
    """The plugin's page for one validation run, relative to the Airflow UI's host (and base path)."""
    from airflow.configuration import conf

    base_path = urlparse(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    return f"{base_path}{DATA_DOCS_PREFIX}/runs/{run_name}"


def table_asset(settings: Settings, layer: str, table: str, databricks=None) -> Asset:
    """The Airflow Asset of one published Delta table: its path, or on Databricks its Unity Catalog table
    in the Databricks provider's form, databricks://<workspace host>/<catalog>/<schema>/<table>.

    The name says where the table is, not only which: Airflow activates an asset only while no active asset
    has its name or its URI, and only a scheduler retires assets no DAG uses any more. Named `bronze.orders`
    alone, the tables of a warehouse moved elsewhere would stay inactive (their runs warned of inactive
    assets and recorded no asset events) until a scheduler ran; a table elsewhere is another asset."""
    if databricks is not None:
        uri = f"databricks://{databricks.host}/{databricks.catalog}/{layer}/{table}"
        where = f"{databricks.host}/{databricks.catalog}"
    else:
        uri = f"file://{settings.table_path(layer, table)}"
        where = str(settings.warehouse)
    return Asset(name=f"{layer}.{table} in {where}", uri=uri, group="lakehouse")


def misconfigured(layer: str, source: str, detail: str) -> str:
    """The failure of a task whose job found the lakehouse's configuration wrong."""
    return (f"{layer} {source} stopped on a configuration error ({detail}; the job's log says what): not retried, "
            f"a retry would meet the same configuration; fix it, then clear the task")


def job_parameters(source: str, options: list[str] | None = None) -> list[str]:
    """The command line of a layer job, the same under spark-submit and as a Databricks task."""
    return ["--source", source, "--ingestion-date", "{{ ds }}", "--run-id", "{{ run_id }}", *(options or [])]


def layer_task(layer: str, source: str, settings: Settings, options: list[str] | None = None, databricks=None):
    """The task that runs one layer job for one source on the runtime LAKEHOUSE_RUNTIME names
    (`databricks`: the DatabricksSettings, read from the environment when not given)."""
    # A hung job is stopped (and retried as any other failure) rather than holding its layer's pool for ever.
    timeout = timedelta(minutes=(settings.task_timeout_minutes or DEFAULT_TASK_TIMEOUT_MINUTES)[layer])
    if settings.runtime == "databricks":
        from include.databricks import DatabricksSettings, LayerDatabricksOperator

        databricks = databricks or DatabricksSettings.from_env()
        return LayerDatabricksOperator(
            layer=layer, source=source, databricks=databricks,
            parameters=job_parameters(source, options), pool=pool_name(layer), execution_timeout=timeout,
            outlets=[table_asset(settings, layer, table, databricks)
                     for table in PUBLISHED_TABLES[(layer, source)]])
    if settings.runtime == "connect":
        return LayerConnectOperator(layer=layer, source=source, settings=settings, options=options,
                                    execution_timeout=timeout)
    return LayerJobOperator(layer=layer, source=source, settings=settings, options=options,
                            execution_timeout=timeout)


def find_delivery_files(settings: Settings, source: str, ingestion_date: str) -> tuple[str, list[str] | None]:
    """The landing folder of a source's delivery for a date and the names in it (None: no such folder).
    On Databricks the landing zone is a volume, listed through the Files API."""
    if settings.runtime == "databricks":
        from include.databricks import DatabricksSettings, list_volume_folder

        databricks = DatabricksSettings.from_env()
        folder = databricks.landing_dir(source, ingestion_date)
        return folder, list_volume_folder(databricks.conn_id, folder)
    folder = settings.landing_dir(source, ingestion_date)
    return str(folder), sorted(entry.name for entry in folder.iterdir()) if folder.is_dir() else None


def last_delivery_before(settings: Settings, source: str, ingestion_date: str) -> date | None:
    """The latest date before `ingestion_date` with a delivery folder of `source` (None: none at all)."""
    if settings.runtime == "databricks":
        from include.databricks import DatabricksSettings, list_volume_folder

        databricks = DatabricksSettings.from_env()
        names = list_volume_folder(databricks.conn_id, databricks.landing_dir(source, ingestion_date).rsplit("/", 1)[0])
    else:
        root = settings.landing / source
        names = [entry.name for entry in root.iterdir() if entry.is_dir()] if root.is_dir() else []
    dates = []
    for name in names or []:
        try:
            dates.append(date.fromisoformat(name.rstrip("/")))
        except ValueError:
            continue
    earlier = [day for day in dates if day < date.fromisoformat(ingestion_date)]
    return max(earlier) if earlier else None


def stale_source_message(settings: Settings, source: str, ingestion_date: str) -> str | None:
    """Why a date without a delivery of `source` must fail rather than be skipped: the source delivered
    before and has not for LAKEHOUSE_STALE_AFTER_DAYS_<SOURCE> days or more (None: skip it quietly)."""
    limit = (settings.stale_after_days or DEFAULT_STALE_AFTER_DAYS).get(source, 0)
    if not limit:
        return None
    last = last_delivery_before(settings, source, ingestion_date)
    if last is None or (date.fromisoformat(ingestion_date) - last).days < limit:
        return None
    return (f"no {source} delivery for {ingestion_date}, and none since {last} "
            f"({(date.fromisoformat(ingestion_date) - last).days} days): has the sender stopped delivering? "
            f"(LAKEHOUSE_STALE_AFTER_DAYS_{source.upper()}={limit}; 0 turns this check off)")


class DataDocsLink(BaseOperatorLink):
    """The task's "Data Docs" button: the validation pages of this date, layer and source."""

    name = "Data Docs"

    def get_link(self, operator, *, ti_key) -> str:
        run_name = getattr(operator, "gate_run", "")
        return data_docs_run_url(run_name) if run_name and "{{" not in run_name else ""


class LayerConnectOperator(BaseOperator):
    """One layer job for one source and the run's ingestion date, run in the task's own process as a client of
    the Spark Connect server (LAKEHOUSE_RUNTIME=connect): no spark-submit, no JVM in the task.

    Each try has a session of its own on the server, its id and its operations' tag derived from the DAG,
    run, task and try. However the try ends, its session's operations are stopped, the frames it cached
    released (the server's cache is shared by every session) and the session closed: at the end of the job,
    when the task is killed (`on_kill`: marked failed or cleared in the UI, a timeout, SIGTERM), and, for a
    try that was killed outright, by the next try before it starts. A job that refuses its input fails the
    task without retries; a server that does not answer fails it within seconds, with how to start the server,
    and the task is retried as the DAG says.
    """

    template_fields = ("job_arguments", "gate_run")
    operator_extra_links = (DataDocsLink(),)
    ui_color = "#f4a460"

    def __init__(self, *, layer: str, source: str, settings: Settings | None = None,
                 options: list[str] | None = None, **kwargs) -> None:
        settings = settings or get_settings()
        super().__init__(
            task_id=layer,
            pool=pool_name(layer),
            outlets=[table_asset(settings, layer, table) for table in PUBLISHED_TABLES[(layer, source)]],
            **kwargs,
        )
        self.layer = layer
        self.source = source
        self.lakehouse_settings = settings
        self.job_arguments = job_parameters(source, options)
        self.gate_run = validation_run_name("{{ ds }}", layer, source)
        self.session_id: str | None = None

    def execute(self, context) -> None:
        import importlib

        from include.spark import (
            ServerUnavailable,
            connect_session,
            server_listening,
            session_id_for,
            unavailable_message,
        )
        from spark_jobs.common import RefusedInput, quiet_libraries

        quiet_libraries()
        settings, ti = self.lakehouse_settings, context["ti"]
        try_names = (ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
        if ti.try_number > 1:
            self._release(session_id_for(*try_names, ti.try_number - 1), "the previous try's")
        self.session_id = session_id_for(*try_names, ti.try_number)
        tag = f"lakehouse {ti.dag_id} {ti.run_id} {ti.task_id} try {ti.try_number}".replace(",", " ")
        try:
            spark = connect_session(settings, self.session_id, tag)
        except ServerUnavailable as error:
            raise AirflowException(str(error)) from None
        self.log.info("running %s %s on the Spark Connect server at 127.0.0.1:%s, session %s (tag %r)",
                      self.layer, self.source, settings.connect_port, self.session_id, tag)
        job = importlib.import_module(f"spark_jobs.{self.layer}").JOB
        try:
            job.execute(list(self.job_arguments), spark=spark)
        except RefusedInput as error:
            raise AirflowFailException(
                f"{self.layer} {self.source} refused its input (the reason is logged above): not retried, the same "
                f"data would be refused again") from error
        except ConfigurationError as error:
            raise AirflowFailException(misconfigured(self.layer, self.source, str(error))) from error
        except Exception as error:
            if not server_listening(settings):
                raise AirflowException(unavailable_message(settings)) from error
            raise
        finally:
            self._release(self.session_id, "this try's", spark)

    def on_kill(self) -> None:
        if self.session_id:
            self._release(self.session_id, "the killed try's")

    def _release(self, session_id: str, whose: str, spark=None) -> None:
        from include.spark import release_session

        try:
            interrupted = release_session(self.lakehouse_settings, session_id, spark)
        except Exception as error:  # the server is gone: nothing of the session is left on it
            self.log.warning("could not release %s Spark Connect session %s: %s", whose, session_id,
                             str(error).splitlines()[0] if str(error) else type(error).__name__)
            return
        if interrupted:
            self.log.warning("stopped %d operation(s) of %s session %s on the Spark Connect server",
                             len(interrupted), whose, session_id)


class LayerJobOperator(SparkSubmitOperator):
    """spark-submit of one layer job for one source and the run's ingestion date.

    A job that exits with status 2 refused its data (a failed gate, an unreadable delivery): the task
    fails at once, without retries, since running it again would refuse the same data. Any other failure
    (a killed JVM, a full disk, a lost executor) is retried as the DAG's retries say.
    """

    template_fields = (*SparkSubmitOperator.template_fields, "gate_run")
    operator_extra_links = (DataDocsLink(),)

    def __init__(self, *, layer: str, source: str, settings: Settings | None = None,
                 options: list[str] | None = None, **kwargs) -> None:
        settings = settings or get_settings()
        # The Delta jars `make setup` keeps in the venv: no Ivy resolution at each start (else the package).
        jars = delta_jars()
        super().__init__(
            task_id=layer,
            conn_id=settings.spark_conn_id,
            application=str(PROJECT_ROOT / "spark_jobs" / f"{layer}.py"),
            application_args=job_parameters(source, options),
            name=f"{layer}-{source}-{{{{ ds }}}}",
            packages=None if jars else delta_package(),
            jars=",".join(jars) if jars else None,
            conf=settings.submit_conf(),
            driver_memory=settings.driver_memory,
            pool=pool_name(layer),
            outlets=[table_asset(settings, layer, table) for table in PUBLISHED_TABLES[(layer, source)]],
            **kwargs,
        )
        self.layer = layer
        self.source = source
        self.runtime = settings.runtime
        self.lakehouse_settings = settings
        self.code_directory = str(settings.airflow_home / "code")
        self.gate_run = validation_run_name("{{ ds }}", layer, source)

    def execute(self, context) -> None:
        if self.runtime == "spark":
            # A cluster's executors import the project from the application's files, not the checkout. The
            # driver (client mode) runs the installed package: the archive goes to the executors only.
            from include.code_archive import executor_conf

            shipped = executor_conf(Path(self.code_directory))
            self.conf = {**self.conf, **shipped}
            self.log.info("shipping the project's code to the executors: %s", shipped["spark.archives"])
        settings, ingestion_date = self.lakehouse_settings, context.get("ds")
        if ingestion_date and settings.quick_compiler(self.source, ingestion_date, self.application_args):
            self.conf = {**self.conf, **settings.submit_conf(quick=True)}
            self.log.info("a small delivery (at most LAKEHOUSE_QUICK_COMPILER_MB): the job's JVMs compile with "
                          "the quick compiler only (%s)", QUICK_COMPILER)
        try:
            super().execute(context)
        except AirflowException as error:
            if self._exit_status() == REFUSED_EXIT_STATUS:
                raise AirflowFailException(
                    f"{self.layer} {self.source} refused its input (exit status {REFUSED_EXIT_STATUS}; the reason "
                    f"is logged above): not retried, the same data would be refused again") from error
            if self._exit_status() == CONFIGURATION_EXIT_STATUS:
                raise AirflowFailException(misconfigured(self.layer, self.source,
                                                         f"exit status {CONFIGURATION_EXIT_STATUS}")) from error
            raise

    def _exit_status(self) -> int | None:
        process = getattr(self._hook, "_submit_sp", None)
        return getattr(process, "returncode", None)


def connections(settings: Settings) -> dict[str, dict]:
    """The connections the DAG's Spark runtimes use, kept up to date by `apply`. Only connections without
    secrets live here; a Databricks token belongs in the `databricks_default` connection an operator
    creates (UI, CLI or AIRFLOW_CONN_DATABRICKS_DEFAULT), never in the repository."""
    return {"spark_local": {"conn_type": "spark", "host": settings.spark_master,
                            "description": "the local Spark the layer jobs run on when LAKEHOUSE_RUNTIME=local"}}


def default_connections() -> dict[str, dict]:
    """Connections created when missing and otherwise left as their owner set them: `spark_default`
    points at the cluster `make spark-cluster` starts until someone points it at theirs."""
    import secrets

    from include.tools.spark_cluster import Cluster

    settings = get_settings()
    return {"spark_default": {"conn_type": "spark", "host": Cluster.from_env().master_url,
                              "description": "the Spark standalone master the layer jobs run on when "
                                             "LAKEHOUSE_RUNTIME=spark (`make spark-cluster` starts one here)"},
            # The Connect server's token: random, made here once, read by the server and its clients.
            settings.connect_conn_id: {
                "conn_type": "spark_connect", "host": "localhost", "port": settings.connect_port,
                "password": secrets.token_urlsafe(32),
                "description": "the Spark Connect server the layer jobs run on when LAKEHOUSE_RUNTIME=connect "
                               "(`make spark-connect`); its password is the server's token"}}


def apply(settings: Settings) -> list[str]:
    """Create or update the pools and connections in Airflow's metadata database; what was done, one line each."""
    from airflow.models import Connection, Pool
    from airflow.utils.session import create_session

    done = []
    with create_session() as session:
        for name, (slots, description) in POOLS.items():
            pool = session.query(Pool).filter(Pool.pool == name).one_or_none()
            if pool is None:
                session.add(Pool(pool=name, slots=slots, description=description, include_deferred=False))
                done.append(f"pool {name}: created with {slots} slot(s)")
            elif (pool.slots, pool.description) != (slots, description):
                pool.slots, pool.description = slots, description
                done.append(f"pool {name}: set to {slots} slot(s)")
        for conn_id, fields in connections(settings).items():
            wanted = Connection(conn_id=conn_id, **fields)
            current = session.query(Connection).filter(Connection.conn_id == conn_id).one_or_none()
            if current is None:
                session.add(wanted)
                done.append(f"connection {conn_id}: created ({fields['conn_type']} {fields['host']})")
            elif (current.conn_type, current.host, current.description) != \
                    (wanted.conn_type, wanted.host, wanted.description):
                current.conn_type, current.host, current.description = wanted.conn_type, wanted.host, wanted.description
                done.append(f"connection {conn_id}: updated ({fields['conn_type']} {fields['host']})")
        for conn_id, fields in default_connections().items():
            if session.query(Connection).filter(Connection.conn_id == conn_id).one_or_none() is None:
                session.add(Connection(conn_id=conn_id, **fields))
                done.append(f"connection {conn_id}: created ({fields['conn_type']} {fields['host']}"
                            f"{':' + str(fields['port']) if fields.get('port') else ''})")
    return done


def main() -> int:
    for line in apply(get_settings()) or ["pools and connections already up to date"]:
        print(f"airflow setup: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
