"""ActivationStats: construction, merging, saving and refusing bad data."""

from __future__ import annotations

import json
import os

import pytest
import torch

import tl_multilingual as tlm
from tl_multilingual import persist


def make(languages=("en", "fr"), *, seed=0, layers=3, width=8, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(20, 50, (len(languages),), generator=gen)
    active = (torch.rand(layers, width, len(languages), generator=gen) * tokens).long()
    sums = torch.rand(layers, width, len(languages), generator=gen, dtype=torch.float64)
    return tlm.ActivationStats.from_counts(
        list(languages), tokens, active, sums=sums, sum_squares=sums * 2, **kwargs
    )


def test_from_counts_and_probabilities():
    active = torch.tensor([[[1, 2], [0, 4]]])
    stats = tlm.ActivationStats.from_counts(["English", "fra"], {"en": 2, "fr": 4}, active)
    assert stats.languages == ("en", "fr")
    assert stats.token_counts == {"en": 2, "fr": 4}
    torch.testing.assert_close(stats.probabilities(), torch.tensor([[[0.5, 0.5], [0.0, 1.0]]], dtype=torch.float64))
    assert stats.n_layers == 1 and stats.d_mlp == 2
    frame = stats.to_frame()
    assert list(frame["language"]) == ["en", "fr"]
    assert frame["tokens"].tolist() == [2, 4]
    assert frame["mean_probability"].tolist() == pytest.approx([0.25, 0.75])
    long = stats.to_frame(per_neuron=True)
    assert len(long) == 4 and set(long.columns) >= {"layer", "neuron", "language", "probability"}
    rows = {(r.layer, r.neuron, r.language): r.probability for r in long.itertuples()}
    assert rows == pytest.approx({(0, 0, "en"): 0.5, (0, 0, "fr"): 0.5, (0, 1, "en"): 0.0, (0, 1, "fr"): 1.0})


def test_means_and_variances_from_sums():
    """Activations en: neuron 0 saw 1 and 3, neuron 1 saw 0 and 2; fr: 2, 2, 2 and -1, 0, 1."""
    sums = torch.tensor([[[4.0, 6.0], [2.0, 0.0]]], dtype=torch.float64)
    squares = torch.tensor([[[10.0, 12.0], [4.0, 2.0]]], dtype=torch.float64)
    stats = tlm.ActivationStats.from_counts(["en", "fr"], [2, 3], torch.zeros(1, 2, 2, dtype=torch.long),
                                            sums=sums, sum_squares=squares)
    assert stats.means().tolist() == [[[2.0, 2.0], [1.0, 0.0]]]
    torch.testing.assert_close(stats.variances(), torch.tensor([[[1.0, 0.0], [1.0, 2 / 3]]], dtype=torch.float64))
    picked = stats.select(["fr"])
    assert picked.means().tolist() == [[[2.0], [0.0]]]
    torch.testing.assert_close(picked.variances(), torch.tensor([[[0.0], [2 / 3]]], dtype=torch.float64))


@pytest.mark.parametrize(
    "active, tokens",
    [
        (torch.zeros(2, 3), [1, 1]),  # not 3-D
        (torch.zeros(2, 3, 3, dtype=torch.long), [1, 1]),  # wrong language axis
        (torch.full((2, 3, 2), -1), [1, 1]),  # negative
        (torch.full((2, 3, 2), 0.5), [1, 1]),  # fractional
        (torch.zeros(2, 3, 2, dtype=torch.long), [1, 1, 1]),  # token count per language
    ],
)
def test_bad_counts_are_refused(active, tokens):
    with pytest.raises(tlm.StatsError):
        tlm.ActivationStats.from_counts(["en", "fr"], tokens, active)


def test_means_need_sums():
    stats = tlm.ActivationStats.from_counts(["en", "fr"], [1, 1], torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(tlm.StatsError, match="sums"):
        stats.means()


def test_addition_sums_everything_and_refuses_mismatches():
    a, b = make(seed=1), make(seed=2)
    c = a + b
    assert torch.equal(c.active_counts, a.active_counts + b.active_counts)
    assert torch.equal(c.tokens, a.tokens + b.tokens)
    torch.testing.assert_close(c.sums, a.sums + b.sums)
    torch.testing.assert_close(c.sum_squares, a.sum_squares + b.sum_squares)
    with pytest.raises(tlm.StatsError, match="languages"):
        a + make(("en", "de"))
    with pytest.raises(tlm.StatsError, match="shape"):
        a + make(width=9)
    with pytest.raises(tlm.StatsError, match="token_policy"):
        a + make(seed=2, token_policy="last")
    with pytest.raises(tlm.StatsError, match="threshold"):
        a + make(seed=2, threshold=0.1)
    with pytest.raises(tlm.StatsError, match="different models"):
        make(model={"name": "x"}) + make(model={"name": "y"})


def test_select_reorders_languages():
    stats = make(("en", "fr", "zh"))
    picked = stats.select(["zh", "en"])
    assert picked.languages == ("zh", "en")
    assert torch.equal(picked.active_counts[..., 0], stats.active_counts[..., 2])
    assert torch.equal(picked.active_counts[..., 1], stats.active_counts[..., 0])
    assert picked.token_counts == {"zh": stats.token_counts["zh"], "en": stats.token_counts["en"]}
    assert torch.equal(picked.sums, stats.sums[..., [2, 0]])
    assert torch.equal(picked.sum_squares, stats.sum_squares[..., [2, 0]])


def test_save_and_load_round_trip(tmp_path):
    stats = make(model={"name": "tiny", "n_layers": 3, "d_mlp": 8}, corpus={"fingerprint": "abc"})
    stats.save(tmp_path / "run")
    back = tlm.ActivationStats.load(tmp_path / "run")
    assert back.languages == stats.languages
    assert torch.equal(back.active_counts, stats.active_counts)
    assert torch.equal(back.sums, stats.sums)
    assert back.model["name"] == "tiny" and back.corpus["fingerprint"] == "abc"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["kind"] == "tl_multilingual.ActivationStats"
    assert manifest["versions"]["transformer_lens"]
    # Saving again over a previous save replaces it.
    make(seed=5).save(tmp_path / "run")
    assert not torch.equal(tlm.ActivationStats.load(tmp_path / "run").active_counts, stats.active_counts)


def test_corrupt_or_foreign_files_are_refused(tmp_path):
    make().save(tmp_path / "run")
    data = (tmp_path / "run" / "tensors.safetensors").read_bytes()
    (tmp_path / "run" / "tensors.safetensors").write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(tlm.SaveError, match="checksum"):
        tlm.ActivationStats.load(tmp_path / "run")
    with pytest.raises(tlm.SaveError):
        tlm.ActivationStats.load(tmp_path / "nothing-here")
    tlm.NeuronMask.empty(2, 3).save(tmp_path / "mask")
    with pytest.raises(tlm.SaveError, match="NeuronMask"):
        tlm.ActivationStats.load(tmp_path / "mask")
    make().save(tmp_path / "edited")
    manifest_path = tmp_path / "edited" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shape"] = [9, 9, 9]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(tlm.SaveError, match="checksum"):  # the manifest is covered by its checksum
        tlm.ActivationStats.load(tmp_path / "edited")


def test_a_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    stats = make()
    target = tmp_path / "deep" / "er" / "run"

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(persist, "save_file", broken)
    with pytest.raises(tlm.SaveError, match="disk full"):
        stats.save(target)
    assert os.listdir(tmp_path) == []
    # A failure while replacing an earlier save keeps the earlier save intact.
    monkeypatch.undo()
    stats.save(tmp_path / "run")
    monkeypatch.setattr(persist, "save_file", broken)
    with pytest.raises(tlm.SaveError):
        make(seed=9).save(tmp_path / "run")
    assert sorted(os.listdir(tmp_path)) == ["run"]
    assert torch.equal(tlm.ActivationStats.load(tmp_path / "run").active_counts, stats.active_counts)


def test_refuses_to_overwrite_foreign_folders(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "paper.tex").write_text("draft")
    with pytest.raises(tlm.SaveError, match="not a saved result"):
        make().save(tmp_path / "notes")
    assert (tmp_path / "notes" / "paper.tex").read_text() == "draft"


def test_reference_files_full_and_prefix(tmp_path):
    full_counts = torch.tensor([[3, 5], [0, 2]])
    prefix_counts = torch.tensor([[1, 6], [0, 1]])
    for name, n, counts in (("full", 10, full_counts), ("prefix", 4, prefix_counts)):
        torch.save({"total_tokens": n, "over_zero": counts}, tmp_path / f"{name}.pt")
    torch.save({"n": 7, "over_zero": full_counts}, tmp_path / "lape.pt")
    stats = tlm.ActivationStats.from_reference_files(
        full={"en": tmp_path / "full.pt"}, prefix={"en": tmp_path / "prefix.pt"}
    )
    assert stats.token_counts == {"en": 6}
    assert stats.active_counts[..., 0].tolist() == [[2, 0], [0, 1]]
    assert stats.notes["clamped_negative_differences"] == 1
    assert stats.token_policy == "response"
    lape = tlm.ActivationStats.from_reference_files(full={"zh": tmp_path / "lape.pt"})
    assert lape.token_counts == {"zh": 7}
    with pytest.raises(tlm.StatsError):
        tlm.ActivationStats.from_reference_files(full={"en": tmp_path / "missing.pt"})


def test_redraw_is_a_binomial_replicate():
    stats = make(layers=4, width=50)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([stats.redraw(gen).active_counts for _ in range(200)]).double()
    assert (draws <= stats.tokens.double()).all() and (draws >= 0).all()
    torch.testing.assert_close(draws.mean(0), stats.active_counts.double(), atol=2.5, rtol=0.1)
    # Binomial spread, not a copy of the counts: variance n p (1 - p), pooled over neurons.
    p = stats.probabilities()
    expected = (stats.tokens.double() * p * (1 - p)).mean()
    assert draws.var(0).mean().item() == pytest.approx(expected.item(), rel=0.1)
    assert stats.redraw(torch.Generator().manual_seed(1)).token_counts == stats.token_counts


def test_counts_only_statistics_added_to_collected_ones_keep_no_partial_sums():
    """Sums over part of the tokens divided by all of them would give means that are too
    low: a sum known for one side only is dropped, and means then refuse clearly."""
    collected = make(seed=1)
    counts_only = tlm.ActivationStats.from_counts(
        ["en", "fr"], collected.tokens, collected.active_counts
    )
    for total in (
        collected + counts_only,
        counts_only + collected,
        tlm.ActivationStats.merge([collected, counts_only]),
    ):
        assert torch.equal(total.tokens, 2 * collected.tokens)
        assert torch.equal(total.active_counts, 2 * collected.active_counts)
        assert total.sums is None and total.sum_squares is None
        with pytest.raises(tlm.StatsError, match="no sums"):
            total.means()
    both = collected + collected
    torch.testing.assert_close(
        both.means(), collected.means()
    )  # the same texts twice: the same means
    torch.testing.assert_close(both.variances(), collected.variances())
