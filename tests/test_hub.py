"""Sharing results on the Hugging Face Hub, offline: pushes are recorded at the network
boundary (the ``HfApi`` calls), loads read a repository laid out in a local Hugging Face
cache, as ``snapshot_download`` leaves it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import require

import tl_multilingual as tlm
from tl_multilingual import hub
from tl_multilingual.errors import HubError, SaveError
from tl_multilingual.stages.stage_map import StageMap
from tl_multilingual.study.folder import StudyFolder

huggingface_hub = require("huggingface_hub")

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


@pytest.fixture(scope="module")
def results():
    """Statistics of a tiny model on a small corpus, and its ternary and LAPE neurons."""
    model = tlm.models.tiny("llama", n_layers=2)
    corpus = tlm.Corpus.from_dict(
        {lang: texts * 3 for lang, texts in tlm.models.SAMPLE_TEXT.items()}
    )
    stats = tlm.collect_stats(model, corpus, progress=False)
    ternary = tlm.identify(stats, method="ternary", top_rate=0.05)
    lape = tlm.identify(stats, method="lape", top_rate=0.05)
    return {"model": model, "corpus": corpus, "stats": stats, "ternary": ternary, "lape": lape}


class Recorder:
    """Stands in for the Hub: records what each ``HfApi`` call would send."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, dict]] = []
        self.uploads: list[Path] = []

    def install(self, monkeypatch) -> Recorder:
        recorder = self

        def create_repo(api, repo_id, **kwargs):
            recorder.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
            return f"https://huggingface.co/{repo_id}"

        def create_branch(api, repo_id, **kwargs):
            recorder.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

        def upload_folder(api, **kwargs):
            recorder.calls.append(("upload_folder", kwargs))
            copy = recorder.root / f"upload-{len(recorder.uploads)}"
            shutil.copytree(
                kwargs["folder_path"], copy
            )  # the folder is temporary: keep what was sent
            recorder.uploads.append(copy)
            return f"https://huggingface.co/{kwargs['repo_id']}/commit/{COMMIT_A}"

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
        return self


def cache_repo(
    cache: Path, repo_id: str, files: Path, commit: str, refs: tuple[str, ...] = ("main",)
) -> Path:
    """Lay ``files`` out as the snapshot ``commit`` of ``repo_id`` in a Hugging Face cache
    (``models--user--name/{refs,snapshots}``), with each ref pointing at it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(files, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def files_of(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_a_pushed_neuron_set_holds_its_saved_files_and_a_card(results, tmp_path, monkeypatch):
    neurons, stats = results["ternary"], results["stats"]
    recorder = Recorder(tmp_path).install(monkeypatch)
    neurons.push_to_hub("someone/tiny-llama-neurons", private=True, tags=["demo"])

    names = [name for name, _ in recorder.calls]
    assert names == ["create_repo", "upload_folder"]
    assert recorder.calls[0][1]["private"] is True and recorder.calls[0][1]["exist_ok"] is True
    upload = recorder.calls[1][1]
    assert upload["repo_id"] == "someone/tiny-llama-neurons" and upload["delete_patterns"] == "*"
    sent = recorder.uploads[0]
    local = neurons.save(tmp_path / "local")
    assert files_of(sent) == files_of(local) | {"README.md"}
    assert (sent / "tensors.safetensors").read_bytes() == (
        local / "tensors.safetensors"
    ).read_bytes()
    mine, theirs = (json.loads((p / "manifest.json").read_text()) for p in (sent, local))
    for manifest in (mine, theirs):
        for volatile in ("created", "checksum"):
            manifest.pop(volatile)
    assert mine == theirs

    card = huggingface_hub.ModelCard.load(sent / "README.md")
    assert card.data.library_name == "tl-multilingual"
    assert {"tl-multilingual", "transformer-lens", "neuron-classes", "demo"} <= set(card.data.tags)
    assert card.data.language == list(stats.languages)  # en, fr, de, zh, ru: ISO 639-1 already
    record = card.data.to_dict()["tl_multilingual"]
    assert record["kind"] == "tl_multilingual.LanguageNeurons"
    assert (
        record["model"] == stats.model["name"]
        and record["architecture"] == stats.model["architecture"]
    )
    assert record["corpus_fingerprints"] == [results["corpus"].fingerprint()]
    assert record["languages"] == list(stats.languages)
    text = card.text
    recipe = json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert recipe["method"] == "ternary" and recipe["lam"] == neurons.recipe["lam"]
    assert recipe["top_rate"] == 0.05
    assert "tlm.LanguageNeurons.from_pretrained('someone/tiny-llama-neurons')" in text
    assert "@software{tl_multilingual" in text and "zhang2026alignment" in text
    assert "tang2024language" not in text  # LAPE is not what produced these neurons


def test_the_card_cites_the_method_and_pins_the_revision(results, tmp_path, monkeypatch):
    recorder = Recorder(tmp_path).install(monkeypatch)
    results["lape"].push_to_hub(
        "someone/lape", revision="v1", base_model="org/tiny", base_model_revision="0123abc"
    )
    assert [name for name, _ in recorder.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert recorder.calls[1][1]["branch"] == "v1" and recorder.calls[2][1]["revision"] == "v1"
    card = huggingface_hub.ModelCard.load(recorder.uploads[0] / "README.md")
    assert card.data.base_model == "org/tiny"
    assert card.data.to_dict()["tl_multilingual"]["model_revision"] == "0123abc"
    assert "tang2024language" in card.text and "zhang2026alignment" not in card.text
    assert "from_pretrained('someone/lape', revision='v1')" in card.text


def test_a_pushed_repository_loads_back_by_name_from_the_cache(results, tmp_path, monkeypatch):
    neurons = results["ternary"]
    recorder = Recorder(tmp_path).install(monkeypatch)
    neurons.push_to_hub("someone/neurons")
    cache = tmp_path / "hub-cache"
    cache_repo(cache, "someone/neurons", recorder.uploads[0], COMMIT_A)

    loaded = tlm.LanguageNeurons.from_pretrained(
        "someone/neurons", cache_dir=cache, local_files_only=True
    )
    assert torch.equal(loaded.membership, neurons.membership)
    assert loaded.recipe == neurons.recipe and loaded.languages == neurons.languages
    assert loaded.provenance == neurons.provenance
    # The default cache is HF_HUB_CACHE, as for every Hugging Face download.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    again = tlm.LanguageNeurons.from_pretrained("someone/neurons", local_files_only=True)
    assert torch.equal(again.membership, neurons.membership)


def test_a_revision_can_be_pinned(results, tmp_path, monkeypatch):
    recorder = Recorder(tmp_path).install(monkeypatch)
    first = results["ternary"].mask("specific")
    second = results["ternary"].mask("general")
    assert first != second
    first.push_to_hub("someone/mask")
    second.push_to_hub("someone/mask")
    cache = tmp_path / "hub-cache"
    cache_repo(cache, "someone/mask", recorder.uploads[0], COMMIT_A, refs=("v1",))
    cache_repo(cache, "someone/mask", recorder.uploads[1], COMMIT_B, refs=("main",))

    load = tlm.NeuronMask.from_pretrained
    assert load("someone/mask", cache_dir=cache, local_files_only=True) == second
    assert load("someone/mask", revision=COMMIT_A, cache_dir=cache, local_files_only=True) == first
    assert load("someone/mask", revision="v1", cache_dir=cache, local_files_only=True) == first
    with pytest.raises(HubError, match="not in the local Hugging Face cache"):
        load("someone/mask", revision="v2", cache_dir=cache, local_files_only=True)


def test_statistics_and_a_stage_map_round_trip(results, tmp_path, monkeypatch):
    stats = results["stats"]
    recorder = Recorder(tmp_path).install(monkeypatch)
    stats.push_to_hub("someone/stats")
    stage_map = StageMap.from_boundaries(8, (2, 4, 6), d_mlp=48)
    hub.push_to_hub(stage_map, "someone/stages")
    assert files_of(recorder.uploads[1]) == {"stage_map.json", "README.md"}
    cache = tmp_path / "hub-cache"
    cache_repo(cache, "someone/stats", recorder.uploads[0], COMMIT_A)
    cache_repo(cache, "someone/stages", recorder.uploads[1], COMMIT_A)

    loaded = tlm.ActivationStats.from_pretrained(
        "someone/stats", cache_dir=cache, local_files_only=True
    )
    assert torch.equal(loaded.active_counts, stats.active_counts) and torch.equal(
        loaded.sums, stats.sums
    )
    assert loaded.provenance == stats.provenance and loaded.corpus == stats.corpus
    card = huggingface_hub.ModelCard.load(recorder.uploads[0] / "README.md")
    assert "activation-statistics" in card.data.tags
    assert card.data.to_dict()["tl_multilingual"]["corpus_fingerprints"] == [
        results["corpus"].fingerprint()
    ]

    stages = hub.from_pretrained(StageMap, "someone/stages", cache_dir=cache, local_files_only=True)
    assert stages.boundaries == (2, 4, 6) and stages.d_mlp == 48
    # A local folder (a downloaded repository, or a local save) loads the same way.
    assert hub.from_pretrained(StageMap, recorder.uploads[1]).boundaries == (2, 4, 6)


def test_loading_checks_the_files_as_a_local_load_does(results, tmp_path, monkeypatch):
    recorder = Recorder(tmp_path).install(monkeypatch)
    results["ternary"].push_to_hub("someone/neurons")
    cache = tmp_path / "hub-cache"
    snapshot = cache_repo(cache, "someone/neurons", recorder.uploads[0], COMMIT_A)
    manifest = json.loads((snapshot / "manifest.json").read_text())
    manifest["languages"] = list(reversed(manifest["languages"]))  # what the tensors mean, edited
    (snapshot / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SaveError, match="does not match its checksum"):
        tlm.LanguageNeurons.from_pretrained(
            "someone/neurons", cache_dir=cache, local_files_only=True
        )


def test_a_repository_of_another_kind_is_refused_with_the_class_that_loads_it(
    results, tmp_path, monkeypatch
):
    recorder = Recorder(tmp_path).install(monkeypatch)
    results["ternary"].push_to_hub("someone/neurons")
    cache = tmp_path / "hub-cache"
    cache_repo(cache, "someone/neurons", recorder.uploads[0], COMMIT_A)
    with pytest.raises(
        SaveError,
        match=r"holds a tl_multilingual.LanguageNeurons, not a NeuronMask: load it "
        r"with LanguageNeurons.from_pretrained",
    ):
        tlm.NeuronMask.from_pretrained("someone/neurons", cache_dir=cache, local_files_only=True)
    with pytest.raises(SaveError, match="not a StageMap"):
        hub.from_pretrained(StageMap, "someone/neurons", cache_dir=cache, local_files_only=True)


def test_hub_failures_are_the_librarys_errors(tmp_path, monkeypatch):
    empty = tmp_path / "empty-cache"
    with pytest.raises(HubError, match="not in the local Hugging Face cache") as caught:
        tlm.NeuronMask.from_pretrained("someone/missing", cache_dir=empty, local_files_only=True)
    assert isinstance(caught.value, tlm.TLMultilingualError)
    assert "nor is there a local folder 'someone/missing'" in str(caught.value)

    from huggingface_hub import errors

    def refuse(error):
        def download(*args, **kwargs):
            raise error

        return download

    response = type(
        "Response",
        (),
        {
            "status_code": 404,
            "headers": {},
            "url": "https://huggingface.co",
            "request": None,
            "text": "",
            "json": lambda self: {},
        },
    )()
    for error, message in (
        (
            errors.RepositoryNotFoundError("404 Repository Not Found", response=response),
            "has no repository",
        ),
        (
            errors.RevisionNotFoundError("404 Revision Not Found", response=response),
            "has no revision",
        ),
        (ConnectionError("Failed to resolve 'huggingface.co'"), "could not download"),
    ):
        monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse(error))
        with pytest.raises(HubError, match=message):
            tlm.NeuronMask.from_pretrained("someone/mask", revision="v9")

    def no_network(api, repo_id, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", no_network)
    with pytest.raises(HubError, match="could not push to someone/mask"):
        tlm.NeuronMask.empty(2, 4).push_to_hub("someone/mask")
    with pytest.raises(SaveError, match="no saved result"):
        tlm.NeuronMask.from_pretrained(tmp_path / "nowhere")


def test_a_study_folder_is_shared_whole_and_its_results_one_by_one(results, tmp_path, monkeypatch):
    stats, neurons = results["stats"], results["ternary"]
    study = tmp_path / "study"
    stats.save(study / "statistics")
    neurons.save(study / "neurons" / "ternary")
    results["lape"].save(study / "neurons" / "lape")
    StageMap.from_boundaries(stats.n_layers + 2, (1, 2, 3), d_mlp=stats.d_mlp).save(
        study / "stages.json"
    )
    manifest = {
        "kind": "tl_multilingual.Study",
        "command": [],
        "model": {**stats.model, "source": "huggingface", "revision": "abc123"},
        "data": {
            "languages": list(stats.languages),
            "fingerprint": results["corpus"].fingerprint(),
        },
        "settings": {"top_rate": 0.05, "seed": 0},
        "steps": {"statistics": {}, "neurons": {}, "stages": {}},
    }
    (study / "manifest.json").write_text(json.dumps(manifest))

    folder = StudyFolder.load(study)
    assert folder.languages == list(stats.languages)
    assert torch.equal(folder["neurons"]["ternary"].membership, neurons.membership)
    assert folder["lens"] is None
    recorder = Recorder(tmp_path).install(monkeypatch)
    folder.push_to_hub("someone/study")
    sent = recorder.uploads[0]
    assert files_of(sent) == files_of(study) | {"README.md"}
    card = huggingface_hub.ModelCard.load(sent / "README.md")
    assert card.data.base_model == stats.model["name"]  # recorded as loaded from the Hub
    assert card.data.to_dict()["tl_multilingual"]["model_revision"] == "abc123"
    assert '"top_rate": 0.05' in card.text and "wang2024sharing" in card.text

    cache = tmp_path / "hub-cache"
    cache_repo(cache, "someone/study", sent, COMMIT_A)
    whole = StudyFolder.from_pretrained("someone/study", cache_dir=cache, local_files_only=True)
    assert torch.equal(whole["statistics"].active_counts, stats.active_counts)
    part = tlm.LanguageNeurons.from_pretrained(
        "someone/study", subfolder="neurons/lape", cache_dir=cache, local_files_only=True
    )
    assert torch.equal(part.membership, results["lape"].membership)
    with pytest.raises(SaveError, match="StudyFolder.from_pretrained"):
        tlm.LanguageNeurons.from_pretrained("someone/study", cache_dir=cache, local_files_only=True)
    copy = whole.save(tmp_path / "copy")
    assert files_of(copy) == files_of(sent)
