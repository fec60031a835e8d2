"""Bad input and faults: impossible statistics, results used with another model,
foreign exceptions, damaged or edited files, interrupted saves. Each case is listed in
docs/reliability.md."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import tiny
import torch
from safetensors import SafetensorError

import tl_multilingual as tlm
from tl_multilingual import cli, persist
from tl_multilingual.stages.stage_map import StageMap
from tl_multilingual.study import report
from tl_multilingual.study.pipeline import Study, StudySettings, check_output_folder

GPT2 = {"name": "tiny-gpt2", "architecture": "GPT2LMHeadModel", "n_layers": 2, "d_mlp": 48}


def stats_of(model=None, *, layers=2, width=48, seed=0, languages=("en", "fr")):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.full((len(languages),), 50)
    active = torch.randint(0, 50, (layers, width, len(languages)), generator=gen)
    sums = torch.rand(layers, width, len(languages), generator=gen, dtype=torch.float64)
    return tlm.ActivationStats.from_counts(list(languages), tokens, active, sums=sums, sum_squares=sums,
                                           model=model)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def resign(folder: Path, edit) -> None:
    """Edit a saved manifest and recompute its checksum, as a buggy writer would."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    manifest["checksum"] = persist._digest(manifest)
    path.write_text(json.dumps(manifest))


# -- statistics that cannot be true ---------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", ["sums", "sum_squares"])
def test_non_finite_sums_are_refused_naming_array_and_language(name, bad):
    values = torch.ones(2, 4, 2, dtype=torch.float64)
    values[1, 2, 1] = bad
    kwargs = {"sums": torch.ones(2, 4, 2, dtype=torch.float64), "sum_squares": torch.ones(2, 4, 2, dtype=torch.float64)}
    kwargs[name] = values
    with pytest.raises(tlm.StatsError, match=rf"{name} holds NaN or infinite values \(fr: 1 entries\)"):
        tlm.ActivationStats(["en", "fr"], torch.tensor([10, 10]), torch.ones(2, 4, 2, dtype=torch.long), **kwargs)


def test_active_counts_above_the_token_count_are_refused():
    with pytest.raises(tlm.StatsError, match=r"exceed the token count .* en: 8, fr: 8 entries"):
        tlm.ActivationStats(["en", "fr"], torch.tensor([10, 10]), torch.full((2, 4, 2), 10**6))
    # On purpose (the reference files' known quirk) they are accepted, and saved as such.
    quirk = tlm.ActivationStats(["en", "fr"], torch.tensor([10, 10]), torch.full((2, 4, 2), 11),
                                allow_counts_above_tokens=True)
    assert quirk.allow_counts_above_tokens


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"token_counts": torch.tensor([10, -1])}, "token_counts are negative for fr: 1"),
        ({"token_counts": torch.tensor([10.0, 10.0])}, "token_counts must hold integer"),
        ({"active_counts": torch.ones(2, 4, 2, dtype=torch.bool)}, "active_counts must hold integer"),
        ({"sums": torch.ones(2, 4, 2, dtype=torch.long)}, "sums must be floating point"),
        ({"sums": torch.ones(2, 4, 3)}, "sums must have the shape"),
        ({"sum_squares": -torch.ones(2, 4, 2)}, "sum_squares has negative entries"),
        ({"threshold": float("nan")}, "threshold must be a finite number"),
        ({"token_policy": "every"}, "token_policy must be one of"),
        ({"active_counts": torch.ones(2, 4, 2, dtype=torch.long, device="meta")}, "meta device"),
        ({"languages": ["en", ""]}, "non-empty strings"),
    ],
)
def test_malformed_statistics_are_refused(kwargs, message):
    args = {"languages": ["en", "fr"], "token_counts": torch.tensor([10, 10]),
            "active_counts": torch.ones(2, 4, 2, dtype=torch.long)}
    args.update(kwargs)
    with pytest.raises(tlm.StatsError, match=message):
        tlm.ActivationStats(args.pop("languages"), args.pop("token_counts"), args.pop("active_counts"), **args)


def test_from_counts_refuses_non_finite_and_meta_counts():
    with pytest.raises(tlm.StatsError, match="NaN"):
        tlm.ActivationStats.from_counts(["en", "fr"], [10, 10], torch.full((2, 4, 2), float("nan")))
    with pytest.raises(tlm.StatsError, match="meta"):
        tlm.ActivationStats.from_counts(["en", "fr"], [10, 10], torch.ones(2, 4, 2, device="meta"))


def test_loading_impossible_statistics_is_refused(tmp_path):
    stats = stats_of()
    sums = stats.sums.clone()
    sums[0, 0, 0] = float("nan")
    tensors = {"token_counts": stats.tokens, "active_counts": stats.active_counts, "sums": sums}
    manifest = {"languages": ["en", "fr"], "token_counts": stats.token_counts, "shape": [2, 48, 2],
                "threshold": 0.0, "token_policy": "all", "include_bos": False}
    persist.write_result(tmp_path / "nan", kind="tl_multilingual.ActivationStats", tensors=tensors, manifest=manifest)
    with pytest.raises(tlm.StatsError, match="sums holds NaN"):
        tlm.ActivationStats.load(tmp_path / "nan")
    tensors = {"token_counts": torch.tensor([1, 1]), "active_counts": stats.active_counts}
    manifest["token_counts"] = {"en": 1, "fr": 1}
    persist.write_result(tmp_path / "above", kind="tl_multilingual.ActivationStats", tensors=tensors, manifest=manifest)
    with pytest.raises(tlm.StatsError, match="exceed the token count"):
        tlm.ActivationStats.load(tmp_path / "above")


def test_quirky_reference_statistics_survive_a_round_trip(tmp_path):
    torch.save({"total_tokens": 10, "over_zero": torch.tensor([[3, 12], [0, 2]])}, tmp_path / "en.pt")
    torch.save({"total_tokens": 10, "over_zero": torch.tensor([[3, 5], [0, 2]])}, tmp_path / "fr.pt")
    stats = tlm.ActivationStats.from_reference_files({"en": tmp_path / "en.pt", "fr": tmp_path / "fr.pt"})
    assert stats.allow_counts_above_tokens and stats.notes["counts_above_tokens"] == 1
    stats.save(tmp_path / "saved")
    assert tlm.ActivationStats.load(tmp_path / "saved").allow_counts_above_tokens
    clipped = tlm.ActivationStats.from_reference_files({"en": tmp_path / "en.pt"}, clip_to_tokens=True)
    assert not clipped.allow_counts_above_tokens


# -- results are used only with what produced them --------------------------------------------


@pytest.fixture(scope="module")
def llama():
    return tlm.adapt(tiny.bridge("llama"))  # 2 layers x 48 neurons, like GPT2 above


def test_statistics_of_another_model_are_refused_by_steer_and_ablate(llama):
    assert (llama.n_layers, llama.d_mlp) == (GPT2["n_layers"], GPT2["d_mlp"])
    foreign = stats_of(GPT2)
    mask = tlm.NeuronMask.full(2, 48)
    with pytest.raises(tlm.StatsError, match="different models"):
        tlm.steer(llama, mask, to="fr", stats=foreign)
    with pytest.raises(tlm.StatsError, match="allow_mismatch=True"):
        tlm.ablate(llama, mask, value="mean", stats=foreign)
    with pytest.raises(tlm.StatsError, match="shape"):
        tlm.steer(llama, mask, to="fr", stats=stats_of(layers=3), allow_mismatch=True)
    # On purpose, the same statistics are accepted.
    with tlm.steer(llama, mask, to="fr", stats=foreign, allow_mismatch=True):
        pass
    with tlm.ablate(llama, mask, value="mean", stats=foreign, allow_mismatch=True):
        pass
    own = stats_of({"name": llama.name, "architecture": llama.architecture, "n_layers": 2, "d_mlp": 48})
    with tlm.steer(llama, mask, to="fr", stats=own):
        pass


def test_masks_and_neurons_of_another_model_are_refused(llama):
    neurons = tlm.identify(stats_of(GPT2), top_rate=0.1)
    mask = neurons.language("en") | neurons.language("fr")
    assert mask.model["name"] == "tiny-gpt2"
    for verb in (lambda: tlm.ablate(llama, mask), lambda: tlm.boost(llama, mask),
                 lambda: tlm.patch(llama, mask, torch.zeros(2, 48)),
                 lambda: tlm.intervene(llama, [tlm.Edit(mask, "scale", 0.0)])):
        with pytest.raises(tlm.MaskError, match="different models"):
            verb()
    with tlm.ablate(llama, mask, allow_mismatch=True):
        pass
    corpus = tlm.Corpus.from_dict({"en": ["The cat sleeps."], "fr": ["Le chat dort."]})
    with pytest.raises(tlm.IdentificationError, match="different models"):
        tlm.deactivation_matrix(llama, neurons, corpus, controls=0, progress=False)
    with pytest.raises(tlm.MaskError, match="different models"):
        tlm.patch_neurons(llama, source=["a"], target=["b"], mask=mask, controls=0)


def test_a_saved_mask_keeps_its_model(tmp_path, llama):
    mask = tlm.identify(stats_of(GPT2), top_rate=0.1).language("en")
    mask.save(tmp_path / "mask")
    with pytest.raises(tlm.MaskError, match="different models"):
        tlm.ablate(llama, tlm.NeuronMask.load(tmp_path / "mask"))


def test_a_stage_map_of_another_layer_count_is_refused():
    lm = tlm.adapt(tiny.bridge("llama", n_layers=4))
    evidence = [{"layer": i} for i in range(5)]
    stage_map = StageMap.from_dict({"n_layers": 5, "boundaries": [1, 2, 3], "evidence": evidence, "d_mlp": lm.d_mlp})
    with pytest.raises(tlm.MaskError, match="shape"):
        tlm.ablate(lm, stage_map.mask("understanding"))
    with pytest.raises(tlm.MaskError):
        tlm.NeuronMask.full(4, lm.d_mlp) & stage_map.mask("understanding")
    with pytest.raises(tlm.TLMultilingualError, match="outside"):
        tlm.ablate(lm, tlm.NeuronMask.full(4, lm.d_mlp), layers=stage_map.layers("vocabulary_output"))


def test_stage_map_files_are_validated(tmp_path):
    good = {"n_layers": 5, "boundaries": [1, 2, 3], "evidence": [{}] * 5}
    for edit, message in ((dict(boundaries=[3, 2, 1]), "boundaries"), (dict(n_layers="5"), "n_layers"),
                          (dict(d_mlp=-1), "d_mlp"), (dict(evidence=[]), "evidence")):
        (tmp_path / "map.json").write_text(json.dumps({**good, **edit}))
        with pytest.raises(tlm.TLMultilingualError, match=message):
            StageMap.load(tmp_path / "map.json")


def test_edited_manifests_are_caught_by_the_checksum(tmp_path):
    stats = stats_of()
    stats.save(tmp_path / "stats")
    path = tmp_path / "stats" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["languages"] = ["fr", "en"]  # relabel the language axis
    manifest["token_counts"] = {"fr": 50, "en": 50}
    path.write_text(json.dumps(manifest))
    with pytest.raises(tlm.SaveError, match="edited or damaged"):
        tlm.ActivationStats.load(tmp_path / "stats")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(threshold="0"), "'threshold' must be a finite number"),
        (lambda m: m.update(token_policy="every"), "'token_policy' must be one of"),
        (lambda m: m.update(languages=["en", "en"]), "'languages' must be a list of distinct"),
        (lambda m: m.update(languages=["en", "fr", "de"]), "manifest states"),
        (lambda m: m.update(shape=[2, "48", 2]), "'shape' must be"),
        (lambda m: m.update(include_bos="no"), "'include_bos' must be bool"),
        (lambda m: m.update(model=["x"]), "'model' must be dict"),
        (lambda m: m.pop("threshold"), "lacks the field 'threshold'"),
        (lambda m: m.update(token_counts={"fr": 50, "en": 50}), "'token_counts' must be"),
    ],
)
def test_every_statistics_manifest_field_is_validated(tmp_path, edit, message):
    stats_of().save(tmp_path / "stats")
    resign(tmp_path / "stats", edit)
    with pytest.raises(tlm.SaveError, match=message):
        tlm.ActivationStats.load(tmp_path / "stats")


def test_neuron_mask_and_sharing_manifests_are_validated(tmp_path):
    neurons = tlm.identify(stats_of(GPT2), top_rate=0.1)
    neurons.save(tmp_path / "neurons")
    resign(tmp_path / "neurons", lambda m: m.update(languages=["en", "fr", "de"]))
    with pytest.raises(tlm.SaveError, match="membership"):
        tlm.LanguageNeurons.load(tmp_path / "neurons")
    neurons.save(tmp_path / "neurons2")
    resign(tmp_path / "neurons2", lambda m: m.update(lam="high"))
    with pytest.raises(tlm.SaveError, match="'lam'"):
        tlm.LanguageNeurons.load(tmp_path / "neurons2")
    tlm.NeuronMask.empty(2, 3).save(tmp_path / "mask")
    resign(tmp_path / "mask", lambda m: m.update(name=7))
    with pytest.raises(tlm.SaveError, match="'name'"):
        tlm.NeuronMask.load(tmp_path / "mask")
    codes = torch.zeros(1, 2, 3, dtype=torch.uint8)
    tlm.Sharing(("en", "fr"), ["q1"], codes, 0.0, "last").save(tmp_path / "sharing")
    resign(tmp_path / "sharing", lambda m: m.update(position="first"))
    with pytest.raises(tlm.SaveError, match="'position'"):
        tlm.Sharing.load(tmp_path / "sharing")
    tlm.Sharing(("en", "fr"), ["q1"], codes | 4, 0.0, "last").save(tmp_path / "sharing2")
    with pytest.raises(tlm.SaveError, match="bitmasks"):
        tlm.Sharing.load(tmp_path / "sharing2")


# -- the library's own errors ----------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned",))


@pytest.fixture
def bad_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04not a torch file at all")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_Evil()))
    zipped = tmp_path / "evil-zip.pt"
    torch.save({"over_zero": _Evil()}, zipped)
    return [junk, evil, zipped]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_junk_or_pickles_given_to_reference_loaders_raise_library_errors(bad_files, tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"total_tokens": 10, "over_zero": torch.zeros(2, 3, dtype=torch.long)}, good)
    for bad in bad_files:
        for call in (lambda bad=bad: tlm.ActivationStats.from_reference_files({"en": bad}),
                     lambda bad=bad: tlm.ActivationStats.from_reference_files({"en": good}, prefix={"en": bad})):
            with pytest.raises(tlm.StatsError, match="cannot read reference file") as info:
                call()
            assert info.value.__cause__ is not None
        with pytest.raises(tlm.IdentificationError, match="cannot read reference mask file") as info:
            tlm.LanguageNeurons.from_reference_format(bad, ["en"])
        assert info.value.__cause__ is not None


def test_a_full_disk_during_save_raises_save_error_and_keeps_the_previous_save(tmp_path, monkeypatch):
    first = stats_of(seed=1)
    first.save(tmp_path / "run")

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(persist, "save_file", full)
    with pytest.raises(tlm.SaveError, match="No space left") as info:
        stats_of(seed=2).save(tmp_path / "run")
    assert isinstance(info.value.__cause__, SafetensorError)
    monkeypatch.undo()
    assert torch.equal(tlm.ActivationStats.load(tmp_path / "run").active_counts, first.active_counts)
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_a_model_on_the_meta_device_is_refused():
    model = tiny.bridge("gpt2").to("meta")
    with pytest.raises(tlm.UnsupportedModelError, match="meta device"):
        tlm.adapt(model)


def test_exit_without_enter_is_a_library_error(llama):
    interventions = tlm.ablate(llama, tlm.NeuronMask.empty(2, 48))
    with pytest.raises(tlm.TLMultilingualError, match="never entered"):
        interventions.__exit__(None, None, None)


# -- files: nothing half-written, nothing stranded --------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if persist.is_temporary(p))


def test_a_kill_between_the_two_renames_never_hides_the_only_good_copy(tmp_path):
    pid = dead_pid()
    old, new = stats_of(seed=1), stats_of(seed=2)
    old.save(tmp_path / "run")
    new.save(tmp_path / "next")
    # The state a save killed between its renames leaves: the old version moved aside,
    # the new one complete in its staging folder, no target.
    (tmp_path / "run").rename(tmp_path / f".run.old-{pid}-aaaa")
    (tmp_path / "next").rename(tmp_path / f".run.tmp-{pid}-bbbb")
    assert torch.equal(tlm.ActivationStats.load(tmp_path / "run").active_counts, new.active_counts)
    assert _leftovers(tmp_path) == []
    # Killed while the new version was still being written: the old one comes back.
    (tmp_path / "run").rename(tmp_path / f".run.old-{pid}-cccc")
    staging = tmp_path / f".run.tmp-{pid}-dddd"
    staging.mkdir()
    (staging / "tensors.safetensors").write_bytes(b"half")
    assert torch.equal(tlm.ActivationStats.load(tmp_path / "run").active_counts, new.active_counts)
    (tmp_path / "run").rename(tmp_path / f".run.old-{pid}-eeee")
    old.save(tmp_path / "other")
    (tmp_path / "other").rename(tmp_path / f".run.tmp-{pid}-ffff")
    stats_of(seed=3).save(tmp_path / "run")  # the next save recovers first, then replaces
    assert _leftovers(tmp_path) == []


def test_stray_staging_of_dead_processes_is_removed_by_the_next_save(tmp_path):
    pid = dead_pid()
    stats_of().save(tmp_path / "run")
    for name in (f".run.tmp-{pid}-1234", ".run.tmp-abcd1234", f".run.old-{pid}-5678"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tensors.safetensors").write_bytes(b"x" * 100)
    live = tmp_path / f".run.tmp-{os.getppid()}-9999"  # a save in progress elsewhere: left alone
    live.mkdir()
    (tmp_path / f".notes.txt.tmp-{pid}-1111").write_text("half")
    stats_of(seed=1).save(tmp_path / "run")
    assert _leftovers(tmp_path) == sorted([live.name, f".notes.txt.tmp-{pid}-1111"])
    persist.write_text(tmp_path / "notes.txt", "done")
    assert _leftovers(tmp_path) == [live.name]


def test_a_study_folder_with_only_a_stray_temporary_manifest_is_resumed(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / f".manifest.json.tmp-{dead_pid()}-abcd").write_text('{"kind": "tl_multi')
    check_output_folder(out, command="run")  # refused before


def test_a_corrupt_study_manifest_is_reported(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "manifest.json").write_text('{"kind": "tl_multilingual.Study", "steps": {')
    (out / "statistics").mkdir()
    check_output_folder(out, command="run")  # a study's own folder: resumable
    corpus = tlm.Corpus.from_dict({"en": ["a", "b", "c"], "fr": ["d", "e", "f"]})
    with pytest.warns(tlm.TLMultilingualWarning, match=r"manifest.json is corrupt"):
        Study(out, tiny.bridge("gpt2"), corpus, StudySettings(held_out=1, min_train_texts=2))
    (out / "thesis.tex").write_text("draft")
    with pytest.raises(tlm.TLMultilingualError, match="corrupt"):
        check_output_folder(out, command="run")


def test_run_refuses_a_folder_holding_a_saved_result(tmp_path, capsys):
    stats_of().save(tmp_path / "stats")
    before = (tmp_path / "stats" / "manifest.json").read_text()
    assert cli.main(["run", "--model", "unused", "--out", str(tmp_path / "stats"), "--quiet"]) == 2
    assert "not a study" in capsys.readouterr().err
    assert (tmp_path / "stats" / "manifest.json").read_text() == before
    tlm.ActivationStats.load(tmp_path / "stats")
    study = tmp_path / "demo-study"
    study.mkdir()
    (study / "manifest.json").write_text(json.dumps({"kind": "tl_multilingual.Study",
                                                     "command": ["tl-multilingual", "demo"]}))
    assert cli.main(["run", "--model", "unused", "--out", str(study), "--quiet"]) == 2
    assert "tl-multilingual demo" in capsys.readouterr().err


def test_every_value_in_the_report_is_escaped(tmp_path, monkeypatch):
    attack = "<script>alert(1)</script>"
    manifest = {"model": {"name": attack, "architecture": attack, "n_layers": attack, "d_mlp": attack},
                "data": {"languages": ["en", attack], "fingerprint": attack}, "command": [attack],
                "versions": {"tl_multilingual": attack, "transformer_lens": attack},
                "steps": {attack: {"seconds": attack}}}
    stages = StageMap.from_dict({"n_layers": 4, "boundaries": [1, 2, 3], "evidence": [{}] * 4})
    facts = {"lambda": 0.1, "selected": 1, "specific": 1, "related": 0, "general": 0,
             "languages_without_specific": [attack], "language_neurons_by_quarter": {"first": 1, "middle": 1, "last": 1},
             "stages": {"understanding": [0, 0]}, "stage_warnings": [attack],
             "deactivation": {"variant": attack, "own_above_others_median": 1, "languages": 2, "own_above_control": 0,
                              "texts_per_language": attack, "few_texts": True}}
    monkeypatch.setattr(report, "_load", lambda folder: {"manifest": manifest, "stages": stages})
    monkeypatch.setattr(report, "_tables", lambda results, folder: {"neurons_per_language": pd.DataFrame({"x": [attack]})})
    monkeypatch.setattr(report, "_figures", lambda results, folder: {"neuron_classes": attack,
                                                                     "neurons_per_language": attack})
    monkeypatch.setattr(report, "findings", lambda results: facts)
    text = report.write_report(tmp_path).read_text()
    assert "<script>alert" not in text and "&lt;script&gt;" in text


# -- fault injection: SIGKILL at every step of a save ------------------------------------------


def _save_and_die(
    target: Path, version: int, kill_at: int | None, half_written: bool, report_to: int
) -> None:
    """The child: save ``version`` of ``target``, reporting every file-system step of the
    save (folder made, tensors written, manifest written, fsync, rename, removal) before
    it runs, and kill itself (SIGKILL) instead of running step number ``kill_at``. With
    ``half_written``, it kills itself once the tensor file holds half its bytes."""
    import pathlib
    import shutil

    def say(line: str) -> None:
        os.write(report_to, f"{line}\n".encode())

    try:
        torch.set_num_threads(1)
        done = []

        def counted(name, fn):
            def step(*args, **kwargs):
                if len(done) == kill_at:
                    say(f"kill {name}")
                    os.kill(os.getpid(), signal.SIGKILL)
                done.append(name)
                say(name)
                return fn(*args, **kwargs)

            return step

        def half(fn):
            def write(tensors, path, *args, **kwargs):
                fn(tensors, path, *args, **kwargs)
                size = os.path.getsize(path)
                os.truncate(path, size // 2)
                say("kill halfway through the tensors")
                os.kill(os.getpid(), signal.SIGKILL)

            return write

        pathlib.Path.mkdir = counted("mkdir", pathlib.Path.mkdir)
        pathlib.Path.write_text = counted("write manifest", pathlib.Path.write_text)
        pathlib.Path.rename = counted("rename", pathlib.Path.rename)
        shutil.rmtree = counted("remove", shutil.rmtree)
        persist._fsync = counted("fsync", persist._fsync)
        write = half(persist.save_file) if half_written else persist.save_file
        persist.save_file = counted("write tensors", write)
        tensors = {"x": torch.full((1 << 16,), float(version))}
        persist.write_result(target, kind="test", tensors=tensors,
                             manifest={"version": version})
        say("saved")
    finally:
        os._exit(0)


def _run_save(
    target: Path, version: int, kill_at: int | None, half_written: bool = False
) -> list[str]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _save_and_die(target, version, kill_at, half_written, write)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        return pipe.read().splitlines()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_at_every_step_of_a_save_leaves_no_wrong_or_stranded_save(tmp_path):
    """Each kill point is a counted step of the save, not a moment: the test checks the
    same points on any machine, however fast or loaded."""
    target = tmp_path / "result"
    zero = {"x": torch.full((1 << 16,), 0.0)}
    persist.write_result(target, kind="test", tensors=zero, manifest={"version": 0})
    complete = _run_save(target, 1, None)  # a save that runs to the end: its steps, in order
    assert complete[-1] == "saved" and complete.count("rename") == 2, complete
    steps = complete[:-1]
    moved_aside = steps.index("rename")  # the previous version leaves the target's name here
    persist.read_result(target, kind="test")
    plans = [(k, False) for k in range(len(steps))] + [(steps.index("write tensors"), True)]
    version, stranded = 1, 0
    for kill_at, half_written in plans:
        lines = _run_save(target, version + 1, kill_at, half_written)
        assert lines[-1].startswith("kill") and lines[:-1] == steps[: len(lines) - 1], lines
        killed_at = len(lines) - 1  # steps that ran before the kill
        stranded += len(_leftovers(tmp_path))
        tensors, manifest = persist.read_result(target, kind="test")  # recovers first
        # The new version is in place once the previous one has moved aside with the new
        # one complete; before that the previous version stays.
        expected = version + 1 if killed_at > moved_aside and not half_written else version
        assert manifest["version"] == expected, (lines, manifest["version"])
        assert torch.equal(tensors["x"], torch.full((1 << 16,), float(expected)))
        assert _leftovers(tmp_path) == []  # the load cleaned up
        version = expected
    assert stranded >= len(steps) - 2  # kills left temporary siblings; loads removed them
    persist.write_result(target, kind="test", tensors={"x": torch.zeros(4)}, manifest={"version": -1})
    assert sorted(os.listdir(tmp_path)) == ["result"]
    assert persist.read_result(target, kind="test")[1]["version"] == -1



# -- nothing a file says about itself switches a check off ------------------------------


@pytest.mark.parametrize("downgrade", [lambda m: m.update(format_version=1),
                                       lambda m: m.update(format_version=-1),
                                       lambda m: m.pop("format_version"),
                                       lambda m: m.update(format_version=None),
                                       lambda m: m.update(format_version=True),
                                       lambda m: m.update(format_version=2.0)])
def test_a_downgraded_format_version_never_skips_the_manifest_checksum(tmp_path, downgrade):
    stats_of(languages=("en", "zh")).save(tmp_path / "stats")
    path = tmp_path / "stats" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["languages"] = ["zh", "en"]
    manifest["token_counts"] = {"zh": 50, "en": 50}
    downgrade(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(tlm.SaveError, match="format_version|format 1|format -1"):
        tlm.ActivationStats.load(tmp_path / "stats")


def test_an_intact_manifest_of_an_older_format_is_refused_not_trusted(tmp_path):
    stats_of().save(tmp_path / "stats")
    resign(tmp_path / "stats", lambda m: m.update(format_version=1))  # checksum recomputed
    with pytest.raises(tlm.SaveError, match="format 1 is not a format this version reads"):
        tlm.ActivationStats.load(tmp_path / "stats")


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_json_is_a_library_error_everywhere(tmp_path):
    stats_of().save(tmp_path / "stats")
    (tmp_path / "stats" / "manifest.json").write_text(deep(100_000))
    with pytest.raises(tlm.SaveError, match="corrupt or unreadable: it nests"):
        tlm.ActivationStats.load(tmp_path / "stats")
    (tmp_path / "corpus.json").write_text('{"en": ' + deep(100_000) + "}")
    with pytest.raises(tlm.CorpusError, match="cannot be read: it nests arrays or objects deeper than the 100"):
        tlm.Corpus.from_json(tmp_path / "corpus.json")
    (tmp_path / "corpus.jsonl").write_text('{"language": "en", "text": "a"}\n' + deep(5000) + "\n")
    with pytest.raises(tlm.CorpusError, match="line 2 cannot be read: it nests"):
        tlm.Corpus.from_json(tmp_path / "corpus.jsonl")
    (tmp_path / "items.jsonl").write_text(deep(150))  # decodable, but deeper than the limit
    with pytest.raises(tlm.CorpusError, match="line 1 cannot be read: it nests arrays or objects deeper than the 100"):
        tlm.ParallelItems.from_jsonl(tmp_path / "items.jsonl")
    (tmp_path / "map.json").write_text(deep(100_000))
    with pytest.raises(tlm.TLMultilingualError, match="not a saved stage map"):
        StageMap.load(tmp_path / "map.json")
    study = tmp_path / "study"
    study.mkdir()
    (study / "manifest.json").write_text(deep(100_000))
    with pytest.raises(tlm.SaveError, match="corrupt"):
        tlm.StudyFolder.load(study)


def test_json_nesting_up_to_the_limit_is_read(tmp_path):
    (tmp_path / "ok.json").write_text(deep(persist.MAX_JSON_DEPTH))
    value = persist.read_json(tmp_path / "ok.json")
    depth = 0
    while value is not None:
        depth, value = depth + 1, (value[0] if value else None)
    assert depth == persist.MAX_JSON_DEPTH
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe")
    with pytest.raises(tlm.CorpusError, match="is not valid JSON"):
        persist.read_json(tmp_path / "bad.json", error=tlm.CorpusError)
    with pytest.raises(tlm.SaveError, match="cannot read"):
        persist.read_json(tmp_path / "missing.json")


def test_the_command_turns_a_deeply_nested_corpus_into_one_line(tmp_path, capsys):
    (tmp_path / "corpus.json").write_text(deep(100_000))
    code = cli.main(["run", "--model", "unused", "--corpus", str(tmp_path / "corpus.json"),
                     "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "nests arrays or objects" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


STUDY_SETTINGS = StudySettings(held_out=4, min_held_out=4, min_train_texts=5, eval_texts=2,
                               controls=1, n_boot=10, sharing_items=3, lens_pairs=1, lens_words=4,
                               stage_words=2, top_rate=0.05, variants=("specific",))


def study_of(out, model, **kwargs):
    return Study(out, model, tlm.data.parallel(["en", "fr", "zh"]).head(12), STUDY_SETTINGS,
                 words=tlm.data.words(["en", "fr", "zh"]), quiet=True, **kwargs)


@pytest.fixture(scope="module")
def llama4():
    return tlm.models.tiny("llama", n_layers=4)


@pytest.mark.parametrize("shape", [{"steps": []}, {"steps": {"statistics": 3}},
                                   {"steps": {"statistics": {"key": 5}}}, {"data": []},
                                   {"command": "run"}, {"command": [1]}, {"model": "gpt2"},
                                   {"settings": [1]}])
def test_a_study_manifest_of_the_wrong_shape_is_reported_as_corrupt(tmp_path, shape, llama4):
    out = tmp_path / "study"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"kind": "tl_multilingual.Study", **shape}))
    check_output_folder(out, command="run")
    with pytest.raises(tlm.SaveError, match="not the manifest of a study"):
        tlm.StudyFolder.load(out)
    with pytest.warns(tlm.TLMultilingualWarning, match="manifest.json is corrupt"):
        study_of(out, llama4)


def test_a_study_resumes_over_a_manifest_of_the_wrong_shape(tmp_path, llama4):
    out = tmp_path / "study"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"kind": "tl_multilingual.Study", "steps": []}))
    with pytest.warns(tlm.TLMultilingualWarning, match="manifest.json is corrupt"):
        study = study_of(out, llama4)
    study.run()  # crashed with AttributeError before
    steps = json.loads((out / "manifest.json").read_text())["steps"]
    assert {"statistics", "deactivation", "report"} <= set(steps)


# -- a study killed inside a long step resumes where it stopped ---------------------------

KILLER = Path(__file__).with_name("study_kill.py")
# What each long step saves, compared byte for byte with an uninterrupted study.
OUTPUTS = {"statistics": ["statistics/tensors.safetensors"],
           "deactivation": ["deactivation/cells.csv", "deactivation/controls.csv"],
           "stage_effects": ["stage_effects/cells.csv", "stage_effects/lens.csv"]}


def study_process(out, step, kill_at):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(tlm.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(KILLER), str(out), step, str(kill_at)],
                          capture_output=True, text=True, env=env, timeout=1800)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """An uninterrupted study and the units of work of each long step."""
    out = tmp_path_factory.mktemp("whole") / "study"
    done = study_process(out, "statistics", 0)
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("step", list(OUTPUTS))
def test_a_study_killed_inside_a_long_step_resumes_there_with_the_same_results(
        tmp_path, uninterrupted, step):
    reference, counts = uninterrupted
    total = counts[step]
    kill_at = total - 1  # inside the step, after work that was saved
    out = tmp_path / "study"
    killed = study_process(out, step, kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert step not in json.loads((out / "manifest.json").read_text()).get("steps", {})
    resumed = study_process(out, step, 0)
    assert resumed.returncode == 0, resumed.stderr
    redone = json.loads(resumed.stdout.strip().splitlines()[-1])[step]
    # Statistics are saved every 2 batches; every finished run of an experiment is saved.
    saved = (kill_at - 1) // 2 * 2 if step == "statistics" else kill_at - 1
    assert redone == total - saved and redone < total
    for name in OUTPUTS[step]:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not (out / "checkpoints").exists()
