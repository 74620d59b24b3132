"""The pages a new user reads first: tables that render, references that exist."""

from __future__ import annotations

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", "BENCHMARKS.md", "docs/design.md", "docs/training.md"]
TOP = ("benchmarks/", "scripts/", "seqpar/", "tests/", "docs/")


def _read(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding="utf-8") as fh:
        return fh.read()


def _prose(text: str) -> str:
    """The page without fenced code blocks (commands there name output files)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


@pytest.mark.parametrize("page", PAGES)
def test_tables_are_not_split(page):
    """A table row after a blank line would render as a paragraph (README's hybrid row)."""
    lines = _prose(_read(page)).splitlines()
    for i, line in enumerate(lines):
        starts_table = i + 1 < len(lines) and re.match(r"^\|[-:| ]+\|$", lines[i + 1])
        if line.startswith("|") and not starts_table:
            assert i > 0 and lines[i - 1].startswith("|"), f"{page}:{i + 1}: stray row {line}"


def test_strategy_table_has_every_strategy():
    import seqpar

    text = _read("README.md")
    start = text.index("| strategy |")
    table = text[start:text.index("\n\n", start)]
    for strategy in seqpar.STRATEGIES:
        assert f"| `{strategy}` |" in table, strategy


def test_benchmarks_reference_only_files_in_the_repo():
    text = _prose(_read("BENCHMARKS.md"))
    refs = set(re.findall(r"\]\(([^)#\s]+)", text))  # markdown links
    for code in re.findall(r"`([^`\n]+)`", text):  # paths in inline code
        refs.update(tok for tok in code.split() if tok.startswith(TOP))
    refs.update(re.findall(r"\b[\w/]+\.md\b", text))  # pages named in prose
    assert not re.search(r"/work/|\.\./", text), "references outside the repository"
    missing = sorted(r for r in refs if not r.startswith("http")
                     and not os.path.exists(os.path.join(ROOT, r)))
    assert not missing, missing
    assert len(refs) > 5  # the results folders are referenced at all


def test_readme_shows_pip_install_and_the_hf_extra():
    text = _read("README.md")
    assert "pip install ." in text and 'pip install ".[hf]"' in text
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as fh:
        assert re.search(r"^hf = \[.*\"transformers", fh.read(), re.M)
