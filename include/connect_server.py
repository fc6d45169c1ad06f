"""The Spark Connect server's driver program: `include/tools/spark_connect.py` runs it through spark-submit.

It does what pyspark's `org.apache.spark.sql.connect.service.SparkConnectServer` does (build the Spark session
from spark-submit's settings, start Spark Connect's service on it, serve until stopped) with one difference:
that class forces `spark.sql.artifact.isolation.enabled` on, which gives every client session its own class
loader, on the driver and in the executors. Spark keys its cache of generated code by class loader, so each
task's new session compiled again every class the same queries compiled for the task before it: about 700
Janino compilations for the three jobs of a small date, over a third of the executors' time. The layer jobs
add no jars or classes to their sessions, so here the sessions share the server's class loader
(`Settings.connect_server_conf` turns the isolation off), and the generated code compiled for one date serves
the next.
"""

from __future__ import annotations

import signal
import sys
import threading


def main() -> None:
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.getOrCreate()
    service = spark._jvm.org.apache.spark.sql.connect.service.SparkConnectService
    service.start(spark._jsc.sc())
    conf = spark.sparkContext.getConf()
    print(f"Spark Connect server started at {conf.get('spark.connect.grpc.binding.address')}:"
          f"{conf.get('spark.connect.grpc.binding.port')}", flush=True)
    stopped = threading.Event()
    # The server's process group is stopped with SIGTERM: the JVM stops Spark in its shutdown hooks.
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
