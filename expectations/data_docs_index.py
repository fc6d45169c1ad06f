"""The Data Docs index page, listed from a summary of each validation result instead of the results themselves.

GX's `DefaultSiteIndexBuilder` reads and parses every stored validation result to list it on the index
page, at every build, and every gate of every layer job builds the site: the gates' cost grew with the
lakehouse's history, one parse per result ever stored. This builder keeps what the index shows of each
result (its success, asset name and batch details) in `<GX project>/uncommitted/data_docs_index.json` and
parses only the results it has not summarized yet; results no longer in the store leave the summary. The
page is the one GX renders: the same links, from the same values.

The GX project's site names this class (`expectations/gate.py`), so whatever builds the site must have this
project on its import path, as the layer jobs do.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from pathlib import Path

from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
from great_expectations.render.renderer.site_builder import (
    FALSEY_YAML_STRINGS,
    DefaultSiteIndexBuilder,
    _resolve_asset_name,
)
from great_expectations.render.util import resource_key_passes_run_name_filter

log = logging.getLogger("lakehouse.gate")

SUMMARY_FILE = "data_docs_index.json"
# Bumped when a summary's fields change: a summary of another version is rebuilt from the results.
SUMMARY_VERSION = 1


class SummarizedSiteIndexBuilder(DefaultSiteIndexBuilder):
    """`DefaultSiteIndexBuilder`, reading each validation result once in its life rather than at every build."""

    def summary_path(self) -> Path:
        return Path(self.data_context.root_directory) / "uncommitted" / SUMMARY_FILE

    def _add_validations_to_index_links(self, index_links_dict: OrderedDict, validation_and_profiling_result_site_keys):
        validations = self.site_section_builders_config.get("validations", "None")
        if not validations or validations in FALSEY_YAML_STRINGS:
            return
        run_name_filter = validations["run_name_filter"]
        keys = sorted((key for key in validation_and_profiling_result_site_keys
                       if resource_key_passes_run_name_filter(key, run_name_filter)),
                      key=lambda key: key.run_id.run_time, reverse=True)
        if self.validation_results_limit:
            keys = keys[: self.validation_results_limit]
        stored = read_summaries(self.summary_path())
        summaries = {}
        for key in keys:
            name = json.dumps(key.to_tuple())
            summary = stored.get(name) or self._summarize(key)
            if summary is None:
                continue
            summaries[name] = summary
            self.add_resource_info_to_index_links_dict(
                index_links_dict=index_links_dict,
                expectation_suite_name=key.expectation_suite_identifier.name,
                section_name="validations",
                batch_identifier=key.batch_identifier,
                run_id=key.run_id,
                validation_success=summary["success"],
                run_time=key.run_id.run_time,
                run_name=key.run_id.run_name,
                asset_name=summary["asset_name"],
                batch_kwargs=summary["batch_kwargs"],
                batch_spec=summary["batch_spec"],
            )
        if summaries != stored:
            write_summaries(self.summary_path(), summaries)

    def _summarize(self, key) -> dict | None:
        """What the index shows of one stored result, read as GX's builder reads it; None where it cannot be
        read (GX's builder skips it with the same warning)."""
        try:
            validation = self.data_context.get_validation_result(
                batch_identifier=key.batch_identifier,
                expectation_suite_name=key.expectation_suite_identifier.name,
                run_id=key.run_id,
                validation_results_store_name=self.source_stores.get("validations"),
            )
        except Exception:
            validation = None
        if not isinstance(validation, ExpectationSuiteValidationResult):
            log.warning("Validation result not found: %s - skipping", key.to_tuple())
            return None
        # Through JSON, as the summary file will give them back: the first build renders the same values.
        return json.loads(json.dumps({
            "success": validation.success,
            "asset_name": _resolve_asset_name(validation),
            "batch_kwargs": validation.meta.get("batch_kwargs", {}),
            "batch_spec": validation.meta.get("batch_spec", {}),
        }, default=str))


def read_summaries(path: Path) -> dict:
    """The stored summaries by result key; none when the file is missing, unreadable or of another version."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(content, dict) or content.get("version") != SUMMARY_VERSION:
        return {}
    summaries = content.get("results")
    return summaries if isinstance(summaries, dict) else {}


def write_summaries(path: Path, summaries: dict) -> None:
    """Replace the summary file in one step: a reader sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps({"version": SUMMARY_VERSION, "results": summaries}, sort_keys=True))
    os.replace(partial, path)
