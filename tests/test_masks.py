"""NeuronMask: set algebra, counts, indices, layers, files."""

from __future__ import annotations

import pytest
import torch

import tl_multilingual as tlm


def mask(pairs, shape=(3, 5)):
    return tlm.NeuronMask.from_pairs(pairs, *shape)


def test_algebra_follows_set_semantics():
    a, b = mask([(0, 1), (1, 2), (2, 4)]), mask([(1, 2), (2, 0)])
    assert (a & b).indices().tolist() == [[1, 2]]
    assert (a | b).count() == 4
    assert (a - b).indices().tolist() == [[0, 1], [2, 4]]
    assert (a ^ b).count() == 3
    assert (~a).count() == 15 - 3
    assert a == mask([(2, 4), (0, 1), (1, 2)]) and a != b
    with pytest.raises(tlm.MaskError):
        a & mask([], shape=(3, 6))
    with pytest.raises(tlm.MaskError):
        a | torch.ones(3, 5, dtype=torch.bool)


def test_counts_indices_and_layers():
    a = mask([(0, 1), (0, 3), (2, 4)])
    assert a.per_layer().tolist() == [2, 0, 1]
    assert [t.tolist() for t in a.layer_indices()] == [[1, 3], [], [4]]
    assert a.restrict(range(1, 3)).indices().tolist() == [[2, 4]]
    assert a.restrict(slice(0, 1)).count() == 2
    assert a.to_frame().values.tolist() == [[0, 1], [0, 3], [2, 4]]
    assert tlm.NeuronMask.from_layer_indices([[1, 3], [], [4]], 5) == a
    with pytest.raises(tlm.MaskError):
        a.restrict([7])
    with pytest.raises(tlm.MaskError):
        tlm.NeuronMask.from_layer_indices([[5]], 5)


def test_random_masks_match_counts_per_layer_and_avoid_exclusions():
    base = mask([(0, 0), (0, 1), (2, 3)])
    rnd = tlm.NeuronMask.random(base.per_layer(), 5, seed=1, exclude=base)
    assert rnd.per_layer().tolist() == [2, 0, 1]
    assert (rnd & base).count() == 0
    assert rnd == tlm.NeuronMask.random(base.per_layer(), 5, seed=1, exclude=base)
    with pytest.raises(tlm.MaskError):
        tlm.NeuronMask.random([6], 5)


def test_only_boolean_grids_are_masks():
    with pytest.raises(tlm.MaskError):
        tlm.NeuronMask(torch.zeros(3))
    with pytest.raises(tlm.MaskError):
        tlm.NeuronMask(torch.full((2, 2), 0.5))
    assert tlm.NeuronMask(torch.tensor([[0, 1]])).count() == 1


def test_save_and_load(tmp_path):
    a = mask([(1, 1)])
    a.name = "example"
    a.save(tmp_path / "m")
    back = tlm.NeuronMask.load(tmp_path / "m")
    assert back == a and back.name == "example"


def test_one_parser_reads_class_variants():
    from tl_multilingual.neurons.masks import parse_variant

    assert parse_variant("specific+related") == ("specific", "related")
    assert parse_variant(" specific + related + specific ") == ("specific", "related")
    assert parse_variant("all_shared", ("all_shared", "specific")) == ("all_shared",)
    for bad in ("", "specific++related", "+specific"):
        with pytest.raises(tlm.MaskError, match="empty"):
            parse_variant(bad)
    with pytest.raises(tlm.MaskError, match="unknown class 'shared'"):
        parse_variant("specific+shared", ("specific", "related"))


def test_controls_are_distinct_random_sets_of_the_same_size_per_layer_outside_the_mask():
    hit = mask([(0, 0), (0, 1), (0, 2), (2, 3)], shape=(3, 40))
    controls = hit.controls(4, seed=7)
    assert len(controls) == 4
    for control in controls:
        assert control.per_layer().tolist() == [3, 0, 1]
        assert (control & hit).count() == 0  # drawn outside the mask
    assert (
        len({tuple(map(tuple, c.indices().tolist())) for c in controls}) == 4
    )  # each control its own draw
    again = hit.controls(4, seed=7)
    assert all(a == b for a, b in zip(controls, again))  # seeded
    other = hit.controls(4, seed=8)
    assert any(a != b for a, b in zip(controls, other))
    # Over many seeds every neuron outside the mask is drawn, about equally often.
    drawn = sum(c.tensor.long() for s in range(200) for c in hit.controls(1, seed=s))
    assert drawn[0, :3].sum() == 0 and (drawn[0, 3:] > 0).all()
    assert drawn[0, 3:].float().mean() == pytest.approx(200 * 3 / 37)
    with pytest.raises(tlm.MaskError, match="use controls=0"):
        mask([(1, j) for j in range(21)], shape=(3, 40)).controls(1)
    assert mask([(1, j) for j in range(21)], shape=(3, 40)).controls(0) == []
