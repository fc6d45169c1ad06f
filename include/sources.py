"""The delivered sources: their names and the column layout each delivery must have."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    name: str
    columns: tuple[str, ...]
    description: str

    @property
    def header(self) -> str:
        return ",".join(self.columns)


ORDERS = Source(
    name="orders",
    columns=(
        "InvoiceNo",
        "StockCode",
        "Description",
        "Quantity",
        "InvoiceDate",
        "UnitPrice",
        "CustomerID",
        "Country",
    ),
    description="order lines in the UCI Online Retail layout",
)

EVENTS = Source(
    name="events",
    columns=(
        "event_time",
        "event_type",
        "product_id",
        "category_id",
        "category_code",
        "brand",
        "price",
        "user_id",
        "user_session",
    ),
    description="clickstream events in the Kaggle/REES46 layout",
)

SOURCES: dict[str, Source] = {source.name: source for source in (ORDERS, EVENTS)}


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; known sources: {', '.join(SOURCES)}") from None
