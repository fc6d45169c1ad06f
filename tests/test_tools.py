"""The landing-zone tools: staging real days, generating events, splitting a monthly file."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections import Counter, defaultdict
from datetime import date

import pytest

from include.sources import EVENTS, ORDERS
from include.tools import generate_events, split_kaggle, stage_orders
from include.tools.generate_events import Catalog, DayWriter, DefectRates


def read_events(path):
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="") as handle:
        return handle.read().splitlines()


# --- staging real order days -------------------------------------------------------------------

def test_staging_copies_real_days_and_is_idempotent(tmp_path, sample_orders_dir, capsys):
    assert stage_orders.main(["--from", "2010-12-03", "--days", "2", "--landing", str(tmp_path)]) == 0
    # 2010-12-04 was a Saturday without orders: the second delivery day is the 5th.
    staged = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*.csv.gz"))
    assert staged == ["orders/2010-12-03/2010-12-03.csv.gz", "orders/2010-12-05/2010-12-05.csv.gz"]
    assert (tmp_path / staged[0]).read_bytes() == (sample_orders_dir / "2010-12-03.csv.gz").read_bytes()
    assert stage_orders.main(["--from", "2010-12-03", "--days", "2", "--landing", str(tmp_path)]) == 0
    assert "0 day(s) staged, 2 already there" in capsys.readouterr().out


def test_staging_refuses_to_overwrite_a_different_file(tmp_path):
    target = tmp_path / "orders" / "2010-12-01" / "2010-12-01.csv.gz"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"something else")
    with pytest.raises(FileExistsError, match="exists with different content"):
        stage_orders.main(["--from", "2010-12-01", "--days", "1", "--landing", str(tmp_path)])
    stage_orders.main(["--from", "2010-12-01", "--days", "1", "--landing", str(tmp_path), "--force"])
    assert target.read_bytes() != b"something else"


def test_staging_lists_dates_and_takes_any_folder(tmp_path, capsys):
    source = tmp_path / "by-day"
    source.mkdir()
    for name in ("2011-01-04.csv.gz", "2011-01-05.csv", "notes.txt"):
        (source / name).write_text(ORDERS.header + "\n")
    stage_orders.main(["--source-dir", str(source), "--list"])
    assert capsys.readouterr().out.split() == ["2011-01-04", "2011-01-05"]


def test_the_shipped_days_are_real_and_complete(sample_orders_dir):
    days = stage_orders.available_days(sample_orders_dir)
    assert min(days) == date(2010, 12, 1) and len(days) >= 10
    with gzip.open(days[date(2010, 12, 1)], "rt") as handle:
        assert handle.readline().strip() == ORDERS.header
        assert sum(1 for _ in handle) == 3108


# --- the events generator ----------------------------------------------------------------------

def test_generation_is_deterministic_per_date_whatever_the_range(tmp_path):
    generate_events.main(["--from", "2019-10-01", "--days", "3", "--events-per-day", "3000",
                          "--landing", str(tmp_path / "a"), "--defect-rate", "0.06"])
    generate_events.main(["--from", "2019-10-02", "--days", "1", "--events-per-day", "3000",
                          "--landing", str(tmp_path / "b"), "--defect-rate", "0.06"])
    name = "events/2019-10-02/events-2019-10-02.csv"
    digest = [hashlib.sha256((tmp_path / side / name).read_bytes()).hexdigest() for side in "ab"]
    assert digest[0] == digest[1]
    other = generate_events.main(["--from", "2019-10-02", "--days", "1", "--events-per-day", "3000", "--seed", "7",
                                  "--landing", str(tmp_path / "c"), "--defect-rate", "0.06"])
    assert other == 0 and (tmp_path / "c" / name).read_bytes() != (tmp_path / "a" / name).read_bytes()


def test_clean_events_have_the_kaggle_shape(tmp_path):
    generate_events.main(["--from", "2019-10-01", "--days", "1", "--events-per-day", "20000",
                          "--landing", str(tmp_path), "--gzip"])
    lines = read_events(tmp_path / "events" / "2019-10-01" / "events-2019-10-01.csv.gz")
    assert lines[0] == EVENTS.header and len(lines) == 20001
    rows = list(csv.DictReader(io.StringIO("\n".join(lines))))
    types = Counter(row["event_type"] for row in rows)
    assert set(types) == {"view", "cart", "remove_from_cart", "purchase"}
    assert types["view"] > 0.75 * len(rows) > types["cart"] > types["purchase"] > 0 and types["remove_from_cart"] > 0
    assert all(row["event_time"].startswith("2019-10-01 ") and row["event_time"].endswith(" UTC") for row in rows)
    prices = defaultdict(set)
    for row in rows:
        prices[row["product_id"]].add(row["price"])
        assert float(row["price"]) > 0 and 0 < int(row["category_id"]) < 2**63
    assert all(len(values) == 1 for values in prices.values()), "one price per product"
    sessions = Counter(row["user_session"] for row in rows)
    assert sum(sessions.values()) / len(sessions) > 2, "sessions hold several events"
    users_per_session = defaultdict(set)
    for row in rows:
        users_per_session[row["user_session"]].add(row["user_id"])
    assert all(len(users) == 1 for users in users_per_session.values())
    assert 0.1 < sum(row["brand"] == "" for row in rows) / len(rows) < 0.4
    assert 0.1 < sum(row["category_code"] == "" for row in rows) / len(rows) < 0.6


def test_each_defect_appears_at_its_rate():
    count = 40_000
    rates = DefectRates(malformed=0.02, empty_key=0.02, unknown_type=0.02, negative_price=0.02,
                        duplicate=0.02, late=0.02)
    lines = list(DayWriter(date(2019, 10, 10), Catalog.build(46), 46, rates).lines(count))
    assert len(lines) == count
    parsed = [next(csv.reader([line.rstrip("\n")])) for line in lines]
    wrong_count = sum(len(fields) != 9 for fields in parsed)
    ok = [fields for fields in parsed if len(fields) == 9]
    empty_key = sum(any(fields[index] == "" for index in (0, 1, 2, 7, 8)) for fields in ok)
    unknown = sum(fields[1] not in ("view", "cart", "remove_from_cart", "purchase", "") for fields in ok)
    negative = sum(fields[6].startswith("-") for fields in ok)
    late = sum(fields[0][:10] < "2019-10-10" and fields[0] != "" for fields in ok)
    duplicates = sum(n - 1 for n in Counter(lines).values())
    for name, seen in [("malformed", wrong_count), ("empty key", empty_key), ("unknown type", unknown),
                       ("negative price", negative), ("late", late), ("duplicates", duplicates)]:
        assert 0.01 * count < seen < 0.035 * count, f"{name}: {seen} of {count}"
    assert {fields[0][:10] for fields in ok if fields[0]} <= {"2019-10-07", "2019-10-08", "2019-10-09", "2019-10-10"}


def test_generator_rejects_impossible_rates(tmp_path):
    with pytest.raises(SystemExit):
        generate_events.main(["--from", "2019-10-01", "--defect-rate", "1.5", "--landing", str(tmp_path)])


# --- splitting a monthly Kaggle file -----------------------------------------------------------

def test_splitting_a_monthly_file_by_event_date_keeps_every_line(tmp_path, capsys):
    lines = [
        "2019-10-01 00:00:04 UTC,view,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,s1",
        "2019-10-01 23:59:59 UTC,cart,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,s1",
        ",view,1,2,,,1.00,3,s2",  # no date: stays with the day being written
        "2019-10-02 00:00:01 UTC,purchase,1004237,2053013555631882655,,,1081.98,535871217,s3",
        "2019-09-30 23:00:00 UTC,view,5,6,,,2.00,7,s4",  # a late event goes to its own date
    ]
    monthly = tmp_path / "2019-Oct.csv.gz"
    monthly.write_bytes(gzip.compress(("\n".join([EVENTS.header, *lines]) + "\n").encode()))
    assert split_kaggle.main([str(monthly), "--landing", str(tmp_path / "landing")]) == 0
    out = {path.parent.name: path.read_text().splitlines()
           for path in (tmp_path / "landing" / "events").rglob("*.csv")}
    assert sorted(out) == ["2019-09-30", "2019-10-01", "2019-10-02"]
    assert all(content[0] == EVENTS.header for content in out.values())
    assert out["2019-10-01"][1:] == lines[:3]
    assert out["2019-10-02"][1:] == [lines[3]] and out["2019-09-30"][1:] == [lines[4]]
    assert (tmp_path / "landing" / "events" / "2019-10-01" / "2019-Oct-2019-10-01.csv").exists()
    assert "5 lines in 3 daily folder(s)" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="already exists"):
        split_kaggle.main([str(monthly), "--landing", str(tmp_path / "landing")])


def test_splitting_refuses_a_file_with_another_layout(tmp_path):
    monthly = tmp_path / "2019-Nov.csv"
    monthly.write_text(ORDERS.header + "\n1,2,3,4,5,6,7,8\n")
    with pytest.raises(Exception, match="header does not match the events layout"):
        split_kaggle.main([str(monthly), "--landing", str(tmp_path / "landing")])
    assert not (tmp_path / "landing").exists()


@pytest.mark.slow
def test_history_bench_runs_each_day_through_every_layer(spark, tmp_path, capsys):
    import json

    from include.bench import history as history_bench

    assert history_bench.main(["--days", "3", "--events-per-day", "300", "--root", str(tmp_path),
                               "--json", str(tmp_path / "figures.json")]) == 0
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert [figure["day"] for figure in figures] == [1, 2, 3]
    assert figures[0]["silver_rows_before"] == 0 < figures[1]["silver_rows_before"] < figures[2]["silver_rows_before"]
    assert {mart["refresh"] for mart in figures[0]["gold_marts"]} == {"full"}
    # Three hundred events a day touch most keys of a short history: the marts are rebuilt, not recomputed by key.
    refreshes = {mart["refresh"] for mart in figures[2]["gold_marts"]}
    assert refreshes and refreshes <= {"incremental", "rebuilt"}, refreshes
    assert all(figure[f"{layer}_seconds"] > 0 for figure in figures for layer in ("bronze", "silver", "gold"))
    printed = capsys.readouterr().out
    assert "day N / day 2" in printed and "day  3: bronze" in printed


def test_data_docs_pages_are_pointed_at_local_copies_of_their_assets(tmp_path):
    from include.tools import data_docs_assets

    assets = tmp_path / "assets"
    for name in data_docs_assets.LINKS.values():
        (assets / name).parent.mkdir(parents=True, exist_ok=True)
        (assets / name).write_text(f"/* {name} */")
    site = tmp_path / "site"
    page = site / "validations" / "silver" / "events" / "run" / "time" / "page.html"
    page.parent.mkdir(parents=True)
    page.write_text('<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script>'
                    '<link href="https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css">')
    assert not data_docs_assets.localize(site, [page], assets), "assets never fetched: pages keep their CDN links"
    assert "code.jquery.com" in page.read_text()
    (assets / ".complete").write_text(data_docs_assets._fingerprint())
    assert data_docs_assets.localize(site, [page], assets)
    assert page.read_text() == ('<script src="../../../../../static/vendor/jquery.min.js"></script>'
                                '<link href="../../../../../static/vendor/fontawesome/css/all.min.css">')
    assert (site / "static" / "vendor" / "jquery.min.js").read_text() == "/* jquery.min.js */"


def test_the_benchmark_reads_job_reports_from_job_output_and_from_airflow_logs():
    import json

    from include.bench.benchmark import job_reports
    from spark_jobs.common import RESULT_MARK

    report = {"layer": "silver", "session_ready_at": 2.5, "result": {"rows": 3}}
    text = "\n".join([f"2026-12-01 INFO lakehouse.silver: {RESULT_MARK} {json.dumps(report)}",
                      "an unrelated line",
                      f'2026-12-01T00:00:00Z [info ] INFO lakehouse.silver: {RESULT_MARK} {json.dumps(report)} '
                      '[airflow.task.hooks.SparkSubmitHook] loc=spark_submit.py:737'])
    assert job_reports(text) == [report, report]


def test_the_benchmark_prints_a_run_beside_an_earlier_one():
    from include.bench.benchmark import JobFigures, compare_reports

    def report(day_date, seconds, growth=(), tiny=None):
        jobs = [vars(JobFigures(layer, "events", "2019-10-01", value, 7.0, value - 7.0, 1.0, 2**30, 2**31, 3, 2**20,
                                2_000_000)) for layer, value in seconds.items()]
        growth_jobs = [{"layer": "silver", "day": day, "wall_seconds": value} for day, value in growth]
        return {"machine": {"date": day_date}, "input": "3 days", "layers": {"events": jobs},
                "growth": growth_jobs, "fixed": {"wall_seconds": tiny} if tiny else None}

    before = report("2026-12-01T18:33", {"bronze": 40.0, "silver": 120.0, "gold": 40.0},
                    [("2019-10-02", 100.0), ("2019-10-11", 110.0)], tiny=110.0)
    after = report("2026-12-02T09:00", {"bronze": 40.0, "silver": 90.0, "gold": 30.0},
                   [("2019-10-02", 90.0), ("2019-10-11", 99.0), ("2019-10-31", 99.0)])
    lines = compare_reports(before, after).splitlines()
    assert lines[0] == "## Against the run of 2026-12-01T18:33"
    assert "| events silver, wall s | 120.0 | 90.0 | 0.75 |" in lines
    assert "| events end to end, wall s | 200.0 | 160.0 | 0.80 |" in lines
    assert "| growth day 11, wall s | 110.0 | 99.0 | 0.90 |" in lines
    assert not any("day 31" in line or "tiny run" in line for line in lines), "only the figures both runs have"


def test_the_benchmark_splits_the_events_end_to_end_time_into_fixed_cost_and_work_on_the_rows():
    from include.bench.benchmark import JobFigures, _fixed_share

    # wall, start-up, work: shut-down is what remains (2 s a job).
    jobs = [vars(JobFigures(layer, "events", "2019-10-01", wall, 5.0, wall - 7.0, 1.0, 2**30, 2**31, 3, 2**20,
                            2_000_000)) for layer, wall in (("bronze", 40.0), ("silver", 90.0), ("gold", 30.0))]
    figures = {"layers": {"events": jobs},
               "reference": {"timings": [{"source": "events", "layer": "bronze", "seconds": 6.0},
                                         {"source": "events", "layer": "silver", "seconds": 10.0},
                                         {"source": "orders", "layer": "silver", "seconds": 99.0}]},
               "fixed": {"work_seconds": 36.0, "layer_jobs": 3, "events": 1_000}}
    lines = _fixed_share(figures)
    assert "| start-up and shut-down of the 3 jobs | 21.0 | 1.3 |" in lines
    assert "| their work on a 1,000-event day (the tiny run's work per job, 3 times) | 36.0 | 2.2 |" in lines
    assert "| **fixed cost, whatever the rows** | 57.0 | 3.6 |" in lines
    assert "| work that grows with the rows (the rest) | 103.0 | 6.4 |" in lines
    assert "| **end to end** | 160.0 | 10.0 |" in lines
    assert _fixed_share({**figures, "fixed": None}) == [], "nothing to split without the tiny run"


def test_airflow_s_task_processes_are_forked_with_the_task_libraries_imported(tmp_path):
    """The stack's executor imports Great Expectations and the Connect client in the scheduler before it
    forks its workers, so a layer task does not pay their import; a library that cannot be imported is
    left to the task to report."""
    import os
    import subprocess
    import sys

    from include.airflow_executor import preload
    from include.tools.airflow_stack import EXECUTOR, Stack

    assert Stack(home=tmp_path, port=8793).environment({})["AIRFLOW__CORE__EXECUTOR"] == EXECUTOR
    assert preload(("json", "no_such_library_here")) == ["no_such_library_here"]
    script = (
        "import sys\n"
        "from include.airflow_executor import PRELOADED, LakehouseLocalExecutor\n"
        "assert 'great_expectations' not in sys.modules\n"
        "executor = LakehouseLocalExecutor(parallelism=1)\n"
        "executor.start()\n"
        "print('preloaded:', sorted(name for name in PRELOADED if name in sys.modules) == sorted(PRELOADED))\n"
        "executor.end()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "AIRFLOW_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "preloaded: True" in done.stdout.splitlines()
