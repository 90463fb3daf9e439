"""The README's promises that code can check: the test command and the parameter-count table."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_parameter_counts_match_the_summary_command() -> None:
    from indigo_core.inn.summary import preset_table

    block = re.search(r"<!-- param-counts:start -->\n(.*?)\n<!-- param-counts:end -->", README, re.S)
    assert block, "README.md has no param-counts block"
    assert block.group(1).strip() == preset_table().strip(), (
        "README's parameter counts are stale: paste the output of `python -m indigo_core.inn.summary`"
    )


def test_readme_gives_the_one_test_command() -> None:
    assert "./scripts/test.sh" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test.sh" in ci
