"""Where things are, decided in one place from the environment."""

from __future__ import annotations

from datetime import date

import pytest

from include.config import PROJECT_ROOT, Settings


def test_defaults_keep_everything_inside_the_checkout():
    settings = Settings.from_env({})
    assert settings.landing == PROJECT_ROOT / "data" / "landing"
    assert settings.warehouse == PROJECT_ROOT / "data" / "warehouse"
    assert settings.airflow_home == PROJECT_ROOT / ".airflow"
    assert settings.runtime == "connect"
    assert settings.spark_conn_id == "spark_local"


def test_environment_overrides_paths_and_spark(tmp_path):
    settings = Settings.from_env({
        "LAKEHOUSE_LANDING": str(tmp_path / "in"),
        "LAKEHOUSE_WAREHOUSE": str(tmp_path / "out"),
        "AIRFLOW_HOME": str(tmp_path / "af"),
        "LAKEHOUSE_RUNTIME": "spark",
        "LAKEHOUSE_SHUFFLE_PARTITIONS": "8",
        "LAKEHOUSE_SPARK_UI": "false",
        "LAKEHOUSE_SPARK_JAVA_OPTIONS": " -XX:TieredStopAtLevel=1 ",
    })
    assert settings.landing_dir("orders", date(2010, 12, 1)) == tmp_path / "in" / "orders" / "2010-12-01"
    assert settings.table_path("bronze", "events") == str(tmp_path / "out" / "bronze" / "events")
    assert settings.airflow_home == tmp_path / "af"
    assert settings.spark_conn_id == "spark_default"
    conf = settings.spark_conf()
    assert conf["spark.sql.shuffle.partitions"] == "8"
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.sql.codegen.hugeMethodLimit"] == "8000"
    assert conf["spark.driver.extraJavaOptions"].startswith("-Dlog4j.configurationFile=file:")
    # The class archive of `make setup`, when there is one, stands between the two.
    assert conf["spark.driver.extraJavaOptions"].endswith(" -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m")


def test_relative_paths_are_resolved(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({"LAKEHOUSE_LANDING": "landing"}).landing == tmp_path / "landing"


@pytest.mark.parametrize("env, message", [
    ({"LAKEHOUSE_RUNTIME": "kubernetes"}, "LAKEHOUSE_RUNTIME='kubernetes'"),
    ({"LAKEHOUSE_SHUFFLE_PARTITIONS": "many"}, "LAKEHOUSE_SHUFFLE_PARTITIONS='many': invalid literal for int"),
    ({"LAKEHOUSE_SPARK_UI": "perhaps"}, "expected true or false"),
    ({"LAKEHOUSE_GATES": "sometimes"}, "expected true or false"),
    ({"LAKEHOUSE_MAX_QUARANTINE_SHARE_EVENTS": "1.5"}, "LAKEHOUSE_MAX_QUARANTINE_SHARE_EVENTS='1.5': expected a share"),
    ({"LAKEHOUSE_MAX_QUARANTINE_SHARE_ORDERS": "half"},
     "LAKEHOUSE_MAX_QUARANTINE_SHARE_ORDERS='half': expected a share"),
])
def test_bad_settings_are_named(env, message):
    from include.config import ConfigurationError

    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env(env)


def test_unknown_layer_is_refused():
    with pytest.raises(ValueError, match="unknown layer 'platinum'"):
        Settings.from_env({}).table_path("platinum", "x")


def test_landing_date_must_be_a_real_date():
    with pytest.raises(ValueError):
        Settings.from_env({}).landing_dir("orders", "2010-13-01")


def test_quality_folders_follow_the_warehouse_unless_set(tmp_path):
    settings = Settings.from_env({"LAKEHOUSE_WAREHOUSE": str(tmp_path / "data" / "warehouse")})
    assert settings.gx_root == tmp_path / "data"
    assert settings.data_docs == tmp_path / "data" / "data-docs"
    assert settings.gates is True
    assert settings.max_quarantine_share == {"orders": 0.10, "events": 0.05}
    moved = Settings.from_env({"LAKEHOUSE_GX_ROOT": str(tmp_path / "gx"), "LAKEHOUSE_DATA_DOCS": str(tmp_path / "site"),
                               "LAKEHOUSE_MAX_QUARANTINE_SHARE_EVENTS": "0.3"})
    assert (moved.gx_root, moved.data_docs) == (tmp_path / "gx", tmp_path / "site")
    assert moved.max_quarantine_share["events"] == 0.3


def test_tables_are_named_in_a_catalog_and_paths_without_one():
    from spark_jobs import tables

    named = Settings.from_env({"LAKEHOUSE_CATALOG": "main"})
    assert named.table_location("silver", "orders") == "main.silver.orders"
    assert tables.is_name(named.table_location("silver", "orders"))
    plain = Settings.from_env({"LAKEHOUSE_WAREHOUSE": "/data/wh"})
    assert plain.table_location("silver", "orders") == "/data/wh/silver/orders"
    assert not tables.is_name(plain.table_location("silver", "orders"))
    with pytest.raises(ValueError, match="LAKEHOUSE_CATALOG"):
        Settings.from_env({"LAKEHOUSE_CATALOG": "main; DROP TABLE x"})
    with pytest.raises(ValueError, match="unknown layer"):
        named.table_location("platinum", "orders")


def test_cluster_settings_and_job_settings_from_the_command_line(monkeypatch):
    from spark_jobs.common import job_arguments

    settings = Settings.from_env({"LAKEHOUSE_RUNTIME": "spark", "LAKEHOUSE_SPARK_EXECUTOR_MEMORY": "3g",
                                  "LAKEHOUSE_SPARK_CORES_MAX": "4"})
    assert (settings.spark_conn_id, settings.executor_memory, settings.cores_max) == ("spark_default", "3g", 4)
    args = job_arguments("a job", ["--source", "orders", "--ingestion-date", "2010-12-01",
                                   "--setting", "LAKEHOUSE_CATALOG=main",
                                   "--setting", "LAKEHOUSE_LANDING=/Volumes/a=b"])
    assert args.setting == [("LAKEHOUSE_CATALOG", "main"), ("LAKEHOUSE_LANDING", "/Volumes/a=b")]
    from include.config import ConfigurationError

    for bad in ("PATH=/tmp", "LAKEHOUSE_CATALOG", "LAKEHOUSE_BAD-NAME=1"):
        # A configuration error (exit status 3), not argparse's exit status 2, which reads as refused input.
        with pytest.raises(ConfigurationError, match="--setting: expected LAKEHOUSE_NAME=value"):
            job_arguments("a job", ["--source", "orders", "--ingestion-date", "2010-12-01", "--setting", bad])


def test_drivers_start_with_the_class_archive_and_the_jars_make_setup_keeps(tmp_path, monkeypatch):
    import include.config as config

    archive = tmp_path / "spark-driver.jsa"
    monkeypatch.setattr(config, "driver_archive_path", lambda: archive)
    assert not any("SharedArchiveFile" in option for option in Settings.from_env({}).driver_java_options())
    archive.write_bytes(b"made by make setup")
    options = Settings.from_env({"LAKEHOUSE_SPARK_JAVA_OPTIONS": "-XX:TieredStopAtLevel=1"}).driver_java_options()
    # The quick compiler alone would reserve a 48 MB code cache: the drivers keep the 240 MB of both compilers.
    assert options[1:] == [f"-XX:SharedArchiveFile={archive}", "-XX:TieredStopAtLevel=1",
                           "-XX:ReservedCodeCacheSize=240m"]
    sized = Settings.from_env({"LAKEHOUSE_SPARK_JAVA_OPTIONS": "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=64m"})
    assert sized.jvm_options() == ["-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=64m"]
    assert Settings.from_env({}).spark_conf()["spark.driver.extraJavaOptions"].endswith(f"={archive}")
    # A user's own archive wins; Databricks drivers are not started from here.
    own = Settings.from_env({"LAKEHOUSE_SPARK_JAVA_OPTIONS": "-XX:SharedArchiveFile=/mine.jsa"}).driver_java_options()
    assert own[1:] == ["-XX:SharedArchiveFile=/mine.jsa"]
    assert len(Settings.from_env({"LAKEHOUSE_RUNTIME": "databricks"}).driver_java_options()) == 1

    jars = tmp_path / "jars"
    monkeypatch.setattr(config, "delta_jars_dir", lambda: jars)
    assert config.delta_jars() is None
    jars.mkdir()
    (jars / "a.jar").write_bytes(b"jar")
    (jars / "jars.txt").write_text("a.jar\nb.jar\n")
    assert config.delta_jars() is None, "a missing jar means resolving the package instead"
    (jars / "b.jar").write_bytes(b"jar")
    assert config.delta_jars() == [str(jars / "a.jar"), str(jars / "b.jar")]
    command = config.spark_submit_command(Settings.from_env({}), "bronze", ["--source", "orders"], "bronze-x")
    assert command[command.index("--jars") + 1] == f"{jars / 'a.jar'},{jars / 'b.jar'}"
    assert "--packages" not in command


def test_jobs_of_small_deliveries_compile_with_the_quick_compiler_only(tmp_path):
    """A delivery up to LAKEHOUSE_QUICK_COMPILER_MB on disk: its jobs' JVMs get -XX:TieredStopAtLevel=1 (with
    the code cache of both compilers); a larger one, a full refresh of the marts, Databricks, or java options
    that choose the compilers themselves keep the JVM's default."""
    env = {"LAKEHOUSE_LANDING": str(tmp_path), "LAKEHOUSE_QUICK_COMPILER_MB": "1"}
    settings = Settings.from_env(env)
    assert settings.quick_compiler_bytes == 1024 * 1024
    assert Settings.from_env({}).quick_compiler_bytes == 16 * 1024 * 1024
    assert not settings.quick_compiler("events", "2019-10-01"), "no delivery, nothing to size"
    folder = tmp_path / "events" / "2019-10-01"
    folder.mkdir(parents=True)
    (folder / "events-2019-10-01.csv").write_bytes(b"x" * 700_000)
    (folder / "events-2019-10-01-late.csv").write_bytes(b"x" * 300_000)
    (folder / "notes.txt").write_bytes(b"x" * 5_000_000)  # not a delivery file: bronze ignores it, so does this
    assert settings.quick_compiler("events", "2019-10-01", ["--source", "events", "--refresh", "incremental"])
    assert not settings.quick_compiler("events", "2019-10-01", ["--source", "events", "--refresh", "full"])
    assert settings.spark_conf(quick=True)["spark.driver.extraJavaOptions"].endswith(
        " -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m")
    assert "TieredStopAtLevel" not in settings.spark_conf()["spark.driver.extraJavaOptions"]
    (folder / "events-2019-10-01-more.csv").write_bytes(b"x" * 100_000)
    assert not settings.quick_compiler("events", "2019-10-01"), "1.1 MB is more than 1 MB"
    (folder / "events-2019-10-01-more.csv").unlink()
    for other in ({"LAKEHOUSE_QUICK_COMPILER_MB": "0"}, {"LAKEHOUSE_RUNTIME": "databricks"},
                  {"LAKEHOUSE_SPARK_JAVA_OPTIONS": "-XX:TieredStopAtLevel=4"}):
        assert not Settings.from_env({**env, **other}).quick_compiler("events", "2019-10-01"), other
    own = Settings.from_env({**env, "LAKEHOUSE_SPARK_JAVA_OPTIONS": "-Xss4m"})
    assert own.jvm_options(quick=True) == ["-Xss4m", "-XX:TieredStopAtLevel=1", "-XX:ReservedCodeCacheSize=240m"]
    for bad in ("-1", "sixteen", "nan", "inf"):
        with pytest.raises(ValueError, match="LAKEHOUSE_QUICK_COMPILER_MB"):
            Settings.from_env({"LAKEHOUSE_QUICK_COMPILER_MB": bad})
