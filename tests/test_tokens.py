"""From texts to padded batches: the counted span of every sequence lands on the same
tokens whichever side the batch is padded on."""

from __future__ import annotations

import pytest
import tiny
import torch

import tl_multilingual as tlm
from tl_multilingual.inputs.corpus import Text
from tl_multilingual.model.tokens import batches, counted_mask, encode


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("policy", ["all", "last", "response"])
def test_each_batchs_counted_positions_are_the_sequences_spans(side, policy):
    lm = tlm.adapt(tiny.bridge("llama"), padding_side=side)
    texts = [Text("The cat", "sleeps on the warm mat."),
             Text("Le chat dort sur le tapis", " chaud."),
             Text("We walked", " to the market in the morning."), Text("Numbers:", " 42.")]
    sequences = encode(lm, texts, policy=policy)
    seen = []
    for indices, batch in batches(lm, sequences, batch_size=3):
        counted = counted_mask([sequences[i] for i in indices], batch)
        assert batch.padding_side == side and counted.shape == batch.input_ids.shape
        width = batch.input_ids.shape[1]
        for row, i in enumerate(indices):
            seq = sequences[i]
            offset = width - len(seq.ids) if side == "left" else 0
            expected = torch.zeros(width, dtype=torch.bool)
            expected[offset + seq.start : offset + seq.stop] = True
            assert torch.equal(counted[row].cpu(), expected), (i, side, policy)
            real = batch.input_ids[row, offset : offset + len(seq.ids)].tolist()
            assert real == list(seq.ids)  # the counted positions hold the sequence's own tokens
        seen += indices
    assert sorted(seen) == list(range(len(sequences)))
