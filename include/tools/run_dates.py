"""`make run`'s dates: one `airflow dags test lakehouse_daily <date>` per date, the dates side by side.

    python -m include.tools.run_dates 2010-12-01 2010-12-02 2010-12-03

Each date's run is an Airflow DAG run of its own, its log in `$AIRFLOW_HOME/dags-test-<date>.log`. The runs
overlap: while one date's silver job runs, the next date's bronze job can (each layer's jobs take turns through
the layer's lock, spark_jobs/locks.py), which is what a backfill through the scheduler does too; the tables are
the same whatever order the dates finish in. The DAG is written to Airflow's database once first, so that the
runs do not each write it at the same time. Prints what each date's jobs did; exits 1 if a run failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from include.config import get_settings

DAG_ID = "lakehouse_daily"
# What each date's log says its jobs did, as `make run` shows it.
SUMMARY = re.compile(
    r"(bronze [a-z]+ [0-9-]+: [0-9,]+ rows .* -> [^ ]+"
    r"|silver [a-z]+ [0-9-]+: [0-9,]+ rows kept, [0-9,]+ quarantined"
    r"|gold [a-z]+ [a-z_]+: [a-z]+ refresh to silver version [0-9]+(, [0-9,]+ keys recomputed)?"
    r"|no [a-z]+ delivery for [^']+)")
# Seconds between the starts of two dates' runs: the first date's jobs start before the next date's compete.
STAGGER_SECONDS = 5.0
TAIL_LINES = 60


def summary(log: Path) -> list[str]:
    found = {match.group(0) for match in SUMMARY.finditer(log.read_text(errors="replace"))}
    return sorted(found)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dates", nargs="+", metavar="YYYY-MM-DD")
    args = parser.parse_args(argv)
    home = get_settings().airflow_home
    home.mkdir(parents=True, exist_ok=True)
    reserialized = home / "dags-reserialize.log"
    with reserialized.open("w") as out:
        if subprocess.run(["airflow", "dags", "reserialize"], stdout=out, stderr=subprocess.STDOUT).returncode:
            sys.exit(f"airflow dags reserialize failed; its log: {reserialized}\n{_tail(reserialized)}")
    started = time.monotonic()
    runs = {}
    for position, day in enumerate(args.dates):
        if position:
            time.sleep(STAGGER_SECONDS)
        log = home / f"dags-test-{day}.log"
        with log.open("w") as out:
            runs[day] = (log, subprocess.Popen(["airflow", "dags", "test", DAG_ID, day], stdout=out,
                                               stderr=subprocess.STDOUT, env=os.environ.copy()))
        print(f"== {DAG_ID} {day}: started (log {log})", flush=True)
    failed = []
    for day, (log, process) in runs.items():
        status = process.wait()
        print(f"== {DAG_ID} {day}: {'done' if status == 0 else f'FAILED (exit status {status})'}", flush=True)
        for line in summary(log):
            print(f"   {line}")
        if status:
            failed.append((day, log))
    print(f"{len(runs)} date(s) in {time.monotonic() - started:.0f} s", flush=True)
    for day, log in failed:
        print(f"\nthe run for {day} failed; the end of its log ({log}):\n{_tail(log)}", file=sys.stderr)
    if failed:
        sys.exit(1)


def _tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-TAIL_LINES:])


if __name__ == "__main__":
    main()
