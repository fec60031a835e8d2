"""MkDocs hook: every tutorial page shows the outputs its code produces, and links to
itself as a notebook (see ``tools/tutorials.py``); on every page, ``python skip`` code
blocks render as the Python they are.

Environment:
    TLM_DOCS_EXECUTE=0: do not run the tutorials (pages without outputs; a quick preview).
    TLM_DOCS_SLOW=1: also run the tutorials that need the real model.
    TLM_DOCS_EXECUTED=<folder>: executed notebooks to reuse (``<page>.ipynb``), each used
        only if it was made from the page as it is now.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tutorials  # noqa: E402

_NOTEBOOKS: dict[str, Any] = {}  # page path (relative to docs/) -> its notebook


def _executed(page: Path, text: str, kernels: contextlib.ExitStack, kernel: list) -> Any:
    """The page's notebook, executed unless execution is off or the page is slow (in the
    build's one kernel, started on first use)."""
    notebook = tutorials.to_notebook(page, text)
    if os.environ.get("TLM_DOCS_EXECUTE", "1") == "0":
        return notebook
    if tutorials.is_slow(text) and os.environ.get("TLM_DOCS_SLOW") != "1":
        return notebook
    cached = os.environ.get("TLM_DOCS_EXECUTED")
    if cached and (Path(cached) / f"{page.stem}.ipynb").is_file():
        done = tutorials.read(Path(cached) / f"{page.stem}.ipynb")
        if done.metadata.get("tl_multilingual", {}).get("source_sha256") == tutorials.source_hash(
            text
        ):
            return done
    from mkdocs.exceptions import PluginError
    from nbclient.exceptions import CellExecutionError

    if not kernel:
        kernel.append(kernels.enter_context(tutorials.Kernel()))
    try:
        return kernel[0].run(notebook)
    except CellExecutionError as err:
        raise PluginError(f"{page.name}: a code block failed:\n{err}") from err


def on_files(files: Any, config: Any) -> Any:
    """Run every tutorial and add its notebook to the site (``notebooks/<page>.ipynb``)."""
    import nbformat
    from mkdocs.structure.files import File

    docs = Path(config["docs_dir"])
    kernel: list = []
    with contextlib.ExitStack() as kernels:
        for file in list(files.documentation_pages()):
            if not file.src_uri.startswith("tutorials/"):
                continue
            page = docs / file.src_uri
            notebook = _executed(page, page.read_text(encoding="utf-8"), kernels, kernel)
            _NOTEBOOKS[file.src_uri] = notebook
            files.append(
                File.generated(
                    config, f"notebooks/{page.stem}.ipynb", content=nbformat.writes(notebook) + "\n"
                )
            )
    return files


_SKIP_FENCE = re.compile(r"^```python[ \t]+skip[ \t]*$", re.M)


def _plain_fences(markdown: str) -> str:
    """``python skip`` blocks (shown, not run) as plain ``python`` blocks: Markdown's
    fences take one word, and the marker is for the runners only."""
    return _SKIP_FENCE.sub("```python", markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Place each code block's outputs under it, and the notebook link under the title."""
    notebook = _NOTEBOOKS.get(page.file.src_uri)
    if notebook is None:
        return _plain_fences(markdown)
    name = Path(page.file.src_uri).stem
    ran = any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    note = f"*Also a notebook: [{name}.ipynb](../notebooks/{name}.ipynb), made from this page" + (
        ", with the outputs shown here.*" if ran else " (run it to see the outputs).*"
    )
    if ran:
        try:
            markdown = tutorials.with_outputs(markdown, notebook)
        except ValueError as err:
            from mkdocs.exceptions import PluginError

            raise PluginError(f"{page.file.src_uri}: {err}") from err
    lines = _plain_fences(markdown).split("\n")
    title = next((i for i, line in enumerate(lines) if line.startswith("# ")), -1)
    lines.insert(title + 1, f"\n{note}\n")
    return "\n".join(lines)
