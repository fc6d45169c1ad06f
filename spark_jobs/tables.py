"""Every Delta call the layer jobs make, in one place, the same for a classic session (spark-submit, a
local session, Databricks) and a Spark Connect session.

A table's location is a path under the warehouse (`<warehouse>/<layer>/<table>`) or, with LAKEHOUSE_CATALOG
set, the catalog name `<catalog>.<layer>.<table>` (Unity Catalog on Databricks); the jobs use these
helpers with `Settings.table_location`, so the same code serves both.

Only DataFrame reads and writes and Delta's SQL are used: Delta's Python `DeltaTable` API needs Delta's
Spark Connect plugin on the server, which is not published for the Delta release the project runs.

Frames a job computes once and reads several times are kept through `cache` (unless LAKEHOUSE_CACHE_FRAMES
is false: Databricks serverless compute has no cache). On a Spark Connect session a kept frame is a local
checkpoint: its rows stay on the server for the session, and its plan has no lineage, so the many small
queries a job runs over it (the gates' among them) are not analysed again from the Delta scans, joins and
windows that built it. Its rows go when the session ends (every task's session ends with the task, a killed
one's through its cleanup or its retry), at the server's next garbage collection: dropping the frame earlier
does not free them, the session still refers to them. On a classic session a kept frame is cached under a
temporary view of the session and freed by `release` (a killed job's JVM takes its cache with it).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("lakehouse.tables")

# Cached frames' temporary views start with this, then the process id (the Storage page of the Spark UI).
CACHE_PREFIX = "lakehouse_cached_"
# Delta's errors for a commit that lost to another writer's (optimistic concurrency): the write is tried again.
CONFLICT_ERRORS = (
    "DELTA_CONCURRENT_APPEND", "DELTA_CONCURRENT_DELETE_READ", "DELTA_CONCURRENT_DELETE_DELETE",
    "DELTA_CONCURRENT_TRANSACTION", "DELTA_CONCURRENT_WRITE", "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED",
    "ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException", "ConcurrentWriteException", "MetadataChangedException",
    "ProtocolChangedException",
)
CONFLICT_ATTEMPTS = 3
_NO_SPACE = "No space left on device"
# Writes `side_by_side` runs at once: a small table's write is mostly the driver's planning and Delta's commit
# work, one core each, so two keep both cores of a small machine busy.
WRITERS = 2
# A commit or checkpoint file of a Delta log, named after the table version it makes (Delta's protocol).
_LOG_ENTRY = re.compile(r"^(\d{20})\.(json|checkpoint(\.[^/]*)?\.parquet)$")
_views = itertools.count(1)


class CommitConflict(RuntimeError):
    """A Delta commit lost to other writers' commits every time it was tried."""


def is_name(location: str) -> bool:
    """A catalog name (`catalog.schema.table`) rather than a path or URI."""
    return "/" not in location


def sql_name(location: str) -> str:
    """The table in SQL: its catalog name, or ``delta.`<path>` ``."""
    return location if is_name(location) else "delta.`" + location.replace("`", "``") + "`"


def exists(spark, location: str) -> bool:
    """Whether a Delta table is there."""
    from pyspark.errors import AnalysisException

    if is_name(location):
        return spark.catalog.tableExists(location)
    log_dir = _local_log(location)
    if log_dir is not None:
        # On this machine's disk the log says it without a query, which costs the server a snapshot of the table.
        try:
            return any(_LOG_ENTRY.match(name) for name in os.listdir(log_dir))
        except (FileNotFoundError, NotADirectoryError):
            return False
    try:
        spark.sql(f"DESCRIBE DETAIL {sql_name(location)}").select("format").first()
    except AnalysisException:
        return False
    return True


def read(spark, location: str, **options):
    """The table as a DataFrame; `options` are Delta read options (versionAsOf, readChangeFeed, ...)."""
    reader = spark.read.format("delta").options(**{key: str(value) for key, value in options.items()})
    return reader.table(location) if is_name(location) else reader.load(location)


def version(spark, location: str) -> int:
    """The table's latest version."""
    log_dir = _local_log(location)
    if log_dir is not None:
        # Delta's protocol names every commit `<version, 20 digits>.json`: the newest one is the table's version.
        commits = [int(match.group(1)) for match in map(_LOG_ENTRY.match, os.listdir(log_dir))
                   if match and match.group(2) == "json"]
        if commits:
            return max(commits)
    return spark.sql(f"DESCRIBE HISTORY {sql_name(location)} LIMIT 1").select("version").first()[0]


def _local_log(location: str) -> Path | None:
    """The `_delta_log` folder of a table at a path on this machine's disk (the warehouse of every runtime but
    Databricks); None for a catalog name or a remote URI."""
    if is_name(location):
        return None
    if location.startswith("file:"):
        location = location[len("file:"):]
        location = "/" + location.lstrip("/")
    elif "://" in location or not location.startswith("/"):
        return None
    return Path(location) / "_delta_log"


def identity(spark, location: str) -> str:
    """The table's id in its log: it stays through every commit, and a table deleted and made again has a new
    one, whatever its version numbers."""
    return spark.sql(f"DESCRIBE DETAIL {sql_name(location)}").select("id").first()[0]


def size_bytes(spark, location: str) -> int:
    """The bytes of the table's current files, from its log."""
    return spark.sql(f"DESCRIBE DETAIL {sql_name(location)}").select("sizeInBytes").first()[0]


def save(spark, writer, location: str) -> None:
    """Run a DataFrameWriter (format, mode and options set) against the table, creating it if needed."""
    if is_name(location):
        schema = location.rsplit(".", 1)[0]
        if not spark.catalog.databaseExists(schema):
            spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        _committed(lambda: writer.saveAsTable(location), location)
    else:
        _committed(lambda: writer.save(location), location)


def merge(spark, location: str, source, on: str, clauses: list[str]) -> None:
    """`MERGE INTO` the table from the frame `source` (aliased `s`, the table `t`) with `clauses`, e.g.
    `WHEN MATCHED AND NOT s._fresh THEN DELETE`."""
    view = f"lakehouse_merge_source_{next(_views)}"
    source.createOrReplaceTempView(view)
    try:
        statement = f"MERGE INTO {sql_name(location)} AS t USING {view} AS s ON {on} " + " ".join(clauses)
        _committed(lambda: spark.sql(statement).collect(), location)
    finally:
        spark.catalog.dropTempView(view)


class WarehouseFull(OSError):
    """A write that met a full disk: Delta commits nothing of a write that fails, so the table keeps its version."""


def is_conflict(error: BaseException) -> bool:
    """Whether `error` is Delta refusing a commit because another writer committed first (classic or Connect)."""
    condition = getattr(error, "getCondition", None) or getattr(error, "getErrorClass", None)
    try:
        name = condition() if condition else None
    except Exception:
        name = None
    text = f"{name or ''} {error}"
    return any(marker in text for marker in CONFLICT_ERRORS)


def _committed(write, location: str) -> None:
    """Run `write`, trying again when its commit conflicted with another writer's: every write of the jobs is
    idempotent (a replaced partition, a whole table, a merge of recomputed keys, a progress row never
    committed)."""
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            write()
            return
        except Exception as error:
            if _NO_SPACE in str(error):
                # Spark's message names a task and a file system class; the cause is deep in its trace.
                raise WarehouseFull(f"{location}: the disk is full (No space left on device) while writing: free "
                                    f"space, then run the date again (its writes replace what they wrote before)"
                                    ) from error
            if not is_conflict(error):
                raise
            if attempt == CONFLICT_ATTEMPTS:
                raise CommitConflict(f"{location}: the commit conflicted with other writers {attempt} times: "
                                     f"{str(error).splitlines()[0]}") from error
            log.warning("%s: the commit conflicted with another writer's (%s); trying again (%d of %d)",
                        location, str(error).splitlines()[0], attempt + 1, CONFLICT_ATTEMPTS)
            time.sleep(attempt)


def side_by_side(spark, *writes: Callable[[], None]) -> None:
    """Run `writes` (each to a table of its own, none reading what another writes) WRITERS at a time, in
    threads that carry the session's operation tags (so that interrupting the task's tag stops them too).
    Every write runs to its end; then the first error, if any, is raised."""
    if len(writes) < 2:
        for write in writes:
            write()
        return
    from include.spark import tagged_pool

    with tagged_pool(spark, WRITERS, "delta-write") as pool:
        futures = [pool.submit(write) for write in writes]
    for future in futures:
        if future.exception() is not None:
            raise future.exception()


def cache(frame):
    """`frame` computed once and kept: a local checkpoint on a Spark Connect session, else cached under a
    temporary view of its session and read back from that view. Its first query computes it; `release` it."""
    if os.environ.get("LAKEHOUSE_CACHE_FRAMES", "true").lower() in ("0", "false", "no", "off"):
        return frame  # compute where there is no cache (Databricks serverless): each use computes the frame again
    spark = frame.sparkSession
    if connect_session_id(spark):
        from include.spark import active

        with active(spark):
            kept = frame.localCheckpoint(eager=False)
        # Dropping the frame would not free its rows (the session's end does), and pyspark would ask the server
        # to drop it from inside the garbage collector: a gRPC call at any point of any thread, interpreter exit
        # included, where it can wait on the very channel the interrupted thread holds. Nothing is asked.
        kept._plan._spark_session = None
        return kept
    view = f"{CACHE_PREFIX}p{os.getpid()}_{next(_views)}"
    frame.createOrReplaceTempView(view)
    spark.catalog.cacheTable(view)
    cached = spark.table(view)
    cached._lakehouse_view = view
    return cached


def release(*frames) -> None:
    """Free cached frames, in the order given (dependents first: uncaching a frame that cached frames are built
    on makes Spark plan those again). A local checkpoint has nothing to free here: its rows go with the
    session."""
    for frame in frames:
        view = _view_of(frame)
        if view:
            frame.sparkSession.catalog.uncacheTable(view)
            frame.sparkSession.catalog.dropTempView(view)


def connect_session_id(spark) -> str | None:
    """The session's id on its Spark Connect server; None for a classic session."""
    session_id = getattr(spark, "session_id", None)
    return session_id if isinstance(session_id, str) else None


def _view_of(frame) -> str | None:
    """The temporary view `cache` read `frame` from, if it did."""
    return vars(frame).get("_lakehouse_view")  # getattr of a Connect frame answers a column
