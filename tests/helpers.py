"""Small builders for hand-written deliveries."""

from __future__ import annotations

import gzip
from pathlib import Path

from include.sources import EVENTS, ORDERS

ORDERS_HEADER = ORDERS.header
EVENTS_HEADER = EVENTS.header


def deliver(settings, source: str, day: str, name: str, content: str | bytes, compress: bool = False) -> Path:
    """Write one file into the landing folder of `source` for `day`, exactly as given."""
    folder = settings.landing_dir(source, day)
    folder.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    path = folder / name
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def gold_tables(spark, settings, source: str) -> dict[str, list[tuple]]:
    """Every gold mart of `source`, rows sorted."""
    from spark_jobs.transforms.gold import marts_of

    return {mart.table: sorted((tuple(row) for row in
                                spark.read.format("delta").load(settings.table_path("gold", mart.table)).collect()),
                               key=repr)
            for mart in marts_of(source)}
