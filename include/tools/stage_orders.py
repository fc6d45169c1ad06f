"""Stage real order days into the landing zone: <landing>/orders/<date>/<date>.csv.gz.

The source folder holds one file per day named <YYYY-MM-DD>.csv or .csv.gz, like the shipped copy of
the UCI Online Retail data set (include/data/online-retail/by-day, the default). Days without a file
(the shop was closed) are not deliveries and are left out. Staging is idempotent: a file already
staged with the same bytes is left alone, and a different one is refused unless --force.

    lakehouse-stage-orders --from 2010-12-01 --days 3
    lakehouse-stage-orders --source-dir ~/by-day --from 2011-01-04 --to 2011-01-31
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
from datetime import date
from pathlib import Path

from include.config import SAMPLE_ORDERS_DIR, get_settings
from include.tools.dates import add_date_range
from include.tools.progress import Progress

DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.csv(\.gz)?$")


def available_days(source_dir: Path) -> dict[date, Path]:
    days = {}
    for path in sorted(source_dir.iterdir()):
        match = DAY_FILE.match(path.name)
        if match and path.is_file():
            days[date.fromisoformat(match.group(1))] = path
    return days


def select_days(days: dict[date, Path], first: date | None, last: date | None, count: int | None) -> list[date]:
    chosen = [day for day in sorted(days) if (first is None or day >= first) and (last is None or day <= last)]
    return chosen[:count] if count is not None else chosen


def stage(day: date, path: Path, landing: Path, force: bool = False) -> str:
    """Copy one day's file into the landing zone; returns what happened."""
    target_dir = landing / "orders" / day.isoformat()
    target = target_dir / path.name
    if target.exists():
        if filecmp.cmp(path, target, shallow=False):
            return "already staged"
        if not force:
            raise FileExistsError(f"{target} exists with different content; use --force to replace it")
    target_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(path, partial)
    partial.replace(target)  # readers never see half a file
    return "staged"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-dir", type=Path, default=SAMPLE_ORDERS_DIR,
                        help="folder of <YYYY-MM-DD>.csv[.gz] files (default: the copy shipped in the repository)")
    add_date_range(parser, "stage at most this many delivery days, from --from on")
    parser.add_argument("--landing", type=Path, help="landing zone root (default: $LAKEHOUSE_LANDING)")
    parser.add_argument("--force", action="store_true", help="replace staged files whose content differs")
    parser.add_argument("--list", action="store_true", help="print the selected dates, one a line, and stage nothing")
    args = parser.parse_args(argv)

    if not args.source_dir.is_dir():
        parser.error(f"--source-dir {args.source_dir} is not a folder")
    days = available_days(args.source_dir)
    chosen = select_days(days, args.first, args.last, args.days)
    if not chosen:
        parser.error(f"no day files in {args.source_dir} for the dates asked")
    if args.list:
        print("\n".join(day.isoformat() for day in chosen))
        return 0

    landing = args.landing or get_settings().landing
    progress = Progress("stage orders", total=len(chosen), unit="days")
    counts = {"staged": 0, "already staged": 0}
    for day in chosen:
        counts[stage(day, days[day], landing, args.force)] += 1
        progress.advance()
    progress.finish()
    print(f"orders: {counts['staged']} day(s) staged, {counts['already staged']} already there, "
          f"{chosen[0]} to {chosen[-1]}, in {landing / 'orders'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
