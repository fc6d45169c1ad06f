"""Write-audit-publish: a layer's output for a date is validated with GX before it is written.

A layer job computes its output frames, caches them, and hands them to `audit()` with the batch-level
figures the suites compare them to (the delivered data lines, the bronze rows of the date, ...). Each
frame is validated against the suite `<layer>.<table>` (`expectations/<layer>.<table>.yml`) by its own
GX checkpoint; every result is stored in the GX project and rendered into the Data Docs site. Only
when every suite passes does the job write its tables; otherwise `GateFailed` carries one readable
summary (expectation, observed value, sample rows, the Data Docs page) and the published tables keep
their previous Delta version.

The GX project (`<LAKEHOUSE_GX_ROOT>/gx`) is brought up to date from the suite files under a file
lock at the start of each audit, so jobs of different layers and dates can validate side by side.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import html
import logging
import re
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml

from include.config import ConfigurationError
from include.sources import validation_run_name
from include.spark import make_current, tagged_pool
from include.tools import data_docs_assets

SUITES_DIR = Path(__file__).resolve().parent
DATASOURCE = "lakehouse"
BATCH_DEFINITION = "output of the run"
SITE_NAME = "lakehouse"
# Unexpected values and rows shown per failed expectation, in Data Docs and in the task log.
SAMPLE_ROWS = 20
# What a suite's results keep. GX fetches a sample of unexpected values for every column expectation, a
# query each even where it found none (a tenth of a small day's three jobs), so a suite's checkpoint runs
# without samples (FIRST_PASS_FORMAT: a query with limit 0, which Spark answers without running it), and
# only when some expectation found unexpected values does its validation definition run again with them.
# Neither keeps the Python snippet GX writes to fetch those rows from a dataframe
# (`unexpected_index_query`), which means nothing to a reader of Data Docs: the frame is gone after the job.
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS,
                 "return_unexpected_index_query": False}
FIRST_PASS_FORMAT = {**RESULT_FORMAT, "partial_unexpected_count": 0}
# The SQL checks running side by side ahead of GX (`_run_ahead`).
AHEAD_THREADS = 2

log = logging.getLogger("lakehouse.gate")


class GateFailed(RuntimeError):
    """A layer's output for a date broke its expectations: not published, and not worth retrying."""


class SuiteError(ConfigurationError):
    """A suite file that cannot be read as a suite: the project's configuration, not the data, is wrong."""


@dataclass(frozen=True)
class Check:
    """One output frame to validate against the suite of `layer.table`.

    `parameters` fill the suite's `$PARAMETER` references; `views` are other frames the suite's SQL
    checks read by name (staged dimensions, the silver rows a mart is reconciled with).
    """

    table: str
    frame: Any
    parameters: Mapping[str, Any] = field(default_factory=dict)
    views: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    suite: str
    success: bool
    evaluated: int
    failed: list[str]
    page: str
    seconds: float


def suite_names() -> list[str]:
    return sorted(path.name[: -len(".yml")] for path in SUITES_DIR.glob("*.yml"))


def load_suite(name: str):
    """The GX suite written in `expectations/<name>.yml`.

    The file lists expectations as `- <expectation_type>: {kwargs}` (GX's snake_case names) or
    `- unexpected_rows: {description, query}` for SQL checks over `{batch}`; `notes` is kept for Data Docs.
    """
    import great_expectations as gx

    path = SUITES_DIR / f"{name}.yml"
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SuiteError(f"cannot read suite {name}: {error}") from None
    if not isinstance(spec, dict) or spec.get("suite") != name or not isinstance(spec.get("expectations"), list):
        raise SuiteError(f"{path}: expected `suite: {name}` and a list under `expectations`")
    expectations = []
    for position, entry in enumerate(spec["expectations"], 1):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise SuiteError(f"{path}: expectation {position} must be one `type: {{arguments}}` mapping")
        ((kind, arguments),) = entry.items()
        arguments = dict(arguments or {})
        if kind == "unexpected_rows":
            arguments["unexpected_rows_query"] = arguments.pop("query", None)
            try:
                _on_batch(arguments["unexpected_rows_query"] or "", "batch")
            except SuiteError as error:
                raise SuiteError(f"{path}: expectation {position}: {error}") from None
            expectations.append(_sampled_rows_expectation()(**arguments))
            continue
        class_name = "".join(part.capitalize() for part in kind.split("_"))
        expectation_class = getattr(gx.expectations, class_name, None)
        if expectation_class is None or not kind.startswith("expect_"):
            raise SuiteError(f"{path}: expectation {position}: GX has no expectation {kind!r}")
        try:
            expectations.append(expectation_class(**arguments))
        except Exception as error:  # pydantic names the bad argument
            raise SuiteError(f"{path}: expectation {position} ({kind}): {error}") from None
    return gx.ExpectationSuite(name=name, expectations=expectations, notes=spec.get("notes"))


@functools.cache
def _sampled_rows_expectation():
    """GX's SQL check (`UnexpectedRowsExpectation`), keeping a sample of the rows it found on failure and
    showing them in Data Docs (GX keeps only their count below result format COMPLETE and renders only it),
    and running its query once where GX runs it twice: GX counts the rows by one query and fetches up to
    200 of them by another, for every check, passed or not. Here one query fetches up to SAMPLE_ROWS rows;
    fewer than that is the count, and only a check that found that many counts them again. A gate of a
    small day is mostly such queries (an orders silver job runs twelve checks).
    Defined on first use (importing GX takes seconds; a job with its gates off never pays it)."""
    from great_expectations.core.metric_domain_types import MetricDomainTypes
    from great_expectations.execution_engine import SparkDFExecutionEngine
    from great_expectations.expectations.core.unexpected_rows_expectation import UnexpectedRowsExpectation
    from great_expectations.expectations.metrics.metric_provider import metric_value
    from great_expectations.expectations.metrics.query_metric_provider import QueryMetricProvider
    from great_expectations.render import LegacyDiagnosticRendererType
    from great_expectations.render.renderer.renderer import renderer

    class UnexpectedRowsSample(QueryMetricProvider):
        """The rows a SQL check's query finds over the batch: how many, and the first SAMPLE_ROWS."""

        metric_name = "lakehouse_unexpected_rows.sample"
        value_keys = ("unexpected_rows_query",)
        query_param_name = "unexpected_rows_query"

        @metric_value(engine=SparkDFExecutionEngine)
        def _spark(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, metrics,
                   runtime_configuration) -> dict:
            query = metric_value_kwargs["unexpected_rows_query"]
            ahead = _ahead.get(query)
            if ahead is not None:
                try:
                    return ahead.result()
                except Exception:  # run again here, where GX reports the error as the check's
                    pass
            batch, _, _ = execution_engine.get_compute_domain(metric_domain_kwargs, domain_type=MetricDomainTypes.TABLE)
            batch.createOrReplaceTempView("tmp_view")
            return _sampled_rows(batch.sparkSession, _on_batch(query, "tmp_view"))

    class UnexpectedRowsWithSample(UnexpectedRowsExpectation):
        metric_dependencies = (UnexpectedRowsSample.metric_name,)

        def _validate(self, metrics: dict, runtime_configuration: dict | None = None, execution_engine=None):
            found = metrics[UnexpectedRowsSample.metric_name]
            success = found["count"] == 0
            result = {"observed_value": found["count"]}
            if not success:
                result["details"] = {"unexpected_rows": found["rows"]}
            return {"success": success, "result": result}

        @classmethod
        @renderer(renderer_type=LegacyDiagnosticRendererType.OBSERVED_VALUE)
        def _diagnostic_observed_value_renderer(cls, configuration=None, result=None, runtime_configuration=None):
            found = (result.result or {}) if result is not None else {}
            count = found.get("observed_value")
            text = "--" if count is None else f"{count:,} unexpected row{'' if count == 1 else 's'}"
            rows = (found.get("details") or {}).get("unexpected_rows") or []
            if rows:
                text += ", e.g. " + "; ".join(
                    ", ".join(f"{name}={value}" for name, value in row.items()) for row in rows[:5])
            return text  # its values were escaped for the page (`_store_for_display`)

    return UnexpectedRowsWithSample


def _sampled_rows(spark, query: str, count: int | None = None) -> dict:
    """What a SQL check's query finds: how many rows (`count` when already known), and the first SAMPLE_ROWS."""
    found = spark.sql(query)
    rows = found.limit(SAMPLE_ROWS).collect()
    if count is None:
        count = len(rows) if len(rows) < SAMPLE_ROWS else found.count()
    return {"count": count,
            "rows": [{name: value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
                      for name, value in row.asDict().items()} for row in rows]}


def _counted(spark, queries: list[str]) -> list[int]:
    """How many rows each query finds, all of them counted by one query: a gate's SQL checks mostly find
    nothing, and one statement is one round trip and one plan for the server where each check alone was two."""
    branches = [f"SELECT {position} AS position, count(*) AS found FROM ({query}) AS check_{position}"
                for position, query in enumerate(queries)]
    found = dict(spark.sql(" UNION ALL ".join(branches)).collect())
    return [found[position] for position in range(len(queries))]


def _found(spark, query: str, counts: Future, position: int) -> dict:
    """A SQL check's `_sampled_rows` from the counts of all the gate's checks: its sample is fetched only
    where it found rows. Where the counting query failed, the check runs alone (an error is then its own)."""
    try:
        count = counts.result()[position]
    except Exception:
        return _sampled_rows(spark, query)
    return {"count": 0, "rows": []} if count == 0 else _sampled_rows(spark, query, count)


def _on_batch(query: str, view: str) -> str:
    """A SQL check's query over the view `view` of the batch: its `{batch}` placeholder filled, as GX fills it
    (`str.format`, so a brace the SQL needs is written twice)."""
    try:
        return query.format(batch=view)
    except (KeyError, IndexError, ValueError) as error:
        raise SuiteError(f"SQL check {query!r}: {error!r} is not a placeholder SQL checks accept ({{batch}}); "
                         f"write a brace the SQL needs twice") from None


# The SQL checks of the suite being validated, run ahead of GX by `audit` (query -> future of its
# `_sampled_rows`), which the metric above waits for instead of running the query itself.
_ahead: dict[str, Future] = {}


def _sql_checks(suite) -> list[str]:
    return [expectation.unexpected_rows_query for expectation in suite.expectations
            if getattr(expectation, "unexpected_rows_query", None)]


def _run_ahead(spark, checks: list[Check], suites: list, pool: ThreadPoolExecutor) -> list[dict[str, Future] | None]:
    """Start every check's SQL checks in `pool`, each over its check's frame under a view of its own: a
    small day's gate is mostly these queries, so they are counted together by one query (`_counted`) beside
    GX's own metrics, and only a check that found rows fetches its sample. Nothing runs ahead when two checks
    give one view name different frames (the views are shared); otherwise the views stay registered for GX."""
    views: dict[str, Any] = {}
    for check in checks:
        for name, frame in check.views.items():
            if views.setdefault(name, frame) is not frame:
                return [None for _ in checks]
    for name, frame in views.items():
        frame.createOrReplaceTempView(name)
    ahead, texts = [], []
    for position, (check, suite) in enumerate(zip(checks, suites)):
        queries = _sql_checks(suite)
        if queries:
            batch = f"gate_batch_{position}"
            check.frame.createOrReplaceTempView(batch)
        ahead.append({})
        for query in queries:
            try:
                texts.append((position, query, _on_batch(query, batch)))
            except SuiteError:  # left to the metric, where GX reports it as the check's error
                continue
    if texts:
        # Submitted first, so the pool's first thread counts while the others wait for it.
        counts = pool.submit(_counted, spark, [text for _, _, text in texts])
        for index, (position, query, text) in enumerate(texts):
            ahead[position][query] = pool.submit(_found, spark, text, counts, index)
    return ahead


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lakehouse-gx.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _site_config(data_docs: Path) -> dict:
    return {
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(data_docs)},
    }


def project(settings):
    """The GX file project of this lakehouse, with its Data Docs site where the settings put it."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(settings.gx_root))
    sites = context.variables.data_docs_sites or {}
    wanted = _site_config(settings.data_docs)
    if sites.get(SITE_NAME) != wanted:
        if SITE_NAME in sites:
            context.update_data_docs_site(SITE_NAME, wanted)
        else:
            context.add_data_docs_site(SITE_NAME, wanted)
    if "local_site" in sites:  # GX's default site: everything goes to ours
        context.delete_data_docs_site("local_site")
    bars = context.variables.progress_bars  # read back from the file, a dict
    if (bars.get("globally") if isinstance(bars, dict) else getattr(bars, "globally", None)) is not False:
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        context.variables.save()
    return context


def _checkpoint(context, layer: str, table: str):
    """Datasource asset, batch definition, suite, validation definition and checkpoint of one table, as
    the suite file says now."""
    import great_expectations as gx
    from great_expectations.checkpoint import Checkpoint

    name = f"{layer}.{table}"
    # GX would persist every batch and never release it: on the Spark Connect server, whose cache all sessions
    # share, that is memory no task frees. The jobs cache what they validate themselves.
    try:
        datasource = context.data_sources.get(DATASOURCE)
    except (KeyError, ValueError, LookupError):
        datasource = context.data_sources.add_spark(DATASOURCE, persist=False)
    if datasource.persist:  # a project made before this setting
        datasource = context.data_sources.add_or_update_spark(name=DATASOURCE, persist=False)
    try:
        asset = datasource.get_asset(name)
    except LookupError:
        asset = datasource.add_dataframe_asset(name)
    try:
        batch = asset.get_batch_definition(BATCH_DEFINITION)
    except (KeyError, LookupError):
        batch = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)
    suite = context.suites.add_or_update(load_suite(name))
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=name, data=batch, suite=suite))
    return context.checkpoints.add_or_update(Checkpoint(
        name=name,
        validation_definitions=[validation],
        actions=[],
        result_format=FIRST_PASS_FORMAT,
    ))


def audit(spark, settings, layer: str, source: str, ingestion_date: date, checks: list[Check]) -> list[Outcome]:
    """Validate every check's frame; raise `GateFailed` with the readable summary if any expectation failed.

    The frames should be cached by the caller, who writes them afterwards: the expectations of a suite
    then read memory, not the plan that built the frame.
    """
    if not checks:
        return []
    if not settings.gates:
        log.warning("gates are off (LAKEHOUSE_GATES=false): %s %s %s published without validation",
                    layer, source, ingestion_date)
        return []
    from great_expectations.core.run_identifier import RunIdentifier

    # GX finds its session through pyspark's current one: the job's, whichever session this process made last.
    make_current(spark)
    run_time = datetime.now(UTC)
    run_name = validation_run_name(ingestion_date.isoformat(), layer, source)
    with _locked(settings.gx_root):
        context = project(settings)
        checkpoints = [_checkpoint(context, layer, check.table) for check in checks]
    outcomes, results = [], []
    pool = tagged_pool(spark, AHEAD_THREADS, "gate-sql")
    try:
        ahead = _run_ahead(spark, checks, [checkpoint.validation_definitions[0].suite for checkpoint in checkpoints],
                           pool)
        for check, checkpoint, queries in zip(checks, checkpoints, ahead):
            started = time.monotonic()
            if queries is None:  # the checks' views differ: each check's own, for its suite
                for view, frame in check.views.items():
                    frame.createOrReplaceTempView(view)
            _ahead.update(queries or {})
            try:
                key, validation = _run(checkpoint, check, RunIdentifier(run_name=run_name, run_time=run_time))
            finally:
                _ahead.clear()
            failed = [_describe(item) for item in validation.results if not item.success]
            _store_for_display(context, key, validation)
            results.append((check, key, validation, failed, time.monotonic() - started))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    with _locked(settings.gx_root):  # the site's index is rewritten: one writer at a time
        built = time.time()
        context.build_data_docs(site_names=[SITE_NAME], resource_identifiers=[result[1] for result in results])
        for check, key, validation, failed, seconds in results:
            (page,) = context.get_docs_sites_urls(resource_identifier=key, site_name=SITE_NAME) or [{}]
            outcomes.append(Outcome(f"{layer}.{check.table}", validation.success, len(validation.results),
                                    failed, _file_path(page.get("site_url", "")), seconds))
        pages = [settings.data_docs / "index.html", *(Path(outcome.page) for outcome in outcomes if outcome.page),
                 *(page for page in (settings.data_docs / "expectations").glob("**/*.html")
                   if page.stat().st_mtime >= built - 1)]
        data_docs_assets.localize(settings.data_docs, [page for page in pages if page.is_file()])
    for outcome in outcomes:
        log.info("gate %s %s: %s, %d expectations in %.1f s; Data Docs page: %s", outcome.suite, ingestion_date,
                 "passed" if outcome.success else f"FAILED {len(outcome.failed)}", outcome.evaluated,
                 outcome.seconds, outcome.page)
    broken = [outcome for outcome in outcomes if not outcome.success]
    if broken:
        lines = [f"{layer} {source} {ingestion_date} not published: {len(broken)} of {len(outcomes)} "
                 f"suite(s) failed"]
        for outcome in broken:
            lines.append(f"- {outcome.suite} ({len(outcome.failed)} of {outcome.evaluated} expectations failed; "
                         f"Data Docs: {outcome.page})")
            lines.extend(f"    {text}" for text in outcome.failed)
        raise GateFailed("\n".join(lines))
    return outcomes


def _run(checkpoint, check: Check, run_id):
    """Run a suite's checkpoint on the check's frame: (the stored result's key, the result). Where an
    expectation found unexpected values, the suite's validation definition runs again with samples of
    them (RESULT_FORMAT), its result stored under the same key in place of the checkpoint's."""
    parameters = {"batch_parameters": {"dataframe": check.frame}, "expectation_parameters": dict(check.parameters),
                  "run_id": run_id}
    ((key, validation),) = checkpoint.run(**parameters).run_results.items()
    if all(item.success and not (item.result or {}).get("unexpected_count") for item in validation.results):
        return key, validation
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    (definition,) = checkpoint.validation_definitions
    validation = definition.run(checkpoint_id=checkpoint.id, result_format=RESULT_FORMAT, **parameters)
    suite = ExpectationSuiteIdentifier(name=definition.suite.name)
    again = ValidationResultIdentifier(expectation_suite_identifier=suite, run_id=run_id,
                                       batch_identifier=validation.batch_id)
    if again != key:
        raise RuntimeError(f"{check.table}: the run with samples stored its result as {again}, not as {key}")
    return key, validation


def _store_for_display(context, key, validation) -> None:
    """Store the result with the delivered values it samples HTML-escaped, where it holds any: GX writes them
    into the Data Docs pages as they are, so a value such as `<script>...` would become markup in the page
    of everyone who opens it. The task log (`_describe`) keeps the values as delivered."""
    import copy

    def escaped(value):
        if isinstance(value, str):
            return html.escape(value)
        if isinstance(value, list):
            return [escaped(item) for item in value]
        if isinstance(value, dict):
            return {name: escaped(item) for name, item in value.items()}
        return value

    sampled = [item for item in validation.results
               if (item.result or {}).get("partial_unexpected_list") or (item.result or {}).get("details")]
    if not sampled:
        return
    shown = copy.deepcopy(validation)
    for item in shown.results:
        if item.result:
            item.result = {name: (escaped(value) if name.startswith("partial_unexpected") or name == "details"
                                  else value) for name, value in item.result.items()}
    context.validation_results_store.set(key, shown)


def _file_path(url: str) -> str:
    url = url or ""
    return unquote(url[len("file://"):]) if url.startswith("file://") else url


def _describe(item) -> str:
    """One failed expectation as a line: what it expects, what was observed, a few offending values."""
    config = item.expectation_config
    arguments = {name: value for name, value in (config.kwargs or {}).items()
                 if name not in ("batch_id", "result_format", "unexpected_rows_query")}
    label = config.description or config.type
    text = f"{label} {_short(arguments)}" if arguments and not config.description else label
    result = item.result or {}
    parts = []
    if "observed_value" in result:
        parts.append(f"observed {_short(result['observed_value'])}")
    if result.get("unexpected_count"):
        share = result.get("unexpected_percent")
        parts.append(f"{result['unexpected_count']:,} unexpected"
                     + (f" ({share:.2f}%)" if isinstance(share, (int, float)) else ""))
    sample = result.get("partial_unexpected_list") or (result.get("details") or {}).get("unexpected_rows")
    if sample:
        parts.append(f"e.g. {_short(sample[:5])}")
    for error in _errors(item.exception_info):
        parts.append(f"error: {error}")
    return f"{text}: {'; '.join(parts) or 'failed'}"


def _errors(info) -> list[str]:
    """The messages of the errors an expectation met: GX keeps one error as `{raised_exception,
    exception_message, ...}` and a metric's errors as such dicts keyed by the metric."""
    if not isinstance(info, dict):
        return []
    if "raised_exception" in info:
        message = str(info.get("exception_message") or "").splitlines()
        return [message[0] if message else "(no message)"] if info["raised_exception"] else []
    return [error for nested in info.values() for error in _errors(nested)]


def _short(value: Any, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", repr(value) if not isinstance(value, str) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
