"""Generate clickstream deliveries in the Kaggle/REES46 layout: <landing>/events/<date>/events-<date>.csv.

Seeded and deterministic: a date's file depends only on the seed, the date, the volume and the
defect rates, whatever range it is generated in. Rows are written as they are made, so memory stays
flat at any volume. The shape follows the real data: mostly views, fewer carts, removals and
purchases; sessions of several events by one user; category codes and brands sometimes empty; one
price per product.

Defects, each at its own rate (a share of the day's lines), for testing what the pipeline rejects:
malformed lines (wrong field count, broken quoting, a number that does not parse), empty keys,
unknown event types, negative prices, exact duplicates, and events of earlier dates arriving late.

    lakehouse-generate-events --from 2019-10-01 --days 3 --events-per-day 1000000
    lakehouse-generate-events --from 2019-10-01 --to 2019-10-07 --defect-rate 0.02
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
import uuid
from dataclasses import dataclass, fields
from datetime import date, timedelta
from pathlib import Path

from include.config import get_settings
from include.sources import EVENTS
from include.tools.dates import add_date_range, date_range
from include.tools.progress import Progress

CATEGORY_CODES = (
    "electronics.smartphone", "electronics.audio.headphone", "electronics.video.tv", "electronics.clocks",
    "computers.notebook", "computers.desktop", "computers.peripherals.printer", "appliances.kitchen.washer",
    "appliances.kitchen.refrigerators", "appliances.environment.vacuum", "apparel.shoes", "apparel.shoes.keds",
    "furniture.living_room.sofa", "furniture.bedroom.bed", "auto.accessories.player", "kids.toys",
    "sport.bicycle", "construction.tools.drill", "accessories.bag", "country_yard.cultivator",
)
BRANDS = (
    "samsung", "apple", "xiaomi", "huawei", "lucente", "bosch", "lg", "sony", "acer", "lenovo", "asus",
    "hp", "respect", "indesit", "oppo", "artel", "elenberg", "midea", "cordiant", "nike", "adidas", "casio",
)
UNKNOWN_EVENT_TYPES = ("wishlist", "click", "VIEW", "checkout")
KEY_FIELDS = (0, 1, 2, 7, 8)  # event_time, event_type, product_id, user_id, user_session
# Seconds-of-day weights per hour: quiet nights, busy afternoons and evenings (UTC).
HOUR_WEIGHTS = (2, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 8, 8, 9, 9, 10, 10, 9, 7, 5, 4, 3)


@dataclass(frozen=True)
class DefectRates:
    malformed: float = 0.0
    empty_key: float = 0.0
    unknown_type: float = 0.0
    negative_price: float = 0.0
    duplicate: float = 0.0
    late: float = 0.0

    @classmethod
    def spread(cls, total: float) -> DefectRates:
        """A total defect share split evenly over the six kinds."""
        share = total / len(fields(cls))
        return cls(**{field.name: share for field in fields(cls)})

    @property
    def total(self) -> float:
        return sum(getattr(self, field.name) for field in fields(self))


@dataclass(frozen=True)
class Catalog:
    """Products (id, category, code, brand, one price each) and users, fixed by the seed."""

    products: tuple[str, ...]  # "product_id,category_id,category_code,brand,price" preformatted
    users: int

    @classmethod
    def build(cls, seed: int, products: int = 20_000, users: int = 250_000) -> Catalog:
        rng = random.Random(f"catalog:{seed}")
        categories = [
            (2053013552226107603 + rng.randrange(10**15), rng.choice(CATEGORY_CODES) if rng.random() > 0.3 else "")
            for _ in range(400)
        ]
        rows = []
        for index in range(products):
            category_id, code = categories[int(len(categories) * rng.random() ** 1.5)]
            brand = rng.choice(BRANDS) if rng.random() > 0.15 else ""
            price = round(min(rng.lognormvariate(4.0, 1.2), 2574.07) + 0.5, 2)
            rows.append(f"{1000000 + index * 7},{category_id},{code},{brand},{price:.2f}")
        return cls(products=tuple(rows), users=users)


class DayWriter:
    """Writes one day's events, line by line, with defects injected at their rates."""

    def __init__(self, day: date, catalog: Catalog, seed: int, rates: DefectRates, late_days: int = 3) -> None:
        self.day = day
        self.catalog = catalog
        self.rng = random.Random(f"events:{seed}:{day.isoformat()}")
        self.rates = rates
        self.late_prefixes = [(day - timedelta(days=back)).isoformat() for back in range(1, late_days + 1)]
        self.prefix = day.isoformat()
        # Cumulative thresholds so one random draw picks at most one defect per line.
        self.thresholds = []
        cumulative = 0.0
        for field in fields(rates):
            cumulative += getattr(rates, field.name)
            self.thresholds.append((cumulative, field.name))

    def lines(self, count: int):
        """Yield exactly `count` lines (an exact duplicate counts as the two lines it is)."""
        written = 0
        while written < count:
            for line in self._session():
                defect = self._pick_defect()
                if defect == "duplicate" and written + 2 <= count:
                    yield line
                    yield line
                    written += 2
                else:
                    yield self._damage(line, defect) if defect and defect != "duplicate" else line
                    written += 1
                if written >= count:
                    return

    def _session(self):
        rng = self.rng
        products = self.catalog.products
        user = f"{512000000 + rng.randrange(self.catalog.users)},{uuid.UUID(int=rng.getrandbits(128), version=4)}"
        second = rng.choices(range(24), HOUR_WEIGHTS)[0] * 3600 + rng.randrange(3600)
        cart = []
        for _ in range(1 + min(int(rng.expovariate(1 / 4.5)), 60)):
            draw = rng.random()
            if cart and draw < 0.07:
                event, product = "purchase", cart.pop()
            elif cart and draw < 0.10:
                event, product = "remove_from_cart", cart.pop()
            else:
                product = products[int(len(products) * rng.random() ** 2.5)]
                event = "view"
                if rng.random() < 0.09:
                    event = "cart"
                    cart.append(product)
            hours, rest = divmod(second, 3600)
            yield f"{self.prefix} {hours:02d}:{rest // 60:02d}:{rest % 60:02d} UTC,{event},{product},{user}\n"
            second = min(second + rng.randint(2, 180), 86399)

    def _pick_defect(self) -> str | None:
        draw = self.rng.random()
        for threshold, name in self.thresholds:
            if draw < threshold:
                return name
        return None

    def _damage(self, line: str, defect: str) -> str:
        rng = self.rng
        values = line.rstrip("\n").split(",")
        if defect == "malformed":
            kind = rng.randrange(4)
            if kind == 0:
                values = values[:-1]  # a field short
            elif kind == 1:
                values.append("extra")  # a field too many
            elif kind == 2:
                values[5] = '"' + values[5]  # a quote that never closes
            else:
                values[6] = values[6].replace(".", ",", 1).replace(",", "x", 1)  # a price that is not a number
        elif defect == "empty_key":
            values[rng.choice(KEY_FIELDS)] = ""
        elif defect == "unknown_type":
            values[1] = rng.choice(UNKNOWN_EVENT_TYPES)
        elif defect == "negative_price":
            values[6] = f"-{values[6]}"
        elif defect == "late":
            values[0] = rng.choice(self.late_prefixes) + values[0][10:]
        return ",".join(values) + "\n"


def write_day(day: date, landing: Path, count: int, catalog: Catalog, seed: int, rates: DefectRates,
              compress: bool = False, progress: Progress | None = None) -> Path:
    folder = landing / "events" / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"events-{day.isoformat()}.csv{'.gz' if compress else ''}"
    partial = target.with_name(f".{target.name}.partial")
    opener = (lambda path: gzip.open(path, "wt", compresslevel=1, newline="")) if compress else (
        lambda path: open(path, "w", newline="", buffering=1 << 20))
    batch = []
    with opener(partial) as out:
        out.write(EVENTS.header + "\n")
        for line in DayWriter(day, catalog, seed, rates).lines(count):
            batch.append(line)
            if len(batch) == 50_000:
                out.write("".join(batch))
                batch.clear()
                if progress:
                    progress.advance(50_000)
        out.write("".join(batch))
        if progress:
            progress.advance(len(batch))
    partial.replace(target)  # readers never see half a file
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_date_range(parser, "number of consecutive days from --from")
    parser.add_argument("--events-per-day", type=int, default=100_000, help="data lines per day (default 100000)")
    parser.add_argument("--seed", type=int, default=46, help="random seed (default 46)")
    parser.add_argument("--landing", type=Path, help="landing zone root (default: $LAKEHOUSE_LANDING)")
    parser.add_argument("--gzip", action="store_true", help="write .csv.gz instead of .csv")
    parser.add_argument("--defect-rate", type=float, default=0.0,
                        help="share of defective lines, spread evenly over the six kinds (default 0)")
    for field in fields(DefectRates):
        parser.add_argument(f"--{field.name.replace('_', '-')}-rate", type=float, default=None,
                            help=f"share of lines with this defect: {field.name.replace('_', ' ')} "
                                 "(overrides --defect-rate for this kind)")
    args = parser.parse_args(argv)

    if args.first is None:
        parser.error("--from is required")
    if args.days is not None and args.last is not None:
        parser.error("give --to or --days, not both")
    last = args.last or args.first + timedelta(days=(args.days or 1) - 1)
    try:
        days = date_range(args.first, last)
    except ValueError as error:
        parser.error(str(error))
    spread = DefectRates.spread(args.defect_rate)
    rates = DefectRates(**{
        field.name: getattr(args, f"{field.name}_rate") if getattr(args, f"{field.name}_rate") is not None
        else getattr(spread, field.name)
        for field in fields(DefectRates)
    })
    if not 0 <= rates.total <= 1 or min(getattr(rates, f.name) for f in fields(rates)) < 0:
        parser.error("defect rates must be between 0 and 1 and add up to at most 1")

    landing = args.landing or get_settings().landing
    catalog = Catalog.build(args.seed)
    progress = Progress("generate events", total=len(days) * args.events_per_day)
    for day in days:
        write_day(day, landing, args.events_per_day, catalog, args.seed, rates, args.gzip, progress)
    rate = progress.finish()
    print(f"events: {len(days)} day(s) x {args.events_per_day:,} lines, {days[0]} to {days[-1]}, "
          f"{rate:,.0f} lines/s, in {landing / 'events'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
