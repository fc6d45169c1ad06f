"""One job at a time per layer of a warehouse on a local disk, whatever starts it.

Delta on a local file system does not stop two writers in separate processes from both committing version N
of a table (one commit is then lost), and every layer's jobs share a table across the sources
(`bronze/ingested_files`, `silver/quarantine`, gold's progress table). Silver also decides what to keep from
the fingerprint index its own write extends, so serialising commits alone would still let two silver jobs
accept the same line. Inside Airflow the per-layer pools keep the layer's jobs apart; this lock does it for
every writer - `make dag-test` beside a running scheduler, two jobs started by hand, a notebook - so a
layer job holds `<warehouse>/_locks/<layer>.lock` (an exclusive `flock`) from before its first read to after
its last commit. The kernel drops the lock when the holder's process ends, however it ends, so a killed job
never leaves it behind.

A catalog warehouse (LAKEHOUSE_CATALOG) or a job running on Databricks takes no lock: there the tables are
cloud objects whose commits the platform serialises.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("lakehouse.locks")

LOCKS_DIR = "_locks"
# How often a waiting job tries the lock again, and how often it says it is still waiting.
POLL_SECONDS = 0.2
NOTICE_SECONDS = 60.0


def lock_path(settings, layer: str) -> Path | None:
    """The layer's lock file, or None where the warehouse needs none (catalog tables, Databricks)."""
    if settings.catalog or "DATABRICKS_RUNTIME_VERSION" in os.environ:
        return None
    return Path(settings.warehouse) / LOCKS_DIR / f"{layer}.lock"


def holder(path: Path) -> str:
    """Who holds the lock, as its holder wrote it (empty when nobody does or it had not written yet)."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def layer_lock(settings, layer: str, job: str) -> Iterator[None]:
    """Hold the layer's lock for the block; `job` (e.g. "silver orders 2010-12-01 run manual__...") is written
    into the lock file so that a job waiting for it can say whom it waits for."""
    path = lock_path(settings, layer)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        started = noticed = time.monotonic()
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if not waited or now - noticed >= NOTICE_SECONDS:
                    log.warning("waiting for the %s lock %s: held by %s", layer, path,
                                holder(path) or "another job")
                    waited, noticed = True, now
                time.sleep(POLL_SECONDS)
        if waited:
            log.info("took the %s lock after waiting %.1f s", layer, time.monotonic() - started)
        os.ftruncate(handle, 0)
        since = datetime.now(UTC).isoformat(timespec="seconds")
        os.pwrite(handle, f"{job} (pid {os.getpid()} on {socket.gethostname()}, since {since})".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(handle, 0)
    finally:
        os.close(handle)  # releases the lock
