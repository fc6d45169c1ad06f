"""Data Docs inside the Airflow UI, for logged-in users only.

The layer jobs build a Great Expectations Data Docs site at `$LAKEHOUSE_DATA_DOCS` (default
`data/data-docs`). This plugin serves that folder from Airflow's API server at `/data-docs/`, behind
Airflow's login (the session cookie the UI sets, or a bearer token), adds "Data Docs" to the UI's
navigation (the site embedded in the UI), and serves `/data-docs/runs/<date>.<layer>.<source>`: the
validation pages of one layer job's run, which each layer task's "Data Docs" button opens.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from urllib.parse import quote

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from include.config import get_settings
from include.orchestration import DATA_DOCS_PREFIX, DataDocsLink

RUN_NAME_PATTERN = r"^\d{4}-\d{2}-\d{2}\.[a-z]+\.[a-z]+$"


async def logged_in_user(request: Request):
    """The caller's Airflow user; a browser without a session goes to the login page, anyone else gets 401."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user, oauth2_scheme

    try:
        return await get_user(request, await oauth2_scheme(request), await bearer_scheme(request))
    except HTTPException as refused:
        if "text/html" in request.headers.get("accept", ""):
            login = get_auth_manager().get_url_login(next_url=str(request.url))
            raise HTTPException(status_code=303, headers={"Location": login}, detail="log in first") from refused
        raise


app = FastAPI(title="Lakehouse Data Docs", dependencies=[Depends(logged_in_user)], docs_url=None,
              redoc_url=None, openapi_url=None)


def _site() -> Path:
    return get_settings().data_docs


def _validation_results() -> Path:
    return get_settings().gx_root / "gx" / "uncommitted" / "validations"


@app.get("/", include_in_schema=False)
def index(request: Request) -> Response:
    page = _site() / "index.html"
    if not page.is_file():
        return HTMLResponse(_page("Data Docs", "<p>No validation has run yet: the site is built by the first layer "
                                               f"job, at <code>{html.escape(str(_site()))}</code>.</p>"), 404)
    if not request.url.path.endswith("/"):
        return RedirectResponse(f"{request.url.path}/", status_code=307)
    return FileResponse(page)


@app.get("/runs/{run_name}", include_in_schema=False)
def run_pages(run_name: str) -> Response:
    """Every validation page of one layer job's run (one per suite, newest attempt first)."""
    if not re.match(RUN_NAME_PATTERN, run_name):
        raise HTTPException(404, f"not a validation run name: {run_name!r} (expected <date>.<layer>.<source>)")
    site = _site()
    pages = sorted(site.glob(f"validations/**/{run_name}/*/*.html"),
                   key=lambda page: (page.parent.name, str(page)), reverse=True)
    if not pages:
        body = (f"<p>No validation pages for <b>{html.escape(run_name)}</b>: the job did not reach its gate "
                f"(it failed earlier, was skipped, or has not run yet). See the task's log.</p>")
        return HTMLResponse(_page(run_name, body), 404)
    rows = []
    for page in pages:
        relative = page.relative_to(site)
        suite = ".".join(relative.parts[1:-3])
        status = _status(relative)
        rows.append(f"<tr><td>{html.escape(suite)}</td><td>{html.escape(page.parent.name)}</td>"
                    f"<td class='{status.lower()}'>{status}</td>"
                    f"<td><a href='{html.escape(quote(f'{DATA_DOCS_PREFIX}/{relative.as_posix()}'))}'>open</a>"
                    "</td></tr>")
    body = ("<table><tr><th>suite</th><th>run time (UTC)</th><th>result</th><th></th></tr>"
            + "".join(rows) + f"</table><p><a href='{DATA_DOCS_PREFIX}/'>all validations</a></p>")
    return HTMLResponse(_page(f"Validations of {run_name}", body))


@app.get("/{path:path}", include_in_schema=False)
def site_file(path: str) -> Response:
    site = _site().resolve()
    target = (site / path).resolve()
    if not target.is_relative_to(site) or not target.is_file():
        raise HTTPException(404, f"no such Data Docs file: {path}")
    return FileResponse(target)


def _status(relative: Path) -> str:
    """Passed or Failed, from the stored validation result next to the page (GX's JSON, same layout)."""
    result = _validation_results().joinpath(*relative.parts[1:]).with_suffix(".json")
    try:
        return "Passed" if json.loads(result.read_text())["success"] else "Failed"
    except (OSError, ValueError, KeyError):
        return "Unknown"


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em 1em;text-align:left}"
            ".passed{color:#1a7f37}.failed{color:#cf222e;font-weight:bold}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")


class LakehouseDataDocsPlugin(AirflowPlugin):
    name = "lakehouse_data_docs"
    fastapi_apps = [{"app": app, "url_prefix": DATA_DOCS_PREFIX, "name": "Lakehouse Data Docs"}]
    external_views = [{
        "name": "Data Docs",
        "href": f"{DATA_DOCS_PREFIX}/",
        "destination": "nav",
        "url_route": "data-docs",
        "category": "browse",
    }]
    operator_extra_links = [DataDocsLink()]
