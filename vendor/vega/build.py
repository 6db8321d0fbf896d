"""Rebuild `dvc_plots.html`: DVC's page template with Vega, Vega-Lite and Vega-Embed inlined.

    cd /tmp && npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
    python vendor/vega/build.py /tmp/vega-5.20.2.tgz /tmp/vega-lite-5.2.0.tgz /tmp/vega-embed-6.18.2.tgz

`dvc plots show` fills dvc-render's page template, whose `{scripts}` placeholder loads the
three libraries from jsDelivr: offline the page stays blank. This template has no `{scripts}`
(dvc-render fills placeholders by plain string replacement, so the minified code needs no
escaping) and carries the libraries' own minified builds instead, at the versions dvc-render
1.0.2 asks the CDN for, so the specs DVC writes render as DVC meant them. `.dvc/config`'s
`plots.html_template` points at it. Only the trailing `sourceMappingURL` line is dropped (the
maps are not vendored). Writes `LICENSES` (the three BSD-3-Clause texts) and `SHA256SUMS` (of
each library as inlined; tests/test_vendor.py checks the template against it).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (npm package, its minified browser build inside the tarball)
LIBRARIES = [
    ("vega", "package/build/vega.min.js"),
    ("vega-lite", "package/build/vega-lite.min.js"),
    ("vega-embed", "package/build/vega-embed.min.js"),
]

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {credits}: inlined so that the page renders offline
         (vendor/vega/build.py; licences in vendor/vega/LICENSES) -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def library_code(text: str) -> str:
    """The minified build without its source-map comment, checked safe to inline."""
    code = re.sub(r"\n?//# sourceMappingURL=\S+\s*$", "", text)
    for bad in ("</script", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if bad in code:
            raise SystemExit(f"cannot inline: the code contains {bad!r}")
    return code


def main(tarballs: list[str]) -> None:
    if len(tarballs) != len(LIBRARIES):
        raise SystemExit(__doc__)
    credits, scripts, licences, sums = [], [], [], []
    for (name, member), path in zip(LIBRARIES, tarballs, strict=True):
        with tarfile.open(path) as tar:
            meta = json.load(tar.extractfile("package/package.json"))
            if meta["name"] != name:
                raise SystemExit(f"{path}: is {meta['name']}, expected {name} (give them in the order above)")
            code = library_code(tar.extractfile(member).read().decode("utf-8"))
            licence = tar.extractfile("package/LICENSE").read().decode("utf-8")
        credits.append(f"{name} {meta['version']} ({meta['license']})")
        scripts.append(f"    <script>{code}</script>")
        licences.append(f"== {name} {meta['version']} ({meta['license']}) ==\n\n{licence.strip()}\n")
        sums.append(f"{hashlib.sha256(code.encode()).hexdigest()}  {name}@{meta['version']}")
    page = PAGE.format(credits=", ".join(credits), scripts="\n".join(scripts))
    (HERE / "dvc_plots.html").write_text(page, encoding="utf-8")
    (HERE / "LICENSES").write_text("\n".join(licences), encoding="utf-8")
    (HERE / "SHA256SUMS").write_text("\n".join(sums) + "\n", encoding="utf-8")
    print(f"wrote {HERE / 'dvc_plots.html'} ({len(page) / 1e6:.2f} MB): {', '.join(credits)}")


if __name__ == "__main__":
    main(sys.argv[1:])
