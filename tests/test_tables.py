"""spark_jobs/tables.py: what the jobs read of a Delta table without asking Spark agrees with Spark."""

from __future__ import annotations

import shutil

from spark_jobs import tables


def test_a_tables_id_and_size_read_from_its_log_are_what_delta_says(spark, lakehouse):
    """The jobs read a local table's id and size from its log (delta-rs) instead of asking Spark: the same
    answers as `DESCRIBE DETAIL`, through overwrites, appends and the change feed, and a new id for a table
    made again."""
    path = lakehouse.table_path("silver", "id_and_size")

    def detail():
        row = spark.sql(f"DESCRIBE DETAIL {tables.sql_name(path)}").select("id", "sizeInBytes").first()
        return row[0], row[1]

    rows = spark.range(1000).selectExpr("id", "cast(id % 7 AS STRING) AS part")
    tables.save(spark, rows.write.format("delta").mode("overwrite").partitionBy("part")
                .option("delta.enableChangeDataFeed", "true"), path)
    tables.save(spark, rows.limit(10).write.format("delta").mode("append"), path)
    tables.save(spark, rows.where("part = '3'").write.format("delta").mode("overwrite")
                .option("replaceWhere", "part = '3'"), path)
    assert tables._local_table(path) is not None, "delta-rs reads the project's tables"
    assert (tables.identity(spark, path), tables.size_bytes(spark, path)) == detail()
    first = tables.identity(spark, path)
    shutil.rmtree(path)
    tables.save(spark, rows.limit(5).write.format("delta").mode("overwrite"), path)
    assert (tables.identity(spark, path), tables.size_bytes(spark, path)) == detail()
    assert tables.identity(spark, path) != first
