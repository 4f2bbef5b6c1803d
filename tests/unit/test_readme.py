"""The README is read in one sitting (issue 27): at most 250 lines, the two commands at the top, the
accuracy table's markers kept (``bigru-train accuracy --readme`` rewrites between them), and every page
it links to there; the rest lives in docs/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = README.splitlines()
    assert len(lines) <= 250, len(lines)
    top = "\n".join(lines[:12])
    assert "make demo" in top and "make test" in top


def test_readme_keeps_the_accuracy_markers_and_links_what_moved() -> None:
    assert README.count("<!-- accuracy-table:begin") == 1 and README.count("<!-- accuracy-table:end -->") == 1
    for page in ("configuration", "usage", "performance", "training", "operations", "reliability"):
        assert f"(docs/{page}.md" in README, page
    missing = [link for link in re.findall(r"\]\(((?:docs|results)/[^)#\s]+)", README) if not (ROOT / link).exists()]
    assert missing == []
