"""The study report's rules, on numbers with known answers."""

from __future__ import annotations

from tl_multilingual.study.report import _hurt_most


def test_a_language_whose_own_perplexity_fell_is_not_hurt_most():
    # English in a real run: its own perplexity fell 1.45%, the others' median fell 1.70%.
    assert not _hurt_most(-0.0145, -0.0170)
    assert _hurt_most(0.20, 0.01)
    assert not _hurt_most(0.01, 0.05)
    assert not _hurt_most(0.0, -0.5)
