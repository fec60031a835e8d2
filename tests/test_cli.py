"""The tl-multilingual command on a tiny model: the whole study, resuming, and refusals."""

from __future__ import annotations

import importlib.metadata
import json

import pytest
import torch

import tl_multilingual as tlm
from tl_multilingual import cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    model, tokenizer = tlm.models.tiny_hf("llama", n_layers=4)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


FAST = ["--languages", "en,fr,zh", "--eval-texts", "2", "--controls", "1", "--quiet"]


def test_run_writes_the_whole_study_and_resumes(model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    assert cli.main(["run", "--model", str(model_dir), "--out", str(out), *FAST]) == 0
    for name in ("report.html", "manifest.json", "stages.json", "statistics/manifest.json",
                 "neurons/ternary/manifest.json", "neurons/lape/manifest.json", "lens/manifest.json",
                 "deactivation/cells.csv", "sharing/manifest.json", "tables/findings.json",
                 "figures/neuron_classes.png", "figures/neuron_classes.pdf", "figures/lens.png",
                 "figures/sharing_profile.png", "figures/deactivation_specific_related.png",
                 "stage_effects/cells.csv", "figures/stage_effects.png", "tables/stage_maps.csv"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["n_layers"] == 4 and manifest["data"]["languages"] == ["en", "fr", "zh"]
    assert set(manifest["steps"]) == {"statistics", "neurons", "lens", "stages", "deactivation", "stage_effects",
                                      "sharing", "report"}
    assert manifest["versions"]["transformer_lens"] == importlib.metadata.version("transformer-lens")
    corpus = tlm.data.parallel(["en", "fr", "zh"])
    assert manifest["data"]["fingerprint"] == corpus.fingerprint()
    assert manifest["data"]["texts"] == {lang: len(corpus[lang]) for lang in corpus.languages}
    for lang in corpus.languages:
        assert manifest["data"]["train_texts"][lang] + manifest["data"]["held_out_texts"][lang] == len(corpus[lang])
    # The saved results are those of this model on the training split.
    stats = tlm.ActivationStats.load(out / "statistics")
    assert stats.languages == ("en", "fr", "zh") and stats.model["n_layers"] == 4
    assert stats.corpus["texts"] == manifest["data"]["train_texts"]
    neurons = tlm.LanguageNeurons.load(out / "neurons" / "ternary")
    again = tlm.identify(stats, method="ternary", **{k: neurons.params[k] for k in ("top_rate", "bar_ratio")})
    assert neurons.lam == again.lam and torch.equal(neurons.membership, again.membership)
    html = (out / "report.html").read_text()
    assert "Findings" in html and "figures/lens.png" in html
    # Four layers admit one segmentation only: the report says the fit shows no four stages.
    assert "Cautions about the stage map" in html and "the only segmentation there is" in html
    assert "Causal evidence per stage" in html and "figures/stage_effects.png" in html
    assert "fewer than 10" in html  # two evaluation texts per language

    # A second run finds every step up to date and recomputes nothing.
    def refuse(*args, **kwargs):
        raise AssertionError("recomputed a step that was up to date")

    for name in ("collect_stats", "identify", "language_lens", "map_stages", "ablation_matrix", "stage_effects",
                 "sharing"):
        monkeypatch.setattr(f"tl_multilingual.study.{name}", refuse)
    messages = []
    monkeypatch.setattr("tl_multilingual.study.Study._say", lambda self, m: messages.append(m))
    assert cli.main(["run", "--model", str(model_dir), "--out", str(out), *FAST]) == 0
    assert sum("up to date" in m for m in messages) == 7


def test_changed_settings_recompute_only_what_depends_on_them(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "study"
    assert cli.main(["run", "--model", str(model_dir), "--out", str(out), *FAST]) == 0
    messages = []
    monkeypatch.setattr("tl_multilingual.study.Study._say", lambda self, m: messages.append(m))
    changed = ["--languages", "en,fr,zh", "--eval-texts", "2", "--controls", "2", "--quiet"]  # 1 control -> 2
    args = ["run", "--model", str(model_dir), "--out", str(out), *changed]
    assert cli.main(args) == 0
    reused = {m.split("]")[1].split(":")[0].strip() for m in messages if "up to date" in m}
    assert reused == {"statistics", "neurons", "lens", "stages", "sharing"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--model", "no-such-org/no-such-model"], "cannot load the model"),
        (["run", "--model", "MODEL", "--languages", "en"], "compares languages"),
        (["run", "--model", "MODEL", "--languages", "en,xx-unknown-code"], "unknown language"),
        (["run", "--model", "MODEL", "--corpus", "EMPTY"], "no texts"),
        (["run", "--model", "MODEL", "--corpus", "SINGLE"], "compares languages"),
    ],
)
def test_bad_input_gives_one_line_and_writes_nothing(model_dir, tmp_path, capsys, args, message):
    (tmp_path / "empty.json").write_text(json.dumps({"en": [], "fr": []}))
    (tmp_path / "single.json").write_text(json.dumps({"en": ["a text"] * 40}))
    args = [a.replace("MODEL", str(model_dir)).replace("EMPTY", str(tmp_path / "empty.json"))
            .replace("SINGLE", str(tmp_path / "single.json")) for a in args]
    out = tmp_path / "study"
    assert cli.main([*args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tl-multilingual: error:") and message in err
    assert not out.exists()


def test_unwritable_or_foreign_output_folders_are_refused(model_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli.main(["run", "--model", str(model_dir), "--out", str(blocker / "study"), *FAST]) == 2
    assert "cannot write" in capsys.readouterr().err
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("...")
    assert cli.main(["run", "--model", str(model_dir), "--out", str(foreign), *FAST]) == 2
    assert "holds no study" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["chapter1.tex"]
