"""Every ``python`` code block of the docs runs, in order, one namespace per page: the
tutorials as the notebooks made from them (executed once, and their outputs shown by
the documentation build), the other pages in this process."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from conftest import require

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TUTORIALS = DOCS / "tutorials"
BLOCK = re.compile(r"^```(?P<info>[^\n]*)\n(?P<code>.*?)^```", re.S | re.M)


def code_blocks(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [m["code"] for m in BLOCK.finditer(text) if m["info"].strip() == "python"]


def is_slow(page: Path) -> bool:
    return page.read_text(encoding="utf-8").startswith("<!-- tests: slow -->")


def pages(tutorials: bool = False):
    """Pages with code (the tutorials, or the others), the ones that start with
    ``<!-- tests: slow -->`` marked slow."""
    for page in sorted(DOCS.rglob("*.md")):
        if code_blocks(page) and (page.parent == TUTORIALS) == tutorials:
            marks = [pytest.mark.slow] if is_slow(page) else []
            yield pytest.param(page, marks=marks, id=page.name)


def tools():
    """The tutorials tool (``tools/tutorials.py``), with the notebook packages it needs."""
    require("nbformat")
    require("nbclient")
    require("ipykernel")
    sys.path.insert(0, str(ROOT / "tools"))
    import tutorials

    return tutorials


@pytest.fixture(scope="session")
def executed(tmp_path_factory):
    """Where the tutorial tests leave the executed notebooks, for the build to reuse."""
    return tmp_path_factory.mktemp("executed-notebooks")


@pytest.fixture(scope="session")
def kernel():
    """One Python kernel for every tutorial (a fresh namespace for each), with this
    checkout first on its path."""
    tutorials = tools()
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    with tutorials.Kernel({**os.environ, "PYTHONPATH": path}) as running:
        yield running


@pytest.mark.parametrize("page", list(pages(tutorials=True)))
def test_tutorial_runs_as_the_notebook_made_from_it(page, executed, kernel, tmp_path):
    tutorials = tools()
    text = page.read_text(encoding="utf-8")
    notebook = tutorials.to_notebook(page)
    # Made from the page as it is: every python block is one code cell, in order.
    blocks = tutorials.python_blocks(text)
    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.source for cell in cells] == [code.rstrip("\n") for code, _ in blocks]
    tagged = [tutorials.SKIP_TAG in cell.metadata.get("tags", []) for cell in cells]
    assert tagged == [skip for _, skip in blocks]
    assert [b for b in code_blocks(page)] == [code for code, skip in blocks if not skip]
    assert notebook.metadata["tl_multilingual"]["source_sha256"] == tutorials.source_hash(text)
    assert "```python" not in "".join(c.source for c in notebook.cells if c.cell_type == "markdown")

    from nbclient.exceptions import CellExecutionError

    try:
        kernel.run(notebook, cwd=tmp_path)
    except CellExecutionError as err:
        raise AssertionError(f"{page.name}: a code block failed:\n{err}") from None
    ran = [cell for cell in notebook.cells if cell.cell_type == "code" and tutorials.SKIP_TAG not in
           cell.metadata.get("tags", [])]
    assert all(cell.execution_count for cell in ran)
    assert not any(o.output_type == "error" for cell in ran for o in cell.outputs)
    skipped = [cell for cell in cells if cell not in ran]
    assert all(cell.execution_count is None and not cell.outputs for cell in skipped)
    # Every cell that draws a figure (and does not save it) shows it, whichever
    # notebooks the kernel ran before.
    for cell in ran:
        if re.search(r"^figure = ", cell.source, re.M) and "save(" not in cell.source:
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), (
                f"{page.name}: this cell draws a figure but shows none:\n{cell.source}")
    tutorials.write(notebook, executed / f"{page.stem}.ipynb")

    # The page with its outputs: every output of every cell is on it, under its block.
    shown = tutorials.with_outputs(text, notebook)
    rendered = [tutorials.render_outputs(cell) for cell in ran]
    assert shown.count('<div class="tlm-outputs">') == sum(map(bool, rendered)) > 0
    for cell, html in zip(ran, rendered):
        if html:
            assert shown.index(html) > shown.index(cell.source)


def test_figures_are_shown_whatever_backend_the_caller_sets(tmp_path, monkeypatch):
    """A headless ``MPLBACKEND`` (as CI machines set) must not hide the tutorials' figures."""
    tutorials = tools()
    import nbformat

    monkeypatch.setenv("MPLBACKEND", "Agg")
    code = "import matplotlib.pyplot as plt\nfigure, ax = plt.subplots()\nax.plot([0, 1], [1, 0])"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    with tutorials.Kernel() as kernel:
        ran = kernel.run(notebook, cwd=tmp_path)
    assert '<img class="tlm-figure" alt="figure" src="data:image/png;base64,' in tutorials.render_outputs(ran.cells[0])


@pytest.mark.parametrize("page", list(pages()))
def test_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs.{page.stem}"}
    for number, code in enumerate(code_blocks(page), 1):
        try:
            exec(compile(code, f"{page.name}[block {number}]", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{page.name}, code block {number} failed:\n{code}") from err


def test_the_documentation_builds_without_warnings(tmp_path, executed):
    require("mkdocs")
    require("mkdocstrings")
    tutorials = tools()
    import subprocess

    import nbformat

    root = DOCS.parent
    # The tutorials run above are reused; any not run yet (this test alone) run now.
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "TLM_DOCS_EXECUTED": str(executed), "PYTHONPATH": path}
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                          cwd=root, capture_output=True, text=True, timeout=1800, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    # Each tutorial links its notebook, made from the page as it is, and shows what each
    # of its cells printed, drew or returned (the slow ones: only with TLM_DOCS_SLOW=1).
    shown = ""
    for page in sorted(TUTORIALS.glob("*.md")):
        built = (site / "tutorials" / page.stem / "index.html").read_text(encoding="utf-8")
        notebook = nbformat.read(site / "notebooks" / f"{page.stem}.ipynb", as_version=4)
        nbformat.validate(notebook)
        assert f'href="../../notebooks/{page.stem}.ipynb"' in built
        assert notebook.metadata["tl_multilingual"]["source_sha256"] == tutorials.source_hash(
            page.read_text(encoding="utf-8"))
        rendered = [tutorials.render_outputs(cell) for cell in notebook.cells
                    if cell.cell_type == "code"]
        assert built.count('<div class="tlm-outputs">') == sum(map(bool, rendered)), page.name
        assert any(rendered) or is_slow(page), f"{page.name} was not run"
        shown += built
    assert '<img class="tlm-figure" alt="figure" src="data:image/png;base64,' in shown
    assert '<table border="1" class="dataframe' in shown
    # Blocks shown but not run ("python skip") render as code, on every page.
    for page in DOCS.rglob("*.md"):
        if "```python skip" in page.read_text(encoding="utf-8"):
            name = "index.html" if page.stem == "index" else f"{page.stem}/index.html"
            built = (site / page.parent.relative_to(DOCS) / name).read_text(encoding="utf-8")
            assert "```" not in built and "python skip" not in built, page.name
    # The API reference reads as a person sees it: cross-references are links, never
    # literal Sphinx roles, and internal helpers are not listed.
    roles = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):(?:`|<code>)")
    literal = {str(page.relative_to(tmp_path / "site")): len(roles.findall(page.read_text(encoding="utf-8")))
               for page in (tmp_path / "site").rglob("*.html")}
    assert not {page: n for page, n in literal.items() if n}, literal
    neurons_page = (tmp_path / "site" / "reference" / "neurons" / "index.html").read_text(encoding="utf-8")
    assert "limit_tokens" not in neurons_page and 'id="tl_multilingual.model.tokens.batches"' not in neurons_page


def test_the_install_lines_take_pytorchs_cpu_wheels():
    """A plain machine following the README gets a CPU build of PyTorch, as PyTorch's own
    instructions give it (the default index would bring a multi-GB CUDA build)."""
    lines = [line for page in (ROOT / "README.md", DOCS / "getting-started.md")
             for line in page.read_text(encoding="utf-8").splitlines()
             if "pip install torch" in line]
    assert len(lines) >= 3
    for line in lines:
        torch_part = line.split("&&")[0]
        assert "--index-url https://download.pytorch.org/whl/cpu" in torch_part, line
