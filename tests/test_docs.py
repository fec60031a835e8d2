"""Every ``python`` code block of the docs runs, in order, one namespace per page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import require

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```(?P<info>[^\n]*)\n(?P<code>.*?)^```", re.S | re.M)


def code_blocks(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [m["code"] for m in BLOCK.finditer(text) if m["info"].strip() == "python"]


def pages():
    """Pages with code, the ones that start with ``<!-- tests: slow -->`` marked slow."""
    for page in sorted(DOCS.rglob("*.md")):
        if code_blocks(page):
            slow = page.read_text(encoding="utf-8").startswith("<!-- tests: slow -->")
            yield pytest.param(page, marks=[pytest.mark.slow] if slow else [], id=page.name)


@pytest.mark.parametrize("page", list(pages()))
def test_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs.{page.stem}"}
    for number, code in enumerate(code_blocks(page), 1):
        try:
            exec(compile(code, f"{page.name}[block {number}]", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{page.name}, code block {number} failed:\n{code}") from err


def test_the_documentation_builds_without_warnings(tmp_path):
    require("mkdocs")
    require("mkdocstrings")
    import subprocess
    import sys

    root = DOCS.parent
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # The API reference reads as a person sees it: cross-references are links, never
    # literal Sphinx roles, and internal helpers are not listed.
    roles = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):(?:`|<code>)")
    literal = {str(page.relative_to(tmp_path / "site")): len(roles.findall(page.read_text(encoding="utf-8")))
               for page in (tmp_path / "site").rglob("*.html")}
    assert not {page: n for page, n in literal.items() if n}, literal
    neurons_page = (tmp_path / "site" / "reference" / "neurons" / "index.html").read_text(encoding="utf-8")
    assert "limit_tokens" not in neurons_page and 'id="tl_multilingual.model.tokens.batches"' not in neurons_page
