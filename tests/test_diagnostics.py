"""Warnings point at the caller's line; the package ships its type information."""

from __future__ import annotations

import warnings
from pathlib import Path

import tl_multilingual as tlm
from tl_multilingual.errors import warn


def test_warnings_point_at_the_callers_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn("a caution")
        line = _line_of('warn("a caution")')
    assert caught[0].filename == __file__ and caught[0].lineno == line
    assert issubclass(caught[0].category, tlm.TLMultilingualWarning)


def test_library_warnings_skip_library_frames():
    """A warning raised deep inside the library is attributed to the user's call."""
    corpus = tlm.Corpus.from_dict({"en": ["word " * 200], "fr": ["mot"]})
    lm = tlm.adapt(tlm.models.tiny("gpt2"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tlm.collect_stats(lm, corpus, max_length=16)
        line = _line_of("tlm.collect_stats(lm, corpus, max_length=16)")
    ours = [w for w in caught if "longer than" in str(w.message)]
    assert ours and all(w.filename == __file__ and w.lineno == line for w in ours)


def test_the_package_is_typed():
    assert (Path(tlm.__file__).parent / "py.typed").is_file()


def _line_of(snippet: str) -> int:
    lines = Path(__file__).read_text(encoding="utf-8").splitlines()
    return next(i for i, text in enumerate(lines, 1) if snippet in text and "_line_of" not in text)
