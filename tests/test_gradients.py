"""Gradients under torch.inference_mode.

``attribute(method="grad_x_act")`` worked under ``torch.no_grad()`` but failed under
``torch.inference_mode()`` with PyTorch's generic "does not require grad" error. It
now leaves inference mode for its computation (and makes its batch there, since
tensors made under inference mode cannot be saved for backward); a model whose own
weights are inference tensors gets a library error that says why.
"""

from __future__ import annotations

import pytest
import tiny
import torch

import tl_multilingual as tlm
from tl_multilingual.errors import GradientError

RECORDS = [
    {"id": "a", "text": {"en": "The cat sleeps on the", "fr": "Le chat dort sur le"}, "answer": {"en": " mat", "fr": " tapis"}},
    {"id": "b", "text": {"en": "We walked to the", "fr": "Nous avons marché au"}, "answer": {"en": " market", "fr": " marché"}},
]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_grad_x_act_is_the_same_under_inference_mode_and_no_grad(arch):
    lm = tlm.adapt(tiny.bridge(arch))
    items = tlm.ParallelItems.from_records(RECORDS)
    plain = tlm.attribute(lm, items, method="grad_x_act", progress=False)
    with torch.no_grad():
        no_grad = tlm.attribute(lm, items, method="grad_x_act", progress=False)
    with torch.inference_mode():
        inference = tlm.attribute(lm, items, method="grad_x_act", progress=False)
        assert torch.is_inference_mode_enabled()  # the caller's mode is restored
    assert plain.scores.abs().sum() > 0
    torch.testing.assert_close(no_grad.scores, plain.scores)
    torch.testing.assert_close(inference.scores, plain.scores)


def test_an_adapter_made_under_inference_mode_still_gives_gradients():
    model = tiny.bridge("qwen2")
    items = tlm.ParallelItems.from_records(RECORDS[:1])
    with torch.inference_mode():
        lm = tlm.adapt(model)
        inference = tlm.attribute(lm, items, method="grad_x_act", progress=False)
    torch.testing.assert_close(inference.scores, tlm.attribute(lm, items, method="grad_x_act", progress=False).scores)


def test_a_model_with_inference_weights_is_refused_with_the_reason():
    with torch.inference_mode():
        model = tiny.bridge("llama")
    lm = tlm.adapt(model)
    items = tlm.ParallelItems.from_records(RECORDS[:1])
    with pytest.raises(GradientError, match="inference tensors"):
        tlm.attribute(lm, items, method="grad_x_act", progress=False)
    assert issubclass(GradientError, tlm.TLMultilingualError)
    # The methods that need no gradients still work on it.
    assert torch.isfinite(tlm.attribute(lm, items, method="effective", progress=False).scores).all()


def test_adapter_gradients_block_for_your_own_gradient_computations():
    lm = tlm.adapt(tiny.bridge("llama"))
    with torch.inference_mode():
        with lm.gradients():
            batch = lm.pad(lm.tokenize(["The cat sleeps"]))  # made inside: not an inference tensor
            embed = lm.model.embed.W_E if hasattr(lm.model.embed, "W_E") else next(lm.model.parameters())
            loss = lm.call(batch)[0, -1].logsumexp(-1)
            (grad,) = torch.autograd.grad(loss, [embed])
        assert torch.is_inference_mode_enabled()
    assert grad.abs().sum() > 0
    with torch.inference_mode():
        outside = lm.pad(lm.tokenize(["The cat sleeps"]))  # an inference tensor
        with pytest.raises(GradientError, match="inference"), lm.gradients():
            loss = lm.call(outside)[0, -1].logsumexp(-1)
            torch.autograd.grad(loss, [embed])
