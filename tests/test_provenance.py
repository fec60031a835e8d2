"""The one compatibility rule between a model and a result, or two results: which
fields must agree, which may differ on purpose, and what is never compared."""

from __future__ import annotations

import hashlib

import pytest
import tiny
import torch

import tl_multilingual as tlm
from tl_multilingual.errors import MaskError, StatsError
from tl_multilingual.provenance import (
    MODEL_FIELDS,
    OVERRIDABLE,
    check_compatible,
    check_fits,
    model_record,
    record_of,
)

A = {"name": "org/base", "architecture": "LlamaForCausalLM", "shape": (4, 48)}


def test_the_record_holds_name_architecture_weights_and_shape():
    assert model_record({"name": "m", "architecture": "X", "weights": "ab", "extra": 1}, 4, 48) == {
        "name": "m",
        "architecture": "X",
        "weights": "ab",
        "shape": (4, 48),
    }
    assert model_record(None, 2, 8) == {"name": None, "architecture": None, "weights": None,
                                        "shape": (2, 8)}
    assert MODEL_FIELDS == ("shape", "name", "architecture", "weights") and OVERRIDABLE == (
        "name",
        "architecture",
        "weights",
    )


def test_equal_records_pass_and_unknown_fields_are_not_compared():
    check_compatible(A, dict(A))
    check_compatible(A, {"name": None, "shape": (4, 48)})  # architecture unknown on one side
    check_compatible(A, {"shape": (None, 48)})  # a side may know only some dimensions
    check_compatible(
        {"languages": ["en", "fr"]}, {"languages": ("en", "fr")}, fields=("languages",)
    )


@pytest.mark.parametrize(
    "field, value", [("name", "org/other"), ("architecture", "GPT2LMHeadModel")]
)
def test_another_model_is_refused_unless_allowed(field, value):
    other = {**A, field: value}
    with pytest.raises(tlm.TLMultilingualError, match=f"different models \\({field}:") as caught:
        check_compatible(A, other, labels=("the model", "the mask"))
    assert "allow_mismatch=True" in str(caught.value) and "the mask" in str(caught.value)
    check_compatible(A, other, allow_mismatch=True)
    check_compatible(
        A, other, fields=tuple(f for f in MODEL_FIELDS if f != field)
    )  # not asked: not compared


@pytest.mark.parametrize("shape", [(4, 64), (5, 48), (None, 64), (4, None, 1)])
def test_a_different_shape_is_refused_even_with_allow_mismatch(shape):
    with pytest.raises(StatsError, match="differ in shape"):
        check_compatible(A, {**A, "shape": shape}, error=StatsError, allow_mismatch=True)


@pytest.mark.parametrize(
    "field, x, y",
    [
        ("languages", ("en", "fr"), ("fr", "en")),
        ("threshold", 0.0, 0.1),
        ("token_policy", "all", "last"),
        ("include_bos", False, True),
    ],
)
def test_settings_must_agree_and_cannot_be_overridden(field, x, y):
    with pytest.raises(tlm.TLMultilingualError, match=f"differ in {field}"):
        check_compatible({field: x}, {field: y}, fields=(field,), allow_mismatch=True)


def test_the_error_class_is_the_callers():
    with pytest.raises(MaskError):
        check_compatible(A, {**A, "name": "b"}, error=MaskError)


def test_check_fits_compares_a_model_with_a_result():
    lm = tlm.adapt(tiny.bridge("llama"))
    record = record_of(lm)
    assert record["shape"] == (lm.n_layers, lm.d_mlp) and record["name"] == lm.describe().get(
        "name"
    )
    mine = tlm.NeuronMask.empty(lm.n_layers, lm.d_mlp)
    mine.model = {"name": record["name"], "architecture": record["architecture"]}
    check_fits(lm, mine, what="the mask", error=MaskError)
    foreign = tlm.NeuronMask.empty(lm.n_layers, lm.d_mlp)
    foreign.model = {"name": "org/another-model", "architecture": record["architecture"]}
    with pytest.raises(MaskError, match="the model and the mask come from different models"):
        check_fits(lm, foreign, what="the mask", error=MaskError)
    check_fits(lm, foreign, what="the mask", error=MaskError, allow_mismatch=True)
    wrong = tlm.NeuronMask.empty(lm.n_layers, lm.d_mlp + 1)
    with pytest.raises(MaskError, match="differ in shape"):
        check_fits(lm, wrong, what="the mask", error=MaskError, allow_mismatch=True)


def stats(
    name: str, architecture: str, *, include_bos: bool = False, sums: bool = False
) -> tlm.ActivationStats:
    counts = torch.tensor([[[1, 2], [3, 0]]])
    extra = {
        "sums": torch.ones(1, 2, 2, dtype=torch.float64),
        "sum_squares": torch.ones(1, 2, 2, dtype=torch.float64),
    }
    return tlm.ActivationStats(
        ("en", "fr"),
        torch.tensor([5, 5]),
        counts,
        include_bos=include_bos,
        model={"name": name, "architecture": architecture},
        **(extra if sums else {}),
    )


def test_statistics_of_another_architecture_are_refused_even_across_checkpoints():
    base = stats("org/base", "LlamaForCausalLM")
    tuned = stats("org/base-aligned", "LlamaForCausalLM")
    base.check_compatible(tuned, same_model=False)  # a fine-tuned checkpoint: another name
    with pytest.raises(StatsError, match="different models \\(name"):
        base.check_compatible(tuned)
    other = stats("org/other", "MistralForCausalLM")  # same shape, another architecture
    with pytest.raises(StatsError, match="architecture"):
        base.check_compatible(other, same_model=False)
    with pytest.raises(StatsError, match="architecture"):
        tlm.compare(base, other)
    assert tlm.compare(base, tuned, lam=0.0, top_rate=0.5).labels == ("before", "after")


def test_shards_counted_with_and_without_bos_are_not_merged():
    with pytest.raises(StatsError, match="include_bos"):
        tlm.ActivationStats.merge(
            [stats("m", "A", include_bos=True), stats("m", "A", include_bos=False)]
        )
    with pytest.raises(StatsError, match="include_bos"):
        stats("m", "A", include_bos=True) + stats("m", "A")


# -- the weights ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints():
    """Two checkpoints of one tiny model: the same name and shape, other weights."""
    return tlm.models.tiny("llama", seed=0), tlm.models.tiny("llama", seed=1)


def test_the_weight_fingerprint_reads_fixed_slices_of_every_parameter(checkpoints):
    import copy
    import hashlib

    from tl_multilingual.provenance import SLICES, weight_fingerprint

    model, other = checkpoints
    digest = hashlib.sha256()  # the rule written out: shape, then SLICES evenly spaced values
    for p in model.parameters():
        flat = p.detach().reshape(-1)
        digest.update(str(tuple(p.shape)).encode())
        n = flat.numel()
        at = [round(i * (n - 1) / (SLICES - 1)) for i in range(SLICES)] if n >= SLICES else range(n)
        values = torch.stack([flat[i] for i in at]).to(torch.bfloat16).float()
        digest.update(values.numpy().tobytes())
    assert weight_fingerprint(model) == digest.hexdigest()[:16]
    assert tlm.adapt(model).describe()["weights"] == weight_fingerprint(model)
    assert weight_fingerprint(copy.deepcopy(model)) == weight_fingerprint(model)
    assert weight_fingerprint(other) != weight_fingerprint(model)
    half = copy.deepcopy(model).to(torch.bfloat16)  # the same checkpoint in another precision
    assert weight_fingerprint(half) == digest.hexdigest()[:16]
    assert weight_fingerprint(torch.nn.Module()) is None


def collected(model):
    corpus = tlm.Corpus.from_dict({"en": ["the cat sat on the mat"] * 3,
                                   "fr": ["le chat est sur le tapis"] * 3})
    return tlm.collect_stats(model, corpus, progress=False)


def test_statistics_of_another_checkpoint_with_the_same_name_and_shape_are_refused(tmp_path,
                                                                                   checkpoints):
    base, other = checkpoints
    mine, theirs = collected(base), collected(other)
    assert mine.model["name"] == theirs.model["name"]
    assert mine.active_counts.shape == theirs.active_counts.shape
    with pytest.raises(StatsError, match=r"different weights .* \(weight fingerprints"):
        mine + theirs
    mask = tlm.NeuronMask.empty(*mine.active_counts.shape[:2])  # a mask of no model
    with pytest.raises(StatsError, match="allow_mismatch=True"):
        with tlm.steer(other, mask, stats=mine, to="en"):
            pass
    with tlm.steer(other, mask, stats=mine, to="en", allow_mismatch=True):
        pass
    mine.save(tmp_path / "stats")  # the fingerprint is saved with the statistics
    loaded = tlm.ActivationStats.load(tmp_path / "stats")
    assert loaded.model["weights"] == mine.model["weights"]
    with pytest.raises(StatsError, match="different weights"):
        loaded + theirs
    assert (mine + collected(base)).token_counts == {k: 2 * v for k, v in mine.token_counts.items()}
    neurons = tlm.identify(mine, method="lape", top_rate=0.2)
    with pytest.raises(tlm.MaskError, match="different weights"):
        with tlm.ablate(other, neurons.mask("language", "en")):
            pass


def test_the_weight_fingerprint_reads_tensors_beyond_float32s_exact_integers():
    """An embedding of more than 2**24 values (a 262k vocabulary) is read at the
    positions of the rule, the last value included, with no index past the end."""
    from tl_multilingual.provenance import SLICES, weight_fingerprint

    n = 2**24 + 3
    module = torch.nn.Module()
    module.big = torch.nn.Parameter(torch.arange(n, dtype=torch.float32), requires_grad=False)
    at = [round(i * (n - 1) / (SLICES - 1)) for i in range(SLICES)]
    assert at[-1] == n - 1
    digest = hashlib.sha256()
    digest.update(str((n,)).encode())
    digest.update(torch.tensor([float(i) for i in at]).to(torch.bfloat16).float().numpy().tobytes())
    assert weight_fingerprint(module) == digest.hexdigest()[:16]
