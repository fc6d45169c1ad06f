"""Delivered text lines -> bronze rows: one row per data line, malformed lines flagged, never dropped."""

from __future__ import annotations

from datetime import date, datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from include.sources import Source

CORRUPT = "_corrupt_record"

# Columns bronze adds after the source's own, in this order.
FLAG_COLUMNS = ("_is_malformed", "_malformed_reason", "_raw_line", "_raw_bytes")
METADATA_COLUMNS = ("_ingestion_date", "_source_file", "_ingested_at", "_run_id")

# RFC 4180 as the deliveries write it: quotes doubled inside quoted fields.
CSV_OPTIONS = {
    "mode": "PERMISSIVE",
    "columnNameOfCorruptRecord": CORRUPT,
    "quote": '"',
    "escape": '"',
}

# A comma that is not inside a quoted field: used only to count the fields of a malformed line.
_SEPARATOR_OUTSIDE_QUOTES = r',(?=(?:[^"]*"[^"]*")*[^"]*$)'


def bronze_schema(source: Source) -> T.StructType:
    fields = [T.StructField(column, T.StringType()) for column in source.columns]
    fields += [
        T.StructField("_is_malformed", T.BooleanType(), nullable=False),
        T.StructField("_malformed_reason", T.StringType()),
        T.StructField("_raw_line", T.StringType()),
        T.StructField("_raw_bytes", T.BinaryType()),
        T.StructField("_ingestion_date", T.DateType(), nullable=False),
        T.StructField("_source_file", T.StringType(), nullable=False),
        T.StructField("_ingested_at", T.TimestampType(), nullable=False),
        T.StructField("_run_id", T.StringType(), nullable=False),
    ]
    return T.StructType(fields)


def parse_lines(lines: DataFrame, source: Source) -> DataFrame:
    """Parse `value` (one delivered line without its header) into the source's string columns.

    Input columns: `value` (the line as delivered, possibly not UTF-8) and `_source_file`. Output:
    the source columns, the malformed flag with its reason, the raw text of malformed lines, the raw
    bytes of lines that are not UTF-8, and `_source_file`.
    """
    valid_utf8 = F.is_valid_utf8("value")
    text = without_carriage_return(F.when(valid_utf8, F.col("value")).otherwise(F.make_valid_utf8("value")))
    schema = ", ".join(f"`{column}` STRING" for column in source.columns) + f", `{CORRUPT}` STRING"
    parsed = lines.select(
        valid_utf8.alias("_valid_utf8"),
        text.alias("_text"),
        F.col("value").cast("binary").alias("_bytes"),
        F.from_csv(text, schema, CSV_OPTIONS).alias("_parsed"),
        "_source_file",
    )
    reason = _malformed_reason(source, F.col("_valid_utf8"), F.col("_text"), F.col(f"_parsed.{CORRUPT}"))
    # The CSV parser reads an empty field as null. In a well-formed line every field is present, so
    # bronze gives back the empty string that was delivered; nulls remain only for the fields a
    # malformed line lacks.
    return parsed.select(
        *[
            F.when(reason.isNull(), F.coalesce(F.col(f"_parsed.`{column}`"), F.lit("")))
            .otherwise(F.col(f"_parsed.`{column}`"))
            .alias(column)
            for column in source.columns
        ],
        reason.isNotNull().alias("_is_malformed"),
        reason.alias("_malformed_reason"),
        F.when(reason.isNotNull(), F.col("_text")).alias("_raw_line"),
        F.when(~F.col("_valid_utf8"), F.col("_bytes")).alias("_raw_bytes"),
        "_source_file",
    )


def without_carriage_return(line: Column) -> Column:
    """A line as Spark splits it on \\n, without the \\r that CRLF files leave at its end."""
    return F.when(line.endswith("\r"), line.substr(F.lit(1), F.length(line) - 1)).otherwise(line)


def _malformed_reason(source: Source, valid_utf8: Column, text: Column, corrupt: Column) -> Column:
    expected = len(source.columns)
    fields = F.size(F.split(text, _SEPARATOR_OUTSIDE_QUOTES))
    quotes = F.length(text) - F.length(F.regexp_replace(text, '"', ""))
    return (
        F.when(~valid_utf8, F.lit("line is not valid UTF-8 (raw bytes kept in _raw_bytes)"))
        .when(text == "", F.lit("empty line"))
        .when(text == F.lit(source.header), F.lit("header line repeated inside the file"))
        .when(corrupt.isNotNull() & (quotes % 2 == 1), F.lit("unbalanced quotes"))
        .when(
            corrupt.isNotNull() & (fields != expected),
            F.format_string(f"wrong field count: expected {expected}, found %d", fields),
        )
        .when(corrupt.isNotNull(), F.lit("cannot be parsed as CSV"))
    )


def add_ingestion_metadata(
    rows: DataFrame, source: Source, ingestion_date: date, ingested_at: datetime, run_id: str
) -> DataFrame:
    """Stamp the ingestion date, time and run on every row, in the bronze column order."""
    stamped = rows.select(
        *source.columns,
        *FLAG_COLUMNS,
        F.lit(ingestion_date).alias("_ingestion_date"),
        "_source_file",
        F.lit(ingested_at).cast("timestamp").alias("_ingested_at"),
        F.lit(run_id).alias("_run_id"),
    )
    return stamped.to(bronze_schema(source))
