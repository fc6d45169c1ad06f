"""Write-audit-publish, one step for every layer job.

A job computes the frames of what it publishes and declares each as an `Output`: the frame, how it is
written, and the suite that validates it first. `publish` then

1. keeps every validated frame (computed once, by the gate's first query: the gate reads it from memory,
   and so does its write),
2. validates them all (`expectations/gate.py`): a date the gate refuses raises `GateFailed` and nothing
   is written, so every published table keeps its previous version,
3. writes them round by round, the writes of one round side by side (each to a table of its own, none
   reading what another of the round writes),
4. releases the frames it kept, then the job's own (`release`, dependents first), however it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from expectations.gate import Check, Outcome, audit
from include.config import Settings
from spark_jobs import tables as store


@dataclass(frozen=True)
class Output:
    """A table a job publishes.

    `write` receives the frame as validated (kept in memory when the gates ran). `suite`: the table part of the
    `<layer>.<table>` suite that validates it first, None for a table no suite reads (the fingerprint index, a
    mart's rollup); `parameters` and `views` are the suite's (see `expectations.gate.Check`). `keep`: False for a
    frame that is cheap to compute again (a few rows built on the driver). `round`: writes run in rounds, in order.
    """

    frame: Any
    write: Callable[[Any], None]
    suite: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    views: Mapping[str, Any] = field(default_factory=dict)
    keep: bool = True
    round: int = 0


@dataclass(frozen=True)
class Published:
    outcomes: list[Outcome]
    validation_seconds: float  # the gate
    write_seconds: float


def publish(spark, settings: Settings, layer: str, source: str, ingestion_date: date, outputs: list[Output],
            release: Iterable[Any] = ()) -> Published:
    """Stage, audit, write and release the job's `outputs` (see the module's docstring)."""
    keeping = [bool(settings.gates and output.suite and output.keep) for output in outputs]
    kept: list[Any] = []
    try:
        for output, keep in zip(outputs, keeping):  # one at a time: a failure releases those kept before it
            kept.append(store.cache(output.frame) if keep else output.frame)
        started = time.monotonic()
        outcomes = audit(spark, settings, layer, source, ingestion_date, [
            Check(output.suite, frame, parameters=output.parameters, views=output.views)
            for output, frame in zip(outputs, kept) if output.suite])
        audited = time.monotonic()
        for current in sorted({output.round for output in outputs}):
            store.side_by_side(spark, *(
                lambda output=output, frame=frame: output.write(frame)
                for output, frame in zip(outputs, kept) if output.round == current))
        return Published(outcomes, audited - started, time.monotonic() - audited)
    finally:
        store.release(*(frame for frame, keep in reversed(list(zip(kept, keeping))) if keep), *release)
