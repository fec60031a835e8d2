"""The tl-multilingual command on a tiny model: the whole study, resuming, and refusals."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest
import torch

import tl_multilingual as tlm
from tl_multilingual import cli, data
from tl_multilingual.study.pipeline import Study, StudySettings, check_study

FAST = ["--languages", "en,fr,zh", "--eval-texts", "2", "--controls", "1", "--quiet",
        "--allow-unsupported-stages"]  # a tiny random model's stages: run the stage experiment anyway


def small_corpus(folder, n=30, extra=None):
    """A parallel corpus of ``n`` real translations per language, as a JSON file."""
    corpus = data.parallel(["en", "fr", "zh"]).head(n)
    texts = {lang: [t.text for t in corpus[lang]] for lang in corpus.languages}
    path = folder / "corpus.json"
    path.write_text(json.dumps({**texts, **(extra or {})}, ensure_ascii=False), encoding="utf-8")
    return path


def test_run_writes_the_whole_study_and_resumes(model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    corpus = small_corpus(tmp_path)  # 30 texts per language: the held-out split follows the corpus
    assert cli.main(["run", "--model", str(model_dir), "--out", str(out), "--corpus", str(corpus), *FAST]) == 0
    for name in ("report.html", "manifest.json", "stages.json", "statistics/manifest.json",
                 "neurons/ternary/manifest.json", "neurons/lape/manifest.json", "lens/manifest.json",
                 "deactivation/cells.csv", "sharing/manifest.json", "tables/findings.json",
                 "figures/neuron_classes.png", "figures/neuron_classes.pdf", "figures/lens.png",
                 "figures/sharing_profile.png", "figures/deactivation_specific.png",
                 "stage_effects/cells.csv", "figures/stage_effects.png", "tables/stage_maps.csv"):
        assert (out / name).is_file(), name
    # A variant that selects exactly another's neurons (no related neuron found) is said to
    # be so and drawn once; otherwise it has its own heatmap.
    facts = json.loads((out / "tables" / "findings.json").read_text())
    neurons = tlm.LanguageNeurons.load(out / "neurons" / "ternary")
    if neurons.related().count() == 0:
        assert facts["same_variants"]["specific+related"] == "specific"
        assert not (out / "figures" / "deactivation_specific_related.png").exists()
        assert "are exactly the &#x27;specific&#x27; neurons" in (out / "report.html").read_text()
    else:
        assert "same_variants" not in facts
        assert (out / "figures" / "deactivation_specific_related.png").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["n_layers"] == 4 and manifest["data"]["languages"] == ["en", "fr", "zh"]
    assert set(manifest["steps"]) == {"statistics", "neurons", "lens", "stages", "deactivation", "stage_effects",
                                      "sharing", "report"}
    assert manifest["versions"]["transformer_lens"] == importlib.metadata.version("transformer-lens")
    written = tlm.data.parallel(["en", "fr", "zh"]).head(30)  # what small_corpus wrote
    assert manifest["data"]["fingerprint"] == written.fingerprint()
    assert manifest["data"]["texts"] == {lang: len(written[lang]) for lang in written.languages}
    for lang in written.languages:
        assert manifest["data"]["train_texts"][lang] + manifest["data"]["held_out_texts"][lang] == len(written[lang])
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

    for name in ("collect_stats", "identify", "language_lens", "map_stages", "deactivation_matrix", "stage_effects",
                 "sharing"):
        monkeypatch.setattr(f"tl_multilingual.study.steps.{name}", refuse)
    messages = []
    monkeypatch.setattr("tl_multilingual.study.pipeline.Study._say", lambda self, m: messages.append(m))
    assert cli.main(["run", "--model", str(model_dir), "--out", str(out), "--corpus", str(corpus), *FAST]) == 0
    assert sum("up to date" in m for m in messages) == 7
    assert manifest["data"]["held_out_texts"] == {"en": 6, "fr": 6, "zh": 6}


def test_changed_settings_recompute_only_what_depends_on_them(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "study"
    assert cli.main(["run", "--model", str(model_dir), "--out", str(out), *FAST]) == 0
    messages = []
    monkeypatch.setattr("tl_multilingual.study.pipeline.Study._say", lambda self, m: messages.append(m))
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
        (["run", "--model", "MODEL", "--corpus", "UNKNOWN"], "--languages en,fr"),
        (["run", "--model", "MODEL", "--corpus", "SMALL"], "--held-out"),
        (["run", "--model", "MODEL", "--corpus", "BLANK", "--languages", "en,fr"], "'fr' give no countable tokens"),
        (["run", "--model", "/no/such/folder"], "no model folder at /no/such/folder"),
        (["run", "--model", "./no-such-model"], "no model folder at"),
        (["run", "--model", "missing.gguf"], "no GGUF file at"),
        (["run", "--model", "MODEL", "--max-tokens-per-language", "-5"],
         "--max-tokens-per-language must be a positive number of tokens"),
        (["run", "--model", "MODEL", "--max-tokens-per-language", "0"],
         "--max-tokens-per-language must be a positive number of tokens (leave it out to read every token)"),
        (["run", "--model", "SHALLOW"], "cannot be studied: four stages need at least four layers, got 2"),
        (["run", "--model", "MODEL/config.json"], "config.json is a file, not a model"),
        (["run", "--model", "MODEL", "--device", "bogus"], "--device 'bogus' is not a torch device"),
        (["run", "--model", "MODEL", "--device", "cuda:7"], "--device cuda:7: this machine has"),
        (["run", "--model", "MODEL", "--device", "meta"], "--device meta holds no values"),
        (["run", "--model", "MODEL", "--languages", ",,,"], "--languages ',,,' names no language"),
        (["run", "--model", "MODEL", "--languages", "en,,fr"], "--languages 'en,,fr' has an empty entry"),
        (["run", "--model", "MODEL", "--languages", "en,fr,"], "--languages 'en,fr,' has an empty entry"),
        (["run", "--model", "MODEL", "--languages", "en,fr,en"], "names en more than once"),
        (["run", "--model", "MODEL", "--dist-timeout", "-1"], "--dist-timeout must be a positive"),
    ],
)
def test_bad_input_gives_one_line_and_writes_nothing(model_dir, tmp_path, capsys, args, message):
    (tmp_path / "empty.json").write_text(json.dumps({"en": [], "fr": []}))
    (tmp_path / "single.json").write_text(json.dumps({"en": ["a text"] * 40}))
    (tmp_path / "unknown.json").write_text(json.dumps({"en": ["a"] * 40, "fr": ["b"] * 40, "xx-unknown": ["c"] * 40}))
    (tmp_path / "small.json").write_text(json.dumps({"en": ["a"] * 40, "fr": ["b"] * 9}))
    (tmp_path / "blank.json").write_text(json.dumps({"en": ["a text"] * 40, "fr": [""] * 40}))
    files = {name.upper(): str(tmp_path / f"{name}.json") for name in ("empty", "single", "unknown", "small", "blank")}
    if "SHALLOW" in args:  # a two-layer model: too shallow for four stages
        model, tokenizer = tlm.models.tiny_hf("llama", n_layers=2)
        model.save_pretrained(tmp_path / "shallow")
        tokenizer.save_pretrained(tmp_path / "shallow")
        files["SHALLOW"] = str(tmp_path / "shallow")
    args = [files.get(a, a).replace("MODEL", str(model_dir)) for a in args]
    out = tmp_path / "study"
    assert cli.main([*args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tl-multilingual: error:") and message in err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["run", "--model", "m", "--out", "o", "--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
    (["run", "--model", "m", "--out", "o", "--held-out", "2.5"], "expected a fraction in (0, 1)"),
    (["run", "--model", "m", "--out", "o", "--batch-size", "many"], "argument --batch-size: invalid int value"),
    (["run", "--out", "o"], "the following arguments are required: --model"),
])
def test_argument_errors_are_one_line_with_where_to_look(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"tl-multilingual run: error: {err.split('error: ', 1)[1]}"]
    assert message in err and err.endswith("(see tl-multilingual run --help)")
    assert not (tmp_path / "o").exists()


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


def test_help_and_argument_errors_do_not_import_torch():
    code = ("import sys\nfrom tl_multilingual import cli\n"
            "for argv in (['--help'], ['run', '--out', 'x'], ['demo', '--help']):\n"
            "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'transformer_lens', 'transformers', 'pandas') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(cli.Path(cli.__file__).parents[1]))
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
    assert "--held-out" in result.stdout and "--controls" in result.stdout


def test_the_command_prints_warnings_as_its_own_lines_and_quiet_silences_loading_bars():
    """A warning is one ``tl-multilingual: warning:`` line, without the source line of
    the launcher; ``--quiet`` turns off huggingface_hub's and transformers' bars; the
    caller's warning format is restored afterwards."""
    code = ("import os, sys, warnings\nfrom pathlib import Path\nfrom tl_multilingual import cli, errors\n"
            "def run(args, argv):\n"
            "    errors.warn('the data contradict an assumption')\n"
            "    from transformers.utils import logging\n"
            "    print('BARS', logging.is_progress_bar_enabled(), os.environ.get('HF_HUB_DISABLE_PROGRESS_BARS'))\n"
            "    return Path('report.html')\n"
            "cli.run = run\n"
            "before = warnings.formatwarning\n"
            "code = cli.main(['run', '--model', 'm', '--out', 'o', *sys.argv[1:]])\n"
            "print('CODE', code, warnings.formatwarning is before)\n")
    root = str(cli.Path(cli.__file__).parents[1])
    for flags, bars in (([], "BARS True None"), (["--quiet"], "BARS False 1")):
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
        result = subprocess.run([sys.executable, "-c", code, *flags], capture_output=True, text=True, cwd=root,
                                env=env, timeout=600)
        assert "CODE 0 True" in result.stdout and bars in result.stdout, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert "tl-multilingual: warning: the data contradict an assumption" in lines, result.stderr
        assert "cli.main(" not in result.stderr and "errors.warn(" not in result.stderr


def test_lazy_package_keeps_every_name():
    import tl_multilingual.study.pipeline  # noqa: F401  (binds submodules named like functions)

    assert all(hasattr(tlm, name) for name in tlm.__all__)
    assert callable(tlm.sharing) and callable(tlm.identify) and callable(tlm.compare)
    assert set(tlm.__all__) <= set(dir(tlm))


def test_demo_and_run_share_the_study_flags():
    flags = ["--out", "x", "--controls", "2", "--eval-texts", "3", "--held-out", "0.3", "--languages", "en,fr"]
    demo = cli._parser().parse_args(["demo", *flags])
    run = cli._parser().parse_args(["run", "--model", "m", *flags])
    for args in (demo, run):
        settings = cli._settings(args, StudySettings())
        assert (settings.controls, settings.eval_texts, settings.held_out) == (2, 3, 0.3)
    assert cli._parser().parse_args(["demo", "--out", "x", "--held-out", "12"]).held_out == 12
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["demo", "--out", "x", "--held-out", "1.5"])


def test_unknown_codes_outside_the_selection_and_variant_codes(tmp_path):
    path = small_corpus(tmp_path, extra={"xx-unknown": ["texte"] * 30, "deu_1996": ["Satz"] * 30})
    said = []
    with pytest.warns(tlm.TLMultilingualWarning, match="deu_1996"):
        corpus = cli._corpus(str(path), ["en", "de"], said.append)
    assert corpus.languages == ("en", "de") and said == ["languages: deu_1996 -> de"]
    with pytest.raises(tlm.LanguageError, match="--languages en,fr,zh,de"), pytest.warns(tlm.TLMultilingualWarning):
        cli._corpus(str(path), None)


def test_a_study_checks_its_inputs_before_the_first_step(tmp_path):
    texts = {lang: [t.text for t in data.parallel([lang]).head(30)[lang]] for lang in ("en", "fr")}
    lm = tlm.adapt(tlm.models.tiny("gpt2"))
    unknown = tlm.Corpus.from_dict({**texts, "xx-local": texts["fr"]}, allow_unknown=True)
    with pytest.raises(tlm.LanguageError, match="xx-local"):
        Study(tmp_path / "a", lm, unknown)
    assert check_study(tlm.Corpus.from_dict(texts), StudySettings()) == 6  # 20% of 30, at least 5
    with pytest.raises(tlm.CorpusError, match="StudySettings.held_out"):
        check_study(tlm.Corpus.from_dict({k: v[:9] for k, v in texts.items()}), StudySettings())
    broken = tlm.Corpus.from_dict({"en": texts["en"], "fr": texts["fr"][:29] + ["\ud800"]})
    with pytest.raises(tlm.CorpusError, match="language 'fr', text"):
        Study(tmp_path / "b", lm, broken, StudySettings(held_out=5))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_report_is_rewritten_after_each_step(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "study"

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tl_multilingual.study.steps.deactivation_matrix", fail)
    corpus = small_corpus(tmp_path)
    assert cli.main(["run", "--model", str(model_dir), "--out", str(out), "--corpus", str(corpus), *FAST]) == 130
    html = (out / "report.html").read_text()
    assert "In progress" in html and "deactivation" in html and "Ternary identification" in html
    assert (out / "figures" / "neuron_classes.png").is_file()


def test_version_prints_the_version_without_importing_torch():
    code = ("import sys\nfrom tl_multilingual import cli\n"
            "try:\n    cli.main(['--version'])\nexcept SystemExit as exit:\n    print('EXIT', exit.code)\n"
            "print('HEAVY', [m for m in ('torch', 'transformer_lens') if m in sys.modules])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=str(cli.Path(cli.__file__).parents[1]))
    expected = importlib.metadata.version("tl-multilingual")
    assert f"tl-multilingual {expected}" in result.stdout, result.stdout + result.stderr
    assert "EXIT 0" in result.stdout and "HEAVY []" in result.stdout


def hub_error(name):
    import huggingface_hub

    cls = getattr(huggingface_hub.errors, name)
    response = type("Response", (), {"status_code": 404, "headers": {}, "url": "u", "request": None})
    try:
        return cls("404 Client Error", response=response)
    except TypeError:
        return cls("404 Client Error")


@pytest.mark.parametrize("failure, cached, message", [
    (lambda: hub_error("RepositoryNotFoundError"), False, "the Hub has no model 'org/typo'"),
    (lambda: ConnectionError("Name or service not known"), False,
     "the Hub cannot be reached (Name or service not known) and 'org/typo' is not in the local"),
])
def test_a_mistyped_or_unreachable_hub_model_fails_at_once(tmp_path, monkeypatch, capsys, failure,
                                                           cached, message):
    import huggingface_hub
    from transformer_lens.model_bridge import TransformerBridge

    asked = []

    def model_info(repo_id, **kwargs):
        asked.append((repo_id, kwargs.get("timeout")))
        raise failure()

    def boot(*args, **kwargs):  # the loader's own retries are never reached
        raise AssertionError("the model loader was called")

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(TransformerBridge, "boot_transformers", boot)
    out = tmp_path / "study"
    assert cli.main(["run", "--model", "org/typo", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tl-multilingual: error: cannot load the model 'org/typo': {message}" or (
        message in err and len(err.splitlines()) == 1), err
    assert len(asked) == 1 and asked[0][0] == "org/typo" and asked[0][1] is not None
    assert not out.exists()


def test_an_unreachable_hub_falls_back_to_the_cache(monkeypatch):
    import huggingface_hub

    from tl_multilingual.hub import check_model_name

    def unreachable(repo_id, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/cache/config.json")
    check_model_name("org/cached")  # no error: the loader reads the cache
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(tlm.HubError, match="not in the local Hugging Face cache"):
        check_model_name("org/cached")


def test_the_model_name_check_runs_in_a_fresh_process(tmp_path):
    """Nothing else has imported huggingface_hub's submodules there: an uncached name
    offline is the library's HubError, not an AttributeError from a lazy submodule."""
    import os
    import subprocess
    import sys

    code = ("from tl_multilingual.hub import _hub_errors, check_model_name\n"
            "print(sorted(e.__name__ for e in _hub_errors()))\n"
            "try:\n    check_model_name('org/never-cached')\n"
            "except Exception as err:\n    print(type(err).__name__)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    caught, raised = done.stdout.strip().splitlines()
    assert "HfHubHTTPError" in caught and "LocalEntryNotFoundError" in caught, caught
    assert raised == "HubError", done.stderr[-2000:]


def test_a_single_process_stopped_by_sigterm_is_not_told_of_other_ranks(model_dir, tmp_path,
                                                                        monkeypatch, capsys):
    import os
    import signal

    def terminate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr("tl_multilingual.study.steps.collect_stats", terminate)
    out = tmp_path / "study"
    code = cli.main(["run", "--model", str(model_dir), "--out", str(out),
                     "--corpus", str(small_corpus(tmp_path)), *FAST])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 143 and "rank" not in err, err
    assert err == ("tl-multilingual: stopped by a signal (SIGTERM); rerun the same command to "
                   "resume")
