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


# The tables each layer job publishes for a source: the DAG declares them as the task's Airflow Assets,
# and tests/test_dag_integrity.py checks them against the jobs' marts, dimensions and suites.
PUBLISHED_TABLES: dict[tuple[str, str], tuple[str, ...]] = {
    ("bronze", "orders"): ("orders", "ingested_files"),
    ("bronze", "events"): ("events", "ingested_files"),
    ("silver", "orders"): ("orders", "quarantine", "dim_customer", "dim_product"),
    ("silver", "events"): ("events", "quarantine"),
    ("gold", "orders"): ("daily_sales", "customer_rfm", "product_performance"),
    ("gold", "events"): ("funnel_daily", "product_conversion", "user_engagement", "hourly_sales"),
}


def validation_run_name(ingestion_date: str, layer: str, source: str) -> str:
    """The name of a layer job's validation run: Data Docs sorts and filters on it, and the Airflow
    plugin finds a task's validation pages by it."""
    return f"{ingestion_date}.{layer}.{source}"
