"""The scripts, styles and fonts GX's Data Docs pages load from CDNs, kept locally so the site works offline.

GX's page templates link jQuery, Bootstrap, bootstrap-table (which draws the index's list of
validations), Font Awesome and Vega from public CDNs: opened from the file system on a machine
without internet access, the index shows no runs at all. `make setup` fetches the same versions once
from the npm registry (checksums pinned here) into the virtualenv; each Data Docs build then copies
them into the site's `static/vendor/` and points the pages it wrote at those copies. Where the assets
were not fetched, the pages keep their CDN links.

    python -m include.tools.data_docs_assets            # fetch into <venv>/share/lakehouse/data-docs-assets
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import shutil
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
DEFAULT_DIR = Path(sys.prefix) / "share" / "lakehouse" / "data-docs-assets"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str  # of the registry's tarball
    files: dict[str, str]  # path in the tarball -> path under the assets folder

    @property
    def url(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name.split('/')[-1]}-{self.version}.tgz"


PACKAGES = (
    Package("jquery", "3.7.1", "68a9f787516da47c680e09c187bcbac4536b6f85d90eb882844e12919e583f53",
            {"package/dist/jquery.min.js": "jquery.min.js"}),
    Package("popper.js", "1.12.9", "4233fad2da34a2a6bc982e7e02c85c14180af075853d97d7e3bfa7124c853cbf",
            {"package/dist/umd/popper.min.js": "popper.min.js"}),
    Package("bootstrap", "4.3.1", "b109c069bbb7cee57c3ddffb65d8481db5fe7e428b6d9b1ca502119a0429bd16",
            {"package/dist/css/bootstrap.min.css": "bootstrap.min.css",
             "package/dist/js/bootstrap.min.js": "bootstrap.min.js"}),
    Package("bootstrap-table", "1.19.1", "80f84cbf2f8f92e0d5444a82fb99495ab8a286b5cdb0594102e568eb9d9fa69a",
            {"package/dist/bootstrap-table.min.css": "bootstrap-table.min.css",
             "package/dist/bootstrap-table.min.js": "bootstrap-table.min.js",
             "package/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
                 "bootstrap-table-filter-control.min.css",
             "package/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
                 "bootstrap-table-filter-control.min.js"}),
    Package("bootstrap-datepicker", "1.9.0", "342bd95b65db796e0ac35ad9296edbe6733daefc9869b2e5b27286d423e38146",
            {"package/dist/css/bootstrap-datepicker.min.css": "bootstrap-datepicker.min.css",
             "package/dist/js/bootstrap-datepicker.min.js": "bootstrap-datepicker.min.js"}),
    Package("@forevolve/bootstrap-dark", "1.1.0", "20b089d52bc2ae80424fc43e5263023e96bd8479e7c5d346b8766c1b792a1cfd",
            {"package/dist/css/bootstrap-prefers-dark.css": "bootstrap-prefers-dark.css"}),
    Package("@fortawesome/fontawesome-free", "6.6.0",
            "cf0b890ab2b68d3c4ea0f93ceb81cc24b956cccf9db36c63be044a672bd3b4dd",
            {"package/css/all.min.css": "fontawesome/css/all.min.css", "package/webfonts/": "fontawesome/webfonts/"}),
    Package("vega", "5.33.1", "1b8504b6731c5311be3269c4d84ca996a5cc293bc772283293ede20c490e16c3",
            {"package/build/vega.min.js": "vega.min.js"}),
    Package("vega-lite", "5.23.0", "e4cbfdd8f6f1abe381c59cd558fd6a559c12b1496bfdf2e0c3295263a40fe4da",
            {"package/build/vega-lite.min.js": "vega-lite.min.js"}),
    Package("vega-embed", "6.29.0", "ecf1ee709c2bac9e0a4ead6908114b05b62c71493e10a8a4308109bb070f8eb1",
            {"package/build/vega-embed.min.js": "vega-embed.min.js"}),
)

# What GX 1.x's templates link -> the local copy.
LINKS = {
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.min.js",
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "bootstrap-table-filter-control.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "bootstrap-table-filter-control.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "bootstrap-table-filter-control.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "bootstrap-datepicker.min.js",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        "bootstrap-prefers-dark.css",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "fontawesome/css/all.min.css",
    "https://cdn.jsdelivr.net/npm/vega@5": "vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed.min.js",
}
VENDOR = "vendor"  # under the site's static/


def fetch(target: Path = DEFAULT_DIR) -> Path:
    """Download and unpack every package into `target` (skipped when already complete)."""
    done = target / ".complete"
    if done.is_file() and done.read_text() == _fingerprint():
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for package in PACKAGES:
        with urllib.request.urlopen(package.url, timeout=60) as response:
            data = response.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != package.sha256:
            raise RuntimeError(f"{package.url}: sha256 {digest}, expected {package.sha256}")
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member in archive.getmembers():
                for source, destination in package.files.items():
                    if member.isfile() and (member.name == source or
                                            (source.endswith("/") and member.name.startswith(source))):
                        path = staging / (destination + member.name[len(source):] if source.endswith("/")
                                          else destination)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_bytes(archive.extractfile(member).read())
    missing = [name for name in LINKS.values() if not (staging / name).is_file()]
    if missing:
        raise RuntimeError(f"packages fetched but files missing: {', '.join(missing)}")
    (staging / ".complete").write_text(_fingerprint())
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


GX_LOGO = re.compile(r'src="https://great-expectations-web-assets\.s3[^"]*/logo-long\.png[^"]*"')


def localize(site: Path, pages: list[Path], assets: Path = DEFAULT_DIR) -> bool:
    """Copy the assets into the site (once) and point `pages` at them; False when they were never fetched."""
    if not (assets / ".complete").is_file():
        return False
    vendor = site / "static" / VENDOR
    if not (vendor / ".complete").is_file() or (vendor / ".complete").read_text() != (assets / ".complete").read_text():
        shutil.rmtree(vendor, ignore_errors=True)
        shutil.copytree(assets, vendor)
    for page in pages:
        text = page.read_text(encoding="utf-8")
        prefix = os.path.relpath(vendor, page.parent)
        changed = text
        for url, local in LINKS.items():
            changed = changed.replace(f'"{url}"', f'"{prefix}/{local}"')
        # GX's logo comes from its S3 bucket (with the project's id in the query); the site has a copy.
        images = os.path.relpath(site / "static" / "images", page.parent)
        changed = GX_LOGO.sub(f'src="{images}/logo-long.png"', changed)
        if changed != text:
            page.write_text(changed, encoding="utf-8")
    return True


def _fingerprint() -> str:
    return "\n".join(f"{package.name}@{package.version} {package.sha256}" for package in PACKAGES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", type=Path, default=DEFAULT_DIR, help=f"where to keep them (default {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    target = fetch(args.target)
    print(f"Data Docs assets: {len(PACKAGES)} packages in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
