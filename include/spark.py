"""Spark session factory for the jobs and the tests.

Where a session already exists (Databricks, a notebook, a test session) it is used as is. Under
spark-submit the JVM is already up, with the master and the Delta package given on the command
line, so only the SQL settings are applied. Run directly with `python`, the session is local, with the
Delta jars `make setup` keeps in the venv (include/tools/delta_jars.py), or where they are missing the
Delta package, resolved from Maven Central on first use and cached under ~/.ivy2.5.2.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from include.config import Settings, delta_jars, delta_package, get_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def get_spark(app_name: str, settings: Settings | None = None) -> SparkSession:
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active

    settings = settings or get_settings()
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
