"""Spark sessions for the jobs and the tests.

With LAKEHOUSE_RUNTIME=connect (the default) a job is a thin client of the long-running Spark Connect
server on this machine (include/tools/spark_connect.py): `connect_session` opens a session of its own on
it, with the job's SQL settings. Otherwise the session is local or was built by spark-submit:
`get_spark` uses a session that already exists (Databricks, a notebook, spark-submit's JVM, with its
master and jars from the command line), or starts a local one with the Delta jars `make setup` keeps in
the venv (include/tools/delta_jars.py), or where they are missing the Delta package, resolved from Maven
Central on first use and cached under ~/.ivy2.5.2.

The Connect server's token comes from LAKEHOUSE_CONNECT_TOKEN or the password of the Airflow connection
LAKEHOUSE_CONNECT_CONN_ID, and goes to the server in a call credential: never in a URL, a command line or
a log line.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import uuid
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from include.config import Settings, delta_jars, delta_package, get_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("lakehouse.spark")
# The Connect sessions this process opened, ended at its exit if nobody did (`_end_open_sessions`). A forked
# child (an executor's worker, a test's helper) does not own its parent's: it starts with none.
_opened: weakref.WeakSet = weakref.WeakSet()
os.register_at_fork(after_in_child=_opened.clear)

# A Connect client gives up on a server that does not answer after about this long (six retries with
# backoff), where pyspark's default waits ten minutes: a task of a server that is down fails fast and
# says how to start it; Airflow retries the task.
CONNECT_RETRIES = 6
CONNECT_MAX_BACKOFF_MS = 4000
# Session ids of the Connect server are UUIDs; a task try's is derived from what names the try.
_SESSION_NAMESPACE = uuid.UUID("5b8f3f0e-51a2-4f0c-9d55-6c1d3e1f7a01")


class ServerUnavailable(RuntimeError):
    """The Spark Connect server does not answer (not started, stopped, or another token)."""


def get_spark(app_name: str, settings: Settings | None = None) -> SparkSession:
    """The job's session: a new session on the Connect server for LAKEHOUSE_RUNTIME=connect, else the
    session that exists (spark-submit, Databricks, a notebook) or a new local one."""
    settings = settings or get_settings()
    if settings.runtime == "connect":
        return connect_session(settings)

    from pyspark.sql import SparkSession

    # A classic session's process is never in Spark Connect mode, whatever its parent process was in.
    os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app_name)
    # spark-submit hands its JVM to Python through this variable; its master and jars then stand.
    launched_by_spark_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if not launched_by_spark_submit:
        builder = builder.master(settings.spark_master)
        jars = delta_jars()  # kept in the venv by `make setup`; else resolved from the package
        builder = builder.config("spark.jars", ",".join(jars)) if jars else builder.config("spark.jars.packages",
                                                                                            delta_package())
    for key, value in settings.spark_conf().items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def session_id_for(*names: object) -> str:
    """A Connect session id that is the same for the same names (a task try: DAG, run, task, map index, try)."""
    return str(uuid.uuid5(_SESSION_NAMESPACE, "|".join(str(name) for name in names)))


def connect_token(settings: Settings, env: dict[str, str] | None = None) -> str | None:
    """The Connect server's token: LAKEHOUSE_CONNECT_TOKEN, else the password of the Airflow connection
    `settings.connect_conn_id` (in a task through the task's API, elsewhere from Airflow's secrets
    backends and metadata database); None when neither holds one."""
    env = os.environ if env is None else env
    if env.get("LAKEHOUSE_CONNECT_TOKEN"):
        return env["LAKEHOUSE_CONNECT_TOKEN"]
    try:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(settings.connect_conn_id).password or None
    except ImportError:
        return None
    except Exception:  # not in a task: Airflow's own lookup, metadata database included
        pass
    try:
        from airflow.models.connection import Connection

        logging.getLogger("airflow.models.connection").setLevel(logging.ERROR)  # "schemes shall not contain '_'"
        return Connection.get_connection_from_secrets(settings.connect_conn_id).password or None
    except Exception:
        return None


def connect_address(settings: Settings) -> str:
    return f"127.0.0.1:{settings.connect_port}"


def server_listening(settings: Settings, timeout: float = 2.0) -> bool:
    """Whether something accepts connections on the Connect server's port."""
    try:
        with socket.create_connection(("127.0.0.1", settings.connect_port), timeout=timeout):
            return True
    except OSError:
        return False


def unavailable_message(settings: Settings) -> str:
    return (f"the Spark Connect server does not answer at {connect_address(settings)} "
            f"(LAKEHOUSE_RUNTIME=connect): start it with `make spark-connect` "
            f"(`make airflow`, `make run` and `make dag-test` start it too); its log is in "
            f"{settings.connect_home}/server.log")


def connect_session(settings: Settings, session_id: str | None = None, tag: str | None = None,
                    token: str | None = None, current: bool = True) -> SparkSession:
    """A new session on the Connect server (`session_id`: attach to that session, or create it under that
    id), its operations tagged `tag` in this thread, with the job's SQL settings and a short retry policy.
    `current`: the session `getOrCreate` answers from now on, in this process and thread (Great Expectations
    finds its session that way); a helper client (a cleanup) is not.

    Raises `ServerUnavailable` at once when nothing listens on the server's port.
    """
    from pyspark.sql.connect.client import DefaultChannelBuilder
    from pyspark.sql.connect.client.retries import DefaultPolicy
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    if not server_listening(settings):
        raise ServerUnavailable(unavailable_message(settings))
    # "localhost", not the address: pyspark sends a token over plain TCP only to a local-credentials channel.
    channel = DefaultChannelBuilder(f"sc://localhost:{settings.connect_port}")
    token = token or connect_token(settings)
    if token:
        channel.set(DefaultChannelBuilder.PARAM_TOKEN, token)
    if session_id:
        channel.set(DefaultChannelBuilder.PARAM_SESSION_ID, session_id)
    channel.set(DefaultChannelBuilder.PARAM_USER_AGENT, "lakehouse")
    # What pyspark's own `builder.remote()` sets: pyspark.sql.functions build Connect columns from then on.
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    spark = ConnectSession.builder.channelBuilder(channel).create()
    if current:
        make_current(spark)
    spark.client.set_retry_policies([DefaultPolicy(max_retries=CONNECT_RETRIES, max_backoff=CONNECT_MAX_BACKOFF_MS)])
    try:
        for key, value in settings.session_conf().items():
            spark.conf.set(key, value)
    except Exception as error:
        spark.client.close()
        raise _server_error(settings, error) from error
    if tag:
        spark.addTag(tag)
    _opened.add(spark)
    return spark


@atexit.register
def _end_open_sessions() -> None:
    """At exit, end the Connect sessions this process left open: the frames a job kept are held on the server
    for its session, and a client left open would hang the interpreter's exit, its kept frames asking the
    server one by one to drop them. A session a cleanup released already is only closed here."""
    for spark in list(_opened):
        if not spark.is_stopped:
            spark.stop()


def make_current(spark) -> None:
    """Make a Connect session the one `getOrCreate` answers in this process and thread, which is how Great
    Expectations finds its session. pyspark keeps the first session it made as the default while that one
    lives, and none once the current one is stopped; it has no public setter for a Connect session. A classic
    session is the process's only one: nothing to do."""
    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession
    except ImportError:  # a classic-only pyspark (without Spark Connect's client libraries)
        return
    if isinstance(spark, ConnectSession):
        ConnectSession._default_session = spark
        ConnectSession._active_session.session = spark


@contextlib.contextmanager
def active(spark) -> Iterator[None]:
    """`spark` the active session of this thread for the block, as it was before after it: pyspark binds the
    frame a Connect call answers with (a local checkpoint's) to the thread's active session, not to the
    session that made the call, and a process may hold several sessions (a cleanup's, a test's)."""
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    before = getattr(ConnectSession._active_session, "session", None)
    ConnectSession._active_session.session = spark
    try:
        yield
    finally:
        ConnectSession._active_session.session = before


def tagged_pool(spark, workers: int, prefix: str):
    """A thread pool whose threads tag their operations as this thread does, so that interrupting the task's
    tag (an Airflow task killed) stops what they run too."""
    from concurrent.futures import ThreadPoolExecutor

    tags = spark.getTags()
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=prefix,
                              initializer=lambda: [spark.addTag(tag) for tag in tags])


def _server_error(settings: Settings, error: Exception) -> Exception:
    text = str(error)
    if "UNAUTHENTICATED" in text or "authentication token" in text:
        return ServerUnavailable(
            f"the Spark Connect server at {connect_address(settings)} refused this client's token: it runs with "
            f"another one (LAKEHOUSE_CONNECT_TOKEN, or the password of the Airflow connection "
            f"{settings.connect_conn_id}); restart it with `make spark-connect-stop spark-connect`")
    if "UNAVAILABLE" in text or "failed to connect" in text.lower():
        return ServerUnavailable(unavailable_message(settings))
    return error


def release_session(settings: Settings, session_id: str | None = None, spark: SparkSession | None = None,
                    token: str | None = None) -> list[str]:
    """Stop whatever a session still runs on the Connect server and end it, which frees the frames its job
    kept (local checkpoints, held for the session; the server's memory is shared by every session); the
    interrupted operations' ids. `spark`: the session itself; else a new client attaches to `session_id` (a
    killed task's, or the try before a retry's). Safe on a session that no longer exists."""
    try:
        spark = spark or connect_session(settings, session_id, token=token, current=False)
    except Exception as error:
        if "SESSION_CLOSED" in str(error):  # released already: nothing of it is left
            return []
        raise
    try:
        interrupted = spark.interruptAll()
        # An operation the job's threads started meanwhile goes too.
        return interrupted + spark.interruptAll()
    except Exception as error:
        if "SESSION_CLOSED" in str(error):
            return []
        raise
    finally:
        spark.stop()
