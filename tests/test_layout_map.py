"""The README's layout map names every module of `pipeline/` and `stages/`, and nothing else."""

from __future__ import annotations

import re

from tests.import_graph import REPO


def test_readme_layout_map_matches_the_tree() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `((?:pipeline|stages)/[\w/]+\.py)` \|", section, flags=re.M)
    tree = sorted(
        str(p.relative_to(REPO)) for pkg in ("pipeline", "stages") for p in (REPO / pkg).rglob("*.py")
        if not (p.name == "__init__.py" and p.parent.name not in ("pipeline", "stages"))
    )
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert sorted(listed) == tree, (
        f"README layout map: missing {sorted(set(tree) - set(listed))}, stale {sorted(set(listed) - set(tree))}"
    )
