"""Date-range arguments shared by the landing-zone tools."""

from __future__ import annotations

import argparse
from datetime import date, timedelta


def add_date_range(parser: argparse.ArgumentParser, days_help: str) -> None:
    parser.add_argument("--from", dest="first", type=date.fromisoformat, help="first date, YYYY-MM-DD")
    parser.add_argument("--to", dest="last", type=date.fromisoformat, help="last date, YYYY-MM-DD (inclusive)")
    parser.add_argument("--days", type=int, help=days_help)


def date_range(first: date, last: date) -> list[date]:
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    return [first + timedelta(days=offset) for offset in range((last - first).days + 1)]
