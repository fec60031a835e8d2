"""The tutorials as notebooks, and their outputs on the documentation pages.

The tutorials are written once, as Markdown pages (``docs/tutorials/*.md``) whose
``python`` code blocks run in order in one namespace. This module turns a page into a
Jupyter notebook (each ``python`` block a code cell, the prose between them Markdown
cells; a ``python skip`` block a code cell tagged ``skip-execution``, for code that
needs what the documentation build lacks, such as the real model), executes it in a
Jupyter kernel (``nbclient``), and renders each cell's outputs (printed text, warnings,
tables, figures) as HTML to place under its code block on the page.

The documentation build (``tools/docs_hooks.py``, an MkDocs hook) does all three for
every tutorial: the site shows each page with its outputs and offers the executed
notebook for download (``notebooks/<page>.ipynb``). Pages that start with
``<!-- tests: slow -->`` (they need the real model) get a notebook without outputs
unless ``TLM_DOCS_SLOW=1``; ``TLM_DOCS_EXECUTE=0`` skips execution altogether (for a
quick preview). The test suite executes every notebook once and hands the executed
notebooks to the build through ``TLM_DOCS_EXECUTED`` (a folder), so nothing runs twice.

From the command line::

    python tools/tutorials.py --out notebooks/            # the notebooks, without outputs
    python tools/tutorials.py --out notebooks/ --execute  # run them and keep the outputs
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import html
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "docs" / "tutorials"
SLOW_MARK = "<!-- tests: slow -->"
BLOCK = re.compile(r"^```(?P<info>[^\n]*)\n(?P<code>.*?)^```[ \t]*$\n?", re.S | re.M)
SKIP_TAG = "skip-execution"
TIMEOUT_S = 1200  # per cell
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"  # figures as the cells' outputs

# Run before the first cell, then removed: no progress bars, warnings shown as
# "Category: message" (without the kernel's temporary file names), and figures drawn
# inline (``%matplotlib inline`` again for every notebook: after the first notebook of a
# kernel, pyplot's interactive mode can be off, and a figure then shows only if saved).
_SETUP = """\
import os as _os, warnings as _warnings
_os.environ["TQDM_DISABLE"] = "1"
_warnings.filterwarnings("ignore", message="IProgress not found")
_warnings.formatwarning = lambda message, category, *args, **kwargs: (
    f"{category.__name__}: {message}\\n")
"""
_AUTOREF = re.compile(r"\[(`[^`\]]+`)\]\[[^\]]*\]")  # [`name`][identifier] -> `name`
_RELATIVE_LINK = re.compile(r"\[([^\]]+)\]\((?!https?://|#)[^)]+\)")  # [text](page.md) -> text


def source_hash(text: str) -> str:
    """SHA-256 of a page's Markdown: which version of the page a notebook comes from."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_slow(text: str) -> bool:
    return text.startswith(SLOW_MARK)


def python_blocks(text: str) -> list[tuple[str, bool]]:
    """The page's ``python`` blocks in order: ``(code, skipped)``."""
    out = []
    for match in BLOCK.finditer(text):
        words = match["info"].split()
        if words and words[0] == "python":
            out.append((match["code"], "skip" in words[1:]))
    return out


def _prose(text: str) -> str:
    text = text.replace(SLOW_MARK, "")
    text = _AUTOREF.sub(r"\1", text)
    return _RELATIVE_LINK.sub(r"\1", text).strip()


def to_notebook(page: Path, text: str | None = None) -> Any:
    """The notebook of a tutorial page: prose as Markdown cells, ``python`` blocks as code
    cells (``python skip`` ones tagged ``skip-execution``), other code blocks kept in the
    prose. Its metadata records the page and the hash of its source."""
    import nbformat

    text = page.read_text(encoding="utf-8") if text is None else text
    cells, position = [], 0

    def prose(chunk: str) -> None:
        chunk = _prose(chunk)
        if chunk:
            cells.append(nbformat.v4.new_markdown_cell(chunk))

    for match in BLOCK.finditer(text):
        words = match["info"].split()
        if not words or words[0] != "python":
            continue
        prose(text[position : match.start()])
        cell = nbformat.v4.new_code_cell(match["code"].rstrip("\n"))
        if "skip" in words[1:]:
            cell.metadata["tags"] = [SKIP_TAG]
        cells.append(cell)
        position = match.end()
    prose(text[position:])
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata.update(
        {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
            "tl_multilingual": {
                "source": page.relative_to(ROOT).as_posix() if page.is_absolute() else str(page),
                "source_sha256": source_hash(text),
            },
        }
    )
    for number, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{number}"  # stable ids: the same page gives the same notebook
    return notebook


class Kernel:
    """One Python kernel that runs notebooks one after the other, each in a fresh
    namespace (``%reset``) and its own working folder, so that the imports (torch,
    TransformerLens) are paid once. Use as a context manager; ``env`` is the kernel's
    environment (default: this process's), with matplotlib's inline backend whatever
    ``MPLBACKEND`` says there (a headless ``Agg`` would draw figures nobody sees)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = {**(os.environ if env is None else env), "MPLBACKEND": INLINE_BACKEND}
        self.manager: Any = None

    def __enter__(self) -> Kernel:
        from jupyter_client.manager import KernelManager

        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(env=self.env)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.manager is not None and self.manager.has_kernel:
            self.manager.shutdown_kernel(now=True)
        self.manager = None

    def run(self, notebook: Any, *, cwd: str | Path | None = None) -> Any:
        """Run every code cell not tagged ``skip-execution``, in ``cwd`` (default: a new
        temporary folder). Returns the notebook with outputs.

        Raises:
            nbclient.exceptions.CellExecutionError: a cell failed (the message holds
                its code and traceback).
        """
        import nbclient
        import nbformat

        work = Path(cwd) if cwd is not None else Path(tempfile.mkdtemp(prefix="tlm-notebook-"))
        setup = nbformat.v4.new_code_cell(
            f"%reset -f\nimport os as _os\n_os.chdir({str(work)!r})\n{_SETUP}"
            "%matplotlib inline\nimport matplotlib.pyplot as _plt\n_plt.close('all')\n"
        )
        setup["id"] = "setup"
        notebook.cells.insert(0, setup)
        client = nbclient.NotebookClient(
            notebook,
            km=self.manager,
            timeout=TIMEOUT_S,
            resources={"metadata": {"path": str(work)}},
        )
        try:
            client.execute()
        finally:
            notebook.cells.pop(0)
            if client.kc is not None:
                client.kc.stop_channels()
        number = 0
        for cell in notebook.cells:  # numbered as a reader running the notebook would see them
            if cell.cell_type == "code" and cell.get("execution_count"):
                number += 1
                cell["execution_count"] = number
                for output in cell.get("outputs", []):
                    if "execution_count" in output:
                        output["execution_count"] = number
        return notebook


def execute(notebook: Any, *, cwd: str | Path | None = None, kernel: Kernel | None = None) -> Any:
    """Run a notebook in ``kernel`` (default: a kernel of its own); see ``Kernel.run()``."""
    if kernel is not None:
        return kernel.run(notebook, cwd=cwd)
    with Kernel() as own:
        return own.run(notebook, cwd=cwd)


# Lines third-party code writes that say nothing about the tutorial: the harness asks
# git for its commit, which fails outside a repository.
_NOISE = re.compile(r"^fatal: not a git repository.*\n?", re.M)


def _text_output(text: str, kind: str) -> str:
    return f'<pre class="tlm-output tlm-{kind}">{html.escape(text.rstrip())}</pre>'


def render_outputs(cell: Any) -> str:
    """A code cell's outputs as HTML: printed text and warnings as preformatted text,
    tables (pandas' HTML) as they are, figures as embedded PNG images."""
    parts = []
    for output in cell.get("outputs", []):
        kind = output.get("output_type")
        if kind == "stream":
            text = _NOISE.sub("", output.get("text", ""))
            if text.strip():
                parts.append(
                    _text_output(text, "stderr" if output.get("name") == "stderr" else "stdout")
                )
        elif kind in ("execute_result", "display_data"):
            data = output.get("data", {})
            if "image/png" in data:
                png = data["image/png"].replace("\n", "")
                base64.b64decode(png, validate=True)
                parts.append(
                    f'<img class="tlm-figure" alt="figure" src="data:image/png;base64,{png}">'
                )
            elif "text/html" in data:
                parts.append(f'<div class="tlm-output tlm-table">{data["text/html"].strip()}</div>')
            elif "text/plain" in data:
                parts.append(_text_output(data["text/plain"], "stdout"))
        elif kind == "error":
            parts.append(_text_output(f"{output.get('ename')}: {output.get('evalue')}", "stderr"))
    if not parts:
        return ""
    # Backticks as entities: a printed Markdown fence must not end the page's own.
    body = "\n".join(parts).replace("`", "&#96;")
    return f'<div class="tlm-outputs">\n{body}\n</div>'


def with_outputs(text: str, notebook: Any) -> str:
    """The page's Markdown with each ``python`` block followed by its cell's outputs.

    Raises:
        ValueError: the notebook was not made from this version of the page.
    """
    recorded = notebook.metadata.get("tl_multilingual", {}).get("source_sha256")
    if recorded != source_hash(text):
        raise ValueError("the notebook was made from another version of the page")
    code = iter([cell for cell in notebook.cells if cell.cell_type == "code"])
    out, position = [], 0
    for match in BLOCK.finditer(text):
        words = match["info"].split()
        if not words or words[0] != "python":
            continue
        rendered = render_outputs(next(code))
        out.append(text[position : match.end()])
        if rendered:
            out.append("\n" + rendered + "\n\n")
        position = match.end()
    out.append(text[position:])
    return "".join(out)


def write(notebook: Any, path: Path) -> Path:
    import nbformat

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(notebook) + "\n", encoding="utf-8")
    return path


def read(path: Path) -> Any:
    import nbformat

    return nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", type=Path, help="tutorial pages (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the notebooks")
    parser.add_argument(
        "--execute", action="store_true", help="run the notebooks and keep their outputs"
    )
    args = parser.parse_args(argv)
    pages = args.pages or sorted(TUTORIALS.glob("*.md"))
    with contextlib.ExitStack() as stack:
        kernel = stack.enter_context(Kernel()) if args.execute else None
        for page in pages:
            notebook = to_notebook(page.resolve())
            if kernel is not None:
                print(f"running {page.name} ...", file=sys.stderr, flush=True)
                kernel.run(notebook)
            print(write(notebook, args.out / f"{page.stem}.ipynb"))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    raise SystemExit(main())
