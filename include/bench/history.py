"""How a day's cost changes as history grows: generated event days through bronze, silver and gold, one by one.

Each day is delivered by the events generator (duplicates and late events included), then run through
the same functions the Spark jobs call (`run_bronze`, `run_silver`, `run_gold`) in one local Spark
session, so the figures are the layers' work without spark-submit's start-up. Per day it prints the
seconds of each layer, gold's recomputed keys, the seconds of each layer's quality gate (included in
the layer's), and the size of silver/events before the day; at the end, day N against day 2 (day 1
builds the marts from nothing and is not comparable).

    python -m include.bench.history --days 31 --events-per-day 100000
    python -m include.bench.history --days 2 --events-per-day 1000000 --root /tmp/bench-1m
    python -m include.bench.history --days 31 --events-per-day 1000000 --gold-days 1,2,30,31

`--gold-days` runs gold only on those days (the others build history through bronze and silver): a
gold run then catches up every silver change since its last run, so day 31's run is comparable with
day 2's, each a single day's changes.

The landing zone, warehouse, GX project and Data Docs live under --root (default: a new temporary
folder), never the project's own data/ folders.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import date, timedelta
from pathlib import Path

from include.config import Settings
from include.sources import EVENTS
from include.tools import generate_events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=31, help="event days to run, one by one (default 31)")
    parser.add_argument("--events-per-day", type=int, default=100_000, help="events per day (default 100000)")
    parser.add_argument("--from", dest="first", type=date.fromisoformat, default=date(2019, 10, 1),
                        help="first event day (default 2019-10-01)")
    parser.add_argument("--root", type=Path, help="folder for the landing zone and warehouse (default: a temp folder)")
    parser.add_argument("--gold-days", type=_day_numbers, metavar="N,N,...",
                        help="run gold only on these days (1 = the first; default: every day)")
    parser.add_argument("--json", type=Path, help="also write the per-day figures to this JSON file")
    args = parser.parse_args(argv)
    if args.days < 2:
        parser.error("--days must be at least 2: day 1 builds the marts from nothing")
    gold_days = set(args.gold_days or range(1, args.days + 1))

    root = args.root or Path(tempfile.mkdtemp(prefix="lakehouse-history-"))
    # The environment's other settings hold (the Spark Connect server's port and token among them).
    settings = Settings.from_env({**os.environ, "LAKEHOUSE_LANDING": str(root / "landing"),
                                  "LAKEHOUSE_WAREHOUSE": str(root / "warehouse"),
                                  "LAKEHOUSE_SPARK_UI": "false"})
    from include.spark import get_spark
    from spark_jobs.bronze import run_bronze
    from spark_jobs.gold import run_gold
    from spark_jobs.silver import run_silver

    spark = get_spark("history-bench", settings)
    print(f"history bench: {args.days} days x {args.events_per_day:,} events under {root}", file=sys.stderr)
    header = f"{'day':>3} {'date':10} {'silver rows before':>18} {'bronze s':>8} {'silver s':>8} {'gold s':>7} " \
             f"{'gold keys':>9} {'gates b/s/g s':>16}"
    print(header)
    figures = []
    for index in range(args.days):
        day = args.first + timedelta(days=index)
        with contextlib.redirect_stdout(sys.stderr):  # the generator's summary, off the figures table
            generate_events.main(["--from", day.isoformat(), "--days", "1", "--events-per-day",
                                  str(args.events_per_day), "--defect-rate", "0.02",
                                  "--landing", str(settings.landing)])
        silver_path = settings.table_path("silver", EVENTS.name)
        before = spark.read.format("delta").load(silver_path).count() if index else 0
        seconds = {"gold": None}
        gates = {"bronze": None, "silver": None, "gold": None}  # of those seconds, the quality gates
        result = []
        layers = (("bronze", run_bronze), ("silver", run_silver)) + ((("gold", run_gold),)
                                                                     if index + 1 in gold_days else ())
        for layer, run in layers:
            started = time.perf_counter()
            result = run(spark, settings, EVENTS, day, f"history-{layer}-{day}")
            seconds[layer] = time.perf_counter() - started
            gates[layer] = (sum(mart.validation_seconds for mart in result) if layer == "gold"
                            else result.validation_seconds)
        keys = sum(mart.keys or 0 for mart in result) if seconds["gold"] is not None else None
        figures.append({"day": index + 1, "date": day.isoformat(), "silver_rows_before": before,
                        **{f"{layer}_seconds": None if value is None else round(value, 2)
                           for layer, value in seconds.items()},
                        **{f"{layer}_validation_seconds": None if value is None else round(value, 2)
                           for layer, value in gates.items()},
                        "gold_keys": keys, "gold_marts": [asdict(mart) for mart in result] if keys is not None else []})
        gold = "-" if keys is None else f"{seconds['gold']:>7.1f} {keys:>9,}"
        validation = "/".join("-" if value is None else f"{value:.1f}" for value in gates.values())
        print(f"{index + 1:>3} {day} {before:>18,} {seconds['bronze']:>8.1f} {seconds['silver']:>8.1f} {gold:>17} "
              f"{validation:>16}", flush=True)

    second = figures[1]
    print("\nday N / day 2 (seconds):")
    for figure in figures[2:]:
        ratios = "  ".join(f"{layer} {_ratio(figure[f'{layer}_seconds'], second[f'{layer}_seconds'])}"
                           for layer in ("bronze", "silver", "gold"))
        print(f"  day {figure['day']:>2}: {ratios}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


def _day_numbers(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected day numbers separated by commas, got {text!r}") from None
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"day numbers start at 1, got {text!r}")
    return numbers


def _ratio(value: float | None, reference: float | None) -> str:
    return "-" if value is None or not reference else f"{value / reference:.2f}"


if __name__ == "__main__":
    sys.exit(main())
