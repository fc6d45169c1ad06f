"""Split a downloaded monthly Kaggle/REES46 file into daily landing folders by event date.

    lakehouse-split-kaggle ~/Downloads/2019-Oct.csv
    -> <landing>/events/2019-10-01/2019-Oct-2019-10-01.csv, ... one file per event date

The file is streamed line by line, byte for byte, with one open output per date, so memory stays flat
for the 5 GB, 42-million-line October file. A line whose `event_time` does not start with a date is
kept, in the file of the date being written when it came, so bronze accounts for it as malformed;
nothing is dropped. Existing daily files are never overwritten unless --force.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
from pathlib import Path

from include.config import get_settings
from include.landing import check_header
from include.sources import EVENTS
from include.tools.progress import Progress

DATE_PREFIX = re.compile(rb"^(\d{4}-\d{2}-\d{2}) ")


def split(source: Path, landing: Path, force: bool = False, progress: Progress | None = None) -> dict[str, int]:
    """Write each line of `source` to the landing folder of its event date; returns lines per date."""
    stem = source.name.removesuffix(".gz").removesuffix(".csv")
    counts: dict[str, int] = {}
    outputs: dict[str, object] = {}
    partials: dict[str, tuple[Path, Path]] = {}
    undated: list[bytes] = []  # lines seen before the first dated one; a handful at most
    current = None
    raw = source.open("rb")
    stream = gzip.GzipFile(fileobj=raw) if source.name.endswith(".gz") else raw
    try:
        header = stream.readline()
        check_header(header.decode("utf-8", "replace").rstrip("\r\n"), EVENTS, str(source))
        for number, line in enumerate(stream, start=1):
            match = DATE_PREFIX.match(line)
            if match:
                current = match.group(1).decode()
                if current not in outputs:
                    outputs[current] = _open_day(current, stem, landing, header, force, partials)
                    counts[current] = 0
                    for early in undated:
                        outputs[current].write(early)
                        counts[current] += 1
                    undated.clear()
            elif current is None:
                undated.append(line)
                if len(undated) > 100_000:
                    raise ValueError(f"{source}: no line with a date among the first 100,000 lines")
                continue
            outputs[current].write(line)
            counts[current] += 1
            if progress and number % 200_000 == 0:
                progress.advance(raw.tell() - progress.done)
        if undated:
            raise ValueError(f"{source}: no line has an event_time starting with a date")
    except BaseException:
        for out in outputs.values():
            out.close()
        for partial, _ in partials.values():
            partial.unlink(missing_ok=True)
        raise
    finally:
        raw.close()
    for day, out in outputs.items():
        out.close()
        partial, target = partials[day]
        partial.replace(target)  # a day's file appears whole or not at all
    if progress:
        progress.advance(source.stat().st_size - progress.done)
    return counts


def _open_day(day: str, stem: str, landing: Path, header: bytes, force: bool, partials: dict):
    folder = landing / "events" / day
    target = folder / f"{stem}-{day}.csv"
    if target.exists() and not force:
        raise FileExistsError(f"{target} already exists; use --force to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{target.name}.partial"
    partials[day] = (partial, target)
    out = partial.open("wb", buffering=1 << 20)
    out.write(header)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="a monthly file such as 2019-Oct.csv (or .csv.gz)")
    parser.add_argument("--landing", type=Path, help="landing zone root (default: $LAKEHOUSE_LANDING)")
    parser.add_argument("--force", action="store_true", help="replace daily files that already exist")
    args = parser.parse_args(argv)
    if not args.file.is_file():
        parser.error(f"{args.file} is not a file")

    landing = args.landing or get_settings().landing
    progress = Progress(f"split {args.file.name}", total=args.file.stat().st_size, unit="bytes")
    counts = split(args.file, landing, args.force, progress)
    progress.finish()
    for day, lines in sorted(counts.items()):
        print(f"{day}: {lines:,} lines")
    print(f"events: {sum(counts.values()):,} lines in {len(counts)} daily folder(s) under {landing / 'events'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
