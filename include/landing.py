"""What a delivery in the landing zone holds, read on the driver before Spark touches it.

For every file of a delivery: size, checksum, number of data lines and whether its header matches
the source layout. The bronze job uses these figures to prove that every data line became a row.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

from include.sources import Source

DATA_SUFFIXES = (".csv", ".csv.gz")  # matched whatever their case: DAY.CSV and DAY.CSV.GZ are deliveries too
# A delivery folder holding this file is empty on purpose: its date may go from rows to none.
EMPTY_MARKER = "_EMPTY"
BOM = "\ufeff"


class DeliveryError(Exception):
    """A delivery that cannot be loaded as it is; the message names the file and what is wrong."""


class HeaderMismatchError(DeliveryError):
    """A file whose header differs from the source layout (schema drift)."""


@dataclass(frozen=True)
class DeliveredFile:
    path: Path
    relative_path: str  # relative to the landing root, e.g. orders/2010-12-01/2010-12-01.csv.gz
    size_bytes: int
    sha256: str
    data_lines: int  # lines after the header, as Spark reads them (split on \n)
    header_line: str  # the first line as Spark reads it: no line break, no byte order mark
    repeated_headers: int  # later lines identical to the first one


def is_data_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(DATA_SUFFIXES) and not path.name.startswith((".", "_"))


def is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def list_delivery(folder: Path) -> tuple[list[Path], list[Path]]:
    """The data files of a delivery folder, and the other entries, which are ignored."""
    entries = sorted(folder.iterdir())
    files = [entry for entry in entries if is_data_file(entry)]
    return files, [entry for entry in entries if entry not in files]


def inspect_file(path: Path, source: Source, landing_root: Path) -> DeliveredFile:
    """Checksum, count and check the header of one delivered file in a single streaming pass."""
    relative = path.relative_to(landing_root).as_posix() if path.is_relative_to(landing_root) else str(path)
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as raw:
        hashing = _HashingReader(raw, digest)
        stream = gzip.GzipFile(fileobj=hashing) if is_gzip(path) else hashing
        reader = io.BufferedReader(stream, buffer_size=1 << 20)
        try:
            first = reader.readline()
            if not first:
                raise HeaderMismatchError(
                    f"{relative}: the file is empty; expected the {source.name} header {source.header!r}"
                )
            # Hadoop's line reader drops a UTF-8 byte order mark at the start of a file, as Spark will.
            header_bytes = _without_line_break(first).removeprefix(BOM.encode("utf-8"))
            check_header(_line_text(header_bytes, relative), source, relative)
            data_lines = repeated = 0
            for line in reader:
                data_lines += 1
                if _without_line_break(line) == header_bytes:
                    repeated += 1
        except (OSError, EOFError, zlib.error) as error:
            raise DeliveryError(f"{relative}: cannot be read as {_kind(path)}: {error}") from error
        size = hashing.size
    return DeliveredFile(
        path=path,
        relative_path=relative,
        size_bytes=size,
        sha256=digest.hexdigest(),
        data_lines=data_lines,
        header_line=header_bytes.decode("utf-8"),
        repeated_headers=repeated,
    )


def check_header(header: str, source: Source, where: str) -> None:
    """Raise HeaderMismatchError naming the file and the columns that differ from the layout."""
    found = next(csv.reader([header.removeprefix(BOM)]), [])
    expected = list(source.columns)
    if found == expected:
        return
    missing = [column for column in expected if column not in found]
    unexpected = [column for column in found if column not in expected]
    details = []
    if missing:
        details.append(f"missing columns {missing}")
    if unexpected:
        details.append(f"unexpected columns {unexpected}")
    if not details:
        duplicated = sorted({column for column in found if found.count(column) > 1})
        details.append(f"repeated columns {duplicated}" if duplicated else "columns in a different order")
    raise HeaderMismatchError(
        f"{where}: header does not match the {source.name} layout: {'; '.join(details)}. "
        f"Expected {expected}, found {found}."
    )


def _without_line_break(line: bytes) -> bytes:
    """A line as Spark's text reader gives it (split on \\n), less the \\r of a CRLF file."""
    line = line.removesuffix(b"\n")
    return line.removesuffix(b"\r")


def _line_text(line: bytes, where: str) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HeaderMismatchError(f"{where}: the header line is not valid UTF-8 ({error})") from None


def _kind(path: Path) -> str:
    return "gzip-compressed CSV" if is_gzip(path) else "CSV"


class _HashingReader(io.RawIOBase):
    """Passes a file's raw bytes through while hashing and counting them."""

    def __init__(self, raw, digest) -> None:
        self._raw = raw
        self._digest = digest
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._raw.readinto(buffer)
        if count:
            self._digest.update(memoryview(buffer)[:count])
            self.size += count
        return count or 0
