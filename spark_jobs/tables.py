"""Where a layer job reads and writes its Delta tables: a path under the warehouse
(`<warehouse>/<layer>/<table>`), or, with LAKEHOUSE_CATALOG set, the catalog name
`<catalog>.<layer>.<table>` (Unity Catalog on Databricks). The jobs use these helpers with
`Settings.table_location`, so the same code serves both.
"""

from __future__ import annotations


def is_name(location: str) -> bool:
    """A catalog name (`catalog.schema.table`) rather than a path or URI."""
    return "/" not in location


def exists(spark, location: str) -> bool:
    from delta.tables import DeltaTable

    return spark.catalog.tableExists(location) if is_name(location) else DeltaTable.isDeltaTable(spark, location)


def read(spark, location: str, **options):
    """The table as a DataFrame; `options` are Delta read options (versionAsOf, readChangeFeed, ...)."""
    reader = spark.read.format("delta").options(**{key: str(value) for key, value in options.items()})
    return reader.table(location) if is_name(location) else reader.load(location)


def delta_table(spark, location: str):
    from delta.tables import DeltaTable

    return DeltaTable.forName(spark, location) if is_name(location) else DeltaTable.forPath(spark, location)


def save(spark, writer, location: str) -> None:
    """Run a DataFrameWriter (format, mode and options set) against the table, creating it if needed."""
    if is_name(location):
        schema = location.rsplit(".", 1)[0]
        if not spark.catalog.databaseExists(schema):
            spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        writer.saveAsTable(location)
    else:
        writer.save(location)
