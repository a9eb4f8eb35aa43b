"""The asv dashboard, made to work without the internet.

`asv publish` writes pages that load jQuery, flot, bootstrap and three small plugins from
CDNs. Where those are unreachable (this project's CI, air-gapped clusters) the page shows
asv's "external dependencies failed to load" error instead of graphs. `vendor(html_dir)`
fetches the same libraries from the npm registry (checking each tarball against the
registry's sha512), copies them under html_dir/vendor/ and points the pages at them.

    python ci/dashboard.py [HTML_DIR]   # after `asv publish` (ci/dashboard.sh runs both)
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import sys
import tarfile
import urllib.request
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
# CDN address asv uses (regex) -> (npm package, version, file in its tarball). Versions are
# asv's, except stupid-table-plugin: npm has only 1.1.3 (asv asks for 1.0.1; same API).
CDN = [
    (r"code\.jquery\.com/jquery-3\.3\.1\.min\.js", ("jquery", "3.3.1", "dist/jquery.min.js")),
    (r"flot/0\.8\.3/jquery\.flot\.min\.js", ("flot", "0.8.3", "jquery.flot.js")),
    (r"flot/0\.8\.3/jquery\.flot\.(\w+)\.min\.js", ("flot", "0.8.3", r"jquery.flot.\1.js")),
    (r"flot-orderbars@1\.0\.0/js/(jquery\.flot\.orderBars\.js)",
     ("flot-orderbars", "1.0.0", r"js/\1")),
    (r"stupidtable/1\.0\.1/stupidtable\.min\.js",
     ("stupid-table-plugin", "1.1.3", "stupidtable.min.js")),
    (r"blueimp-md5/2\.19\.0/js/md5\.min\.js", ("blueimp-md5", "2.19.0", "js/md5.min.js")),
    (r"bootstrap@3\.1\.1/dist/((?:js|css)/bootstrap\.min\.(?:js|css))",
     ("bootstrap", "3.1.1", r"dist/\1")),
]
CACHE = Path.home() / ".cache" / "kernelsuite" / "npm"


def _tarball(package: str, version: str) -> bytes:
    path = CACHE / f"{package}-{version}.tgz"
    meta = json.loads(urllib.request.urlopen(f"{REGISTRY}/{package}/{version}",
                                             timeout=60).read())
    algo, _, digest = meta["dist"]["integrity"].partition("-")
    if path.exists():
        data = path.read_bytes()
    else:
        data = urllib.request.urlopen(meta["dist"]["tarball"], timeout=60).read()
    if base64.b64encode(hashlib.new(algo, data).digest()).decode() != digest:
        raise RuntimeError(f"{package}@{version}: the tarball does not match the registry's "
                           f"{algo} integrity")
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _extract(package: str, version: str, member: str, dest: Path) -> None:
    if dest.exists():
        return
    with tarfile.open(fileobj=io.BytesIO(_tarball(package, version))) as tar:
        data = tar.extractfile(f"package/{member}").read()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def local_copy(url: str) -> tuple[str, str, str] | None:
    """(package, version, file) for a CDN address asv's pages use; None if unknown."""
    for pattern, (package, version, member) in CDN:
        m = re.search(pattern, url)
        if m:
            return package, version, m.expand(member)
    return None


def vendor(html_dir) -> list[str]:
    """Point every page of a published dashboard at local copies of its CDN libraries.
    Returns the addresses replaced. Unknown external addresses raise."""
    html_dir = Path(html_dir)
    tag = re.compile(r'<(script|link)\b[^>]*?(?:src|href)="(https://[^"]+)"[^>]*>')
    replaced = []
    for page in html_dir.glob("*.html"):
        text = page.read_text()

        def local(m):
            url = m.group(2)
            if url.endswith("regressions.xml") or m.group(1) == "link" and \
                    "stylesheet" not in m.group(0):
                return m.group(0)
            found = local_copy(url)
            if found is None:
                raise RuntimeError(f"{page.name}: no local copy known for {url}")
            package, version, member = found
            rel = f"vendor/{package}-{version}/{member}"
            _extract(package, version, member, html_dir / rel)
            replaced.append(url)
            out = m.group(0).replace(url, rel)
            return re.sub(r'\s(integrity|crossorigin|referrerpolicy)="[^"]*"', "", out)

        page.write_text(tag.sub(local, text))
    return sorted(set(replaced))


if __name__ == "__main__":
    for url in vendor(sys.argv[1] if len(sys.argv) > 1 else ".asv/html"):
        print("vendored", url)
