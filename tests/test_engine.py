"""The experiment engine's loop and interval, on a model-free measurement whose every
call the test can account for."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

import tl_multilingual as tlm
from tl_multilingual import resample
from tl_multilingual.experiments.engine import control_seed, controlled_runs, paired_interval


def test_the_loop_measures_the_baseline_then_each_condition_and_its_controls():
    masks = {("a", 0): tlm.NeuronMask.from_pairs([(0, 1), (1, 2)], 2, 10),
             ("a", 1): tlm.NeuronMask.from_pairs([(1, 7)], 2, 10),
             ("b", 0): tlm.NeuronMask.empty(2, 10),
             ("b", 1): tlm.NeuronMask.from_pairs([(0, 0), (0, 9)], 2, 10)}
    edits, calls = [], []

    @contextmanager
    def intervene(key, mask):
        edits.append((key, mask))
        yield
        edits.pop()

    def measure(block):
        current = edits[-1] if edits else None
        if current is None:
            calls.append((block, None, None))
        else:
            calls.append((block, current[0], current[1].indices().tolist()))
        return len(calls)  # each measurement its own value

    conditions = {key: (lambda block, key=key: masks[(key, block)]) for key in ("a", "b")}
    runs = controlled_runs(conditions, measure, intervene, n_blocks=2, controls={"a": 2, "b": 1},
                           seed=5, progress=False)
    assert runs.baseline == [1, 2] and calls[:2] == [(0, None, None), (1, None, None)]
    a, b = runs.conditions["a"], runs.conditions["b"]
    assert a.sizes == [2, 1] and b.sizes == [0, 2]
    # a: block 0 hit and its two controls, then block 1 hit and its two controls
    assert a.hit == [3, 6] and a.controls == [[4, 7], [5, 8]]
    for block, start in ((0, 2), (1, 5)):
        expected = masks[("a", block)].controls(2, seed=control_seed(5, block))
        assert calls[start] == (block, "a", masks[("a", block)].indices().tolist())
        drawn = [c[2] for c in calls[start + 1 : start + 3]]
        assert drawn == [m.indices().tolist() for m in expected]
    # b: block 0's mask is empty, so its hit and control are the baseline, never measured
    assert b.hit == [1, 9] and b.controls == [[1, 10]]
    assert len(calls) == 10 and not edits  # every edit undone
    assert control_seed(5, 1) == 102


def test_an_edit_is_undone_when_a_measurement_under_it_fails():
    undone, calls = [], []

    @contextmanager
    def intervene(key, mask):
        try:
            yield
        finally:
            undone.append(key)

    def measure(block):
        calls.append(block)
        if len(calls) == 2:  # the baseline works, the edited model breaks
            raise RuntimeError("broken")
        return 0

    with pytest.raises(RuntimeError, match="broken"):
        controlled_runs({"x": lambda block: tlm.NeuronMask.from_pairs([(0, 0)], 1, 4)}, measure,
                        intervene, controls=0, progress=False)
    assert undone == ["x"]


def test_the_paired_interval_is_the_change_over_the_same_draws():
    rng = np.random.default_rng(0)
    baseline, hit = rng.normal(size=30), rng.normal(loc=0.5, size=30)
    draws = resample.draws(30, 500, 1)
    change, low, high = paired_interval(hit, baseline, draws, 0.9)
    replicates = (hit - baseline)[draws].mean(1)
    assert change == pytest.approx((hit - baseline).mean())
    assert (low, high) == pytest.approx(tuple(np.quantile(replicates, [0.05, 0.95])))

    # a ratio of sums (a perplexity's shape): rows are numerators and denominators per unit
    before = np.stack([rng.uniform(1, 2, 30), rng.integers(1, 5, 30)])
    after = np.stack([rng.uniform(1, 3, 30), rng.integers(1, 5, 30)])

    def ratio(values, index):
        return values[0][index].sum(-1) / values[1][index].sum(-1)

    change, low, high = paired_interval(after, before, draws, 0.9, ratio)
    assert change == pytest.approx(after[0].sum() / after[1].sum() - before[0].sum() / before[1].sum())
    by_hand = [after[0][d].sum() / after[1][d].sum() - before[0][d].sum() / before[1][d].sum()
               for d in draws]
    assert (low, high) == pytest.approx(tuple(np.quantile(by_hand, [0.05, 0.95])))
