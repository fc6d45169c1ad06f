"""Print what the warehouse holds: rows per table and ingestion date, and where each table is.

Reads the Delta tables with the `deltalake` package (no Spark), which also shows that they stay
readable by other Delta readers.

    lakehouse-show-tables [--date 2010-12-01]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from datetime import date
from pathlib import Path

from include.config import LAYERS, get_settings

DATE_COLUMNS = ("_ingestion_date", "ingestion_date")


def delta_tables(warehouse: Path) -> list[Path]:
    return sorted(
        path.parent
        for layer in LAYERS
        for path in (warehouse / layer).glob("*/_delta_log")
        if path.is_dir()
    )


def query(table_path: Path | str, sql: str):
    """Run `sql` over the Delta table registered as `t`, with deltalake's own engine; a pyarrow Table.

    deltalake's query engine, not `to_pyarrow_table()`: the pyarrow scan can abort the interpreter
    at exit (delta-io/delta-rs#2184).
    """
    import pyarrow as pa
    from deltalake import DeltaTable, QueryBuilder

    return pa.table(QueryBuilder().register("t", DeltaTable(str(table_path))).execute(sql).read_all())


def rows_per_date(table_path: Path) -> tuple[int, Counter]:
    """Delta version and rows per ingestion date of one table."""
    from deltalake import DeltaTable

    table = DeltaTable(str(table_path))
    names = {field.name for field in table.schema().fields}
    column = next((name for name in DATE_COLUMNS if name in names), None)
    if column is None:
        counts = query(table_path, "SELECT NULL AS d, count(*) AS n FROM t").to_pylist()
    else:
        counts = query(table_path, f'SELECT "{column}" AS d, count(*) AS n FROM t GROUP BY 1').to_pylist()
    return table.version(), Counter({row["d"]: row["n"] for row in counts})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--date", type=date.fromisoformat, help="show only this ingestion date")
    parser.add_argument("--warehouse", type=Path, help="warehouse root (default: $LAKEHOUSE_WAREHOUSE)")
    args = parser.parse_args(argv)

    warehouse = args.warehouse or get_settings().warehouse
    tables = delta_tables(warehouse)
    if not tables:
        print(f"no Delta tables under {warehouse} yet")
        return 0
    print(f"Delta tables under {warehouse}:")
    for path in tables:
        version, counts = rows_per_date(path)
        name = path.relative_to(warehouse).as_posix()
        shown = {key: value for key, value in counts.items() if args.date is None or key in (args.date, None)}
        print(f"  {name}  (version {version}, {sum(counts.values()):,} rows)  {path}")
        for key, value in sorted(shown.items(), key=lambda item: (item[0] is None, item[0])):
            print(f"      {key if key is not None else 'all'}: {value:,} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
