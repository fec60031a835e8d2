"""Sharing results on the Hugging Face Hub: ``push_to_hub()`` and ``from_pretrained()``.

Every saved result type of the library
([`ActivationStats`][tl_multilingual.neurons.stats.ActivationStats],
[`LanguageNeurons`][tl_multilingual.neurons.classes.LanguageNeurons],
[`NeuronMask`][tl_multilingual.neurons.masks.NeuronMask], a whole study folder, ...) takes
[`HubMixin`][tl_multilingual.hub.HubMixin], which gives it two methods:

- ``result.push_to_hub("user/repo")`` saves the result as a local ``save()`` would,
  adds a model card (``README.md``, made with ``huggingface_hub.ModelCard``) and
  uploads the folder as one commit. The repository then holds exactly those files.
- ``Class.from_pretrained("user/repo", revision=...)`` downloads the repository (or
  reads it from the local Hugging Face cache, or from a local folder) and loads it
  with ``Class.load()``: the same checks as a local load (checksums of the tensors
  and of the manifest, every manifest field), so an edited or damaged download is
  refused. ``revision`` pins a branch, a tag or a commit.

The card carries ``library_name: tl-multilingual``, tags, the model the result comes
from (name, architecture, revision when recorded), the corpus fingerprint and
languages, the recipe (identification arguments, study settings), the citations of
the library and of the papers whose method produced the result, and a snippet that
loads it. A result whose ``save()`` writes one file (a stage map) is stored in the
repository under its class name in snake case (``stage_map.json``).

The conventions follow SAELens (``library_name`` on the card, ``from_pretrained``)
and pyvene (a small result shared as a repository of its own). Everything here runs
through ``huggingface_hub`` (installed with ``transformers``); nothing is imported
before it is used.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from .errors import HubError, SaveError, TLMultilingualError, logger
from .persist import library_versions, read_json

__all__ = ["HubMixin", "push_to_hub", "from_pretrained", "model_card", "check_model_name", "CITATIONS",
           "LIBRARY_NAME"]

LIBRARY_NAME = "tl-multilingual"
CARD = "README.md"
_REPO_URL = "https://github.com/tl-multilingual/tl-multilingual"
_TAGS = ("tl-multilingual", "transformer-lens", "interpretability", "language-neurons")
# What a result's folder (or file) records about itself.
_RECORDS = ("manifest.json", "result.json")

R = TypeVar("R")

CITATIONS: dict[str, str] = {
    "tl_multilingual": (
        "@software{tl_multilingual,\n"
        "  title = {tl\\_multilingual: language neurons, multilingual inference stages and "
        "causal neuron experiments for TransformerLens},\n"
        "  author = {{tl\\_multilingual contributors}},\n"
        "  version = {VERSION},\n"
        f"  url = {{{_REPO_URL}}}\n"
        "}"
    ),
    "zhang2026": (
        "@inproceedings{zhang2026alignment,\n"
        "  title = {How Does Alignment Enhance {LLMs}' Multilingual Capabilities? "
        "A Language Neurons Perspective},\n"
        "  author = {Zhang, Shimao and others},\n"
        "  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence (AAAI-26)},\n"
        "  year = {2026},\n"
        "  note = {arXiv:2505.21505}\n"
        "}"
    ),
    "tang2024": (
        "@inproceedings{tang2024language,\n"
        "  title = {Language-Specific Neurons: The Key to Multilingual Capabilities in "
        "Large Language Models},\n"
        "  author = {Tang, Tianyi and others},\n"
        "  booktitle = {Proceedings of the 62nd Annual Meeting of the Association for "
        "Computational Linguistics (ACL 2024)},\n"
        "  year = {2024}\n"
        "}"
    ),
    "wang2024": (
        "@article{wang2024sharing,\n"
        "  title = {Sharing Matters: Analysing Neurons Across Languages and Tasks in {LLMs}},\n"
        "  author = {Wang, Weixuan and others},\n"
        "  journal = {arXiv preprint arXiv:2406.09265},\n"
        "  year = {2024}\n"
        "}"
    ),
    "wendler2024": (
        "@inproceedings{wendler2024llamas,\n"
        "  title = {Do Llamas Work in {English}? On the Latent Language of Multilingual "
        "Transformers},\n"
        "  author = {Wendler, Chris and others},\n"
        "  booktitle = {Proceedings of the 62nd Annual Meeting of the Association for "
        "Computational Linguistics (ACL 2024)},\n"
        "  year = {2024}\n"
        "}"
    ),
}
"""BibTeX of the library and of the papers it implements (the card cites those of the
method that produced the result)."""

# The papers behind each kind of result (LanguageNeurons: by method, see _papers()).
_PAPERS = {
    "ActivationStats": ("tang2024", "zhang2026"),
    "NeuronMask": (),
    "Sharing": ("wang2024",),
    "LensResult": ("wendler2024",),
    "StageMap": ("zhang2026", "wendler2024"),
    "StageEffects": ("zhang2026",),
    "DeactivationResult": ("zhang2026", "tang2024"),
    "BenchmarkEffects": ("zhang2026", "tang2024"),
    "GenerationLanguage": (),
    "Study": ("zhang2026", "tang2024", "wendler2024", "wang2024"),
}
_TOPIC = {  # a tag per kind, so the Hub can list results of one kind
    "ActivationStats": "activation-statistics",
    "LanguageNeurons": "neuron-classes",
    "NeuronMask": "neuron-mask",
    "Sharing": "neuron-sharing",
    "LensResult": "logit-lens",
    "StageMap": "stage-map",
    "StageEffects": "stage-effects",
    "DeactivationResult": "deactivation",
    "BenchmarkEffects": "benchmark-effects",
    "GenerationLanguage": "generation-language",
    "Study": "study",
}
_LOADER = {"Study": "StudyFolder"}  # a kind whose loading class has another name


class HubMixin:
    """``push_to_hub()`` and ``from_pretrained()`` for a class with ``save(path)`` and
    ``load(path)`` (see the module docstring). Add it as a base class."""

    __slots__ = ()

    def push_to_hub(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
        tags: Sequence[str] = (),
        base_model: str | None = None,
        base_model_revision: str | None = None,
    ) -> Any:
        """Save this result, with a model card, as one commit of the Hub repository
        ``repo_id`` (created if missing). See [`push_to_hub()`][tl_multilingual.hub.push_to_hub]."""
        return push_to_hub(
            self,
            repo_id,
            revision=revision,
            private=private,
            token=token,
            commit_message=commit_message,
            create_pr=create_pr,
            tags=tags,
            base_model=base_model,
            base_model_revision=base_model_revision,
        )

    @classmethod
    def from_pretrained(
        cls: type[R],
        repo_id_or_path: str | Path,
        *,
        revision: str | None = None,
        subfolder: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> R:
        """Load a result from a Hub repository, the local Hugging Face cache or a local
        folder. See [`from_pretrained()`][tl_multilingual.hub.from_pretrained]."""
        return from_pretrained(
            cls,
            repo_id_or_path,
            revision=revision,
            subfolder=subfolder,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )


# -- what a saved result records ---------------------------------------------------------


def _file_name(cls: type) -> str:
    """The repository file of a result whose ``save()`` writes one file: the class name
    in snake case (``StageMap`` -> ``stage_map.json``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower() + ".json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = read_json(path)
    except SaveError:
        return {}
    return value if isinstance(value, dict) else {}


def _record(folder: Path) -> dict[str, Any]:
    """The record a saved result keeps of itself: its manifest, its ``result.json``, or
    the one JSON file of a single-file result (empty if none can be read)."""
    for name in _RECORDS:
        if (folder / name).is_file():
            return _read_json(folder / name)
    files = [p for p in folder.glob("*.json")]
    return _read_json(files[0]) if len(files) == 1 else {}


def _kind(record: dict[str, Any], fallback: str) -> str:
    kind = record.get("kind")
    return kind.removeprefix("tl_multilingual.") if isinstance(kind, str) else fallback


def _papers(kind: str, record: dict[str, Any]) -> tuple[str, ...]:
    if kind == "LanguageNeurons":
        return {"ternary": ("zhang2026",), "lape": ("tang2024",)}.get(str(record.get("method")), ())
    return _PAPERS.get(kind, ())


def _facts(record: dict[str, Any]) -> dict[str, Any]:
    """Model, corpus, languages and recipe from a result's record, wherever its kind
    keeps them (statistics: ``model``, ``corpus``; neurons: ``source``; a study:
    ``model``, ``data``, ``settings``)."""
    source = record.get("source") if isinstance(record.get("source"), dict) else {}
    model = record.get("model") if isinstance(record.get("model"), dict) else source.get("model")
    model = model if isinstance(model, dict) else {}
    corpus = (
        record.get("corpus") if isinstance(record.get("corpus"), dict) else source.get("corpus")
    )
    if not isinstance(corpus, dict):
        corpus = record.get("data") if isinstance(record.get("data"), dict) else {}
    languages = record.get("languages") or corpus.get("languages") or []
    fingerprints = (
        [part.get("fingerprint") for part in corpus["merged"] if isinstance(part, dict)]
        if isinstance(corpus.get("merged"), list)
        else [corpus.get("fingerprint")]
    )
    recipe = record.get("recipe") or record.get("settings") or {}
    shape = record.get("shape")
    if shape is None and "n_layers" in record:
        shape = [record.get("n_layers"), record.get("d_mlp")]
    return {
        "model": model.get("name"),
        "architecture": model.get("architecture"),
        "revision": model.get("revision"),
        "source": model.get("source"),
        "languages": [str(lang) for lang in languages],
        "fingerprints": [f for f in fingerprints if f],
        "recipe": recipe if isinstance(recipe, dict) else {},
        "method": record.get("method"),
        "token_policy": record.get("token_policy") or source.get("token_policy"),
        "shape": shape,
    }


def _hub_languages(languages: Sequence[str]) -> list[str]:
    """The ISO 639 language subtags of the library's language keys (``zh-Hant`` ->
    ``zh``), as the Hub's ``language`` metadata takes them; unknown keys are left out."""
    from .inputs.languages import normalize_language

    out = []
    for key in languages:
        try:
            subtag = normalize_language(key).split("-")[0]
        except TLMultilingualError:
            continue
        if subtag not in out:
            out.append(subtag)
    return out


def _load_snippet(cls: type, repo_id: str, revision: str | None) -> str:
    import tl_multilingual

    pinned = f", revision={revision!r}" if revision else ""
    if cls.__name__ in getattr(tl_multilingual, "__all__", ()):
        return (
            f"import tl_multilingual as tlm\n\n"
            f"result = tlm.{cls.__name__}.from_pretrained({repo_id!r}{pinned})"
        )
    return (
        f"from {cls.__module__} import {cls.__name__}\n\n"
        f"result = {cls.__name__}.from_pretrained({repo_id!r}{pinned})"
    )


def _cell(value: Any) -> str:
    if value is None or value == [] or value == {}:
        return "not recorded"
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{v}`" for v in value)
    return f"`{value}`"


def model_card(
    folder: str | Path,
    cls: type,
    repo_id: str,
    *,
    revision: str | None = None,
    tags: Sequence[str] = (),
    base_model: str | None = None,
    base_model_revision: str | None = None,
) -> Any:
    """The model card (``huggingface_hub.ModelCard``) of a result saved in ``folder``.

    Args:
        folder: the saved result (what ``save()`` wrote, as it will be uploaded).
        cls: the result's class (for the load snippet and the kind).
        repo_id: the repository it is pushed to.
        revision: the branch pushed to, shown in the load snippet.
        tags: extra tags.
        base_model: the Hub id of the model the result comes from (default: the
            recorded model name when the model was loaded from the Hub); set as the
            card's ``base_model``, which links the repository to the model's page.
        base_model_revision: the model's revision (default: the recorded one).

    Returns:
        A ``huggingface_hub.ModelCard``: YAML metadata (``library_name:
        tl-multilingual``, tags, languages, ``base_model``, and a ``tl_multilingual``
        record of kind, model, revision, corpus fingerprints and format) and a body with
        the same facts, the recipe, a load snippet and the citations.
    """
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    record = _record(folder)
    kind = _kind(record, cls.__name__)
    facts = _facts(record)
    model_revision = base_model_revision or facts["revision"]
    hub_model = base_model or (facts["model"] if facts["source"] == "huggingface" else None)
    versions = record.get("versions") or library_versions()
    version = (
        versions.get("tl_multilingual", "unknown") if isinstance(versions, dict) else "unknown"
    )
    languages = _hub_languages(facts["languages"])
    meta: dict[str, Any] = {
        "library_name": LIBRARY_NAME,
        "tags": list(dict.fromkeys([*_TAGS, _TOPIC.get(kind, kind.lower()), *tags])),
        "tl_multilingual": {
            "kind": f"tl_multilingual.{kind}",
            "format_version": record.get("format_version"),
            "model": facts["model"],
            "model_revision": model_revision,
            "architecture": facts["architecture"],
            "languages": facts["languages"],
            "corpus_fingerprints": facts["fingerprints"],
            "library_version": version,
        },
    }
    if languages:
        meta["language"] = languages
    if hub_model:
        meta["base_model"] = hub_model
    data = ModelCardData(**meta)
    papers = ["tl_multilingual", *_papers(kind, record)]
    citations = "\n\n".join(CITATIONS[key].replace("VERSION", version) for key in papers)
    rows = [
        ("Kind", f"`tl_multilingual.{kind}`"),
        ("Model", _cell(facts["model"])),
        ("Model revision", _cell(model_revision)),
        ("Architecture", _cell(facts["architecture"])),
        (
            "Neuron grid (layers x d_mlp)",
            _cell("x".join(str(v) for v in facts["shape"][:2]))
            if isinstance(facts["shape"], list) and len(facts["shape"]) >= 2
            else "not recorded",
        ),
        ("Languages", _cell(facts["languages"])),
        ("Corpus fingerprint (SHA-256)", _cell(facts["fingerprints"])),
        ("Token policy", _cell(facts["token_policy"])),
        ("tl_multilingual version", _cell(version)),
    ]
    table = "\n".join(["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])
    recipe = (
        f"```json\n{json.dumps(facts['recipe'], indent=2, sort_keys=True, default=str)}\n```"
        if facts["recipe"]
        else "Not recorded for this kind of result."
    )
    body = f"""
# {kind} of {facts["model"] or "a language model"}

A result of [tl_multilingual]({_REPO_URL}), the TransformerLens plugin for language
neurons. The files are those of a local `save()`: the library checks their checksums
and every manifest field when it loads them.

{table}

## Recipe

{recipe}

## Load

```python
{_load_snippet(cls, repo_id, revision)}
```

## Citation

```bibtex
{citations}
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


# -- push --------------------------------------------------------------------------------


def _hub_errors() -> tuple[type[BaseException], ...]:
    """The exception classes through which ``huggingface_hub`` reports failures."""
    import importlib

    def submodule(name: str) -> Any:  # loaded lazily by huggingface_hub: import it by name
        try:
            return importlib.import_module(f"huggingface_hub.{name}")
        except ImportError:
            return None

    found: list[type[BaseException]] = [OSError, ValueError]
    for module in (submodule("errors"), submodule("utils")):
        for name in (
            "HfHubHTTPError",
            "LocalEntryNotFoundError",
            "HFValidationError",
            "EntryNotFoundError",
        ):
            value = getattr(module, name, None) if module is not None else None
            if isinstance(value, type) and issubclass(value, BaseException):
                found.append(value)
    return tuple(found)


def _error_name(err: BaseException) -> str:
    """The class names of an error and its bases (the Hub's error classes vary by version)."""
    return " ".join(c.__name__ for c in type(err).__mro__)


def _explain(err: BaseException, repo_id: str, revision: str | None, *, pushing: bool) -> HubError:
    names = _error_name(err)
    at = f"{repo_id}" + (f" at revision {revision!r}" if revision else "")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "RepositoryNotFoundError" in names:
        return HubError(
            f"the Hub has no repository {repo_id!r} (or it is private and no token was given): "
            "check the name, or log in with `hf auth login`"
        )
    if "RevisionNotFoundError" in names:
        return HubError(
            f"the repository {repo_id!r} has no revision {revision!r}: give a branch, tag "
            "or commit it has"
        )
    if "LocalEntryNotFoundError" in names:
        return HubError(
            f"{at} is not in the local Hugging Face cache and the Hub cannot be reached (offline, "
            "or local_files_only=True): connect, or download it once where the Hub is reachable"
        )
    if "HFValidationError" in names:
        return HubError(
            f"{repo_id!r} is neither a local path nor a valid Hub repository id "
            f"('user/name'): {first}"
        )
    action = "push to" if pushing else "download"
    return HubError(f"could not {action} {at} on the Hugging Face Hub: {first}")


def _save_for_upload(result: Any, staging: Path) -> Path:
    """``result.save()`` into ``staging``; the folder to upload (a single-file result is
    moved into a folder of its own under its file name)."""
    saved = Path(result.save(staging / "result"))
    if saved.is_dir():
        return saved
    folder = staging / "repo"
    folder.mkdir()
    shutil.move(str(saved), folder / _file_name(type(result)))
    return folder


def push_to_hub(
    result: Any,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    tags: Sequence[str] = (),
    base_model: str | None = None,
    base_model_revision: str | None = None,
) -> Any:
    """Upload ``result`` (anything with ``save(path)``) and its model card as one
    commit of the Hub repository ``repo_id``.

    The repository is created if missing (``private`` as given), and the branch
    ``revision`` too. Files of an earlier push that the new save does not write are
    deleted in the same commit, so the repository always holds exactly one result.
    Under ``torch.distributed``, push from one rank (``distributed.is_main()``).

    Args:
        result: a saved result type of the library.
        repo_id: ``"user/name"`` or ``"organisation/name"``.
        revision: the branch to push to (default: the main branch).
        private: create the repository private (None: the Hub's default).
        token: a Hugging Face token (default: the one ``hf auth login`` stored).
        commit_message: the commit's message.
        create_pr: open a pull request instead of committing to the branch.
        tags: extra tags for the card.
        base_model: the Hub id of the model the result comes from, when its record
            lacks it (see [`model_card()`][tl_multilingual.hub.model_card]).
        base_model_revision: that model's revision, when the record lacks it.

    Returns:
        The ``huggingface_hub.CommitInfo`` of the commit (a string: its URL).

    Raises:
        HubError: the Hub refused or could not be reached (the cause is chained).
        SaveError: the result could not be saved.
    """
    import huggingface_hub

    kind = type(result).__name__
    with tempfile.TemporaryDirectory(prefix="tlm-push-") as tmp:
        folder = _save_for_upload(result, Path(tmp))
        card = model_card(
            folder,
            type(result),
            repo_id,
            revision=revision,
            tags=tags,
            base_model=base_model,
            base_model_revision=base_model_revision,
        )
        card.save(str(folder / CARD))
        api = huggingface_hub.HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                repo_type="model",
                revision=revision,
                commit_message=commit_message or f"Upload {kind} with tl_multilingual",
                create_pr=create_pr,
                delete_patterns="*",
            )
        except _hub_errors() as err:
            raise _explain(err, repo_id, revision, pushing=True) from err
    logger.info("pushed %s to %s", kind, repo_id)
    return info


# -- load --------------------------------------------------------------------------------


def _looks_local(value: str | Path) -> bool:
    text = str(value)
    return (
        isinstance(value, Path)
        or text.startswith((".", "/", "~"))
        or text.count("/") > 1
        or "\\" in text
    )


def _download(
    repo_id: str,
    *,
    revision: str | None,
    subfolder: str | None,
    cache_dir: str | Path | None,
    local_files_only: bool,
    token: str | bool | None,
) -> Path:
    import huggingface_hub

    inside = subfolder.strip("/") if subfolder else None
    patterns = [inside, f"{inside}/*", f"{inside}/**"] if inside else None
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=str(cache_dir) if cache_dir else None,
            local_files_only=local_files_only,
            token=token,
            allow_patterns=patterns,
            library_name=LIBRARY_NAME,
            library_version=library_versions()["tl_multilingual"],
        )
    except _hub_errors() as err:
        raise _explain(err, repo_id, revision, pushing=False) from err
    return Path(folder)


def from_pretrained(
    cls: type[R],
    repo_id_or_path: str | Path,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> R:
    """Load a result of class ``cls`` from the Hub, the local Hugging Face cache, or a
    local folder, with the checks of ``cls.load()``.

    Args:
        cls: the result type to load (``LanguageNeurons``, ``NeuronMask``...).
        repo_id_or_path: a Hub repository id (``"user/name"``) or a local path (a
            folder that ``cls.load()`` reads, or a downloaded repository).
        revision: a branch, tag or commit hash to pin (default: the main branch).
        subfolder: a result inside the repository, e.g. ``"neurons/ternary"`` of a
            pushed study (only that part is downloaded).
        cache_dir: the Hugging Face cache (default: ``HF_HUB_CACHE``).
        local_files_only: read the cache only; never ask the Hub.
        token: a Hugging Face token, for private repositories.

    Returns:
        The loaded result.

    Raises:
        HubError: no network and not cached, no such repository or revision, or an
            invalid repository id (the cause is chained).
        SaveError: the repository holds another kind of result (the message names the
            class that loads it), or its files are damaged, edited or incomplete.
    """
    where = str(repo_id_or_path)
    path = Path(where).expanduser()
    if path.exists() or _looks_local(repo_id_or_path):
        if not path.exists():
            raise SaveError(f"no saved result at {path}")
        folder = path
    else:
        try:
            folder = _download(
                where,
                revision=revision,
                subfolder=subfolder,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                token=token,
            )
        except HubError as err:
            raise HubError(f"{err} (nor is there a local folder {where!r})") from err.__cause__
    if subfolder:
        folder = folder / subfolder.strip("/")
        if not folder.exists():
            raise SaveError(f"{where} has no subfolder {subfolder!r}")
    target = folder
    if folder.is_dir() and (folder / _file_name(cls)).is_file():
        target = folder / _file_name(cls)
    try:
        result = cls.load(target)  # type: ignore[attr-defined]
    except TLMultilingualError as err:
        record = _record(folder) if folder.is_dir() else {}
        found = _kind(record, "")
        if found and _LOADER.get(found, found) != cls.__name__:
            inside = (
                " (or one of its results with subfolder=, e.g. 'neurons/ternary')"
                if found == "Study"
                else ""
            )
            raise SaveError(
                f"{where} holds a tl_multilingual.{found}, not a {cls.__name__}: load it with "
                f"{_LOADER.get(found, found)}.from_pretrained({where!r}){inside}"
            ) from err
        raise
    if logger.isEnabledFor(logging.INFO):
        logger.info("loaded %s from %s", cls.__name__, folder)
    return result


def check_model_name(repo_id: str, *, timeout_s: float = 10.0) -> None:
    """Make sure the Hub has the model ``repo_id``, or that the local Hugging Face cache
    does when the Hub cannot be reached, with one request of at most ``timeout_s``
    seconds (instead of the retries a model loader makes before giving up).

    Args:
        repo_id: a Hub model id (``"org/name"``).
        timeout_s: how long the one request may take, in seconds.

    Raises:
        HubError: the Hub has no such model (or it is private and no token was given),
            or the Hub cannot be reached (or ``HF_HUB_OFFLINE`` is set) and the model is
            not in the local cache; the Hub's exception is chained.
    """
    import os

    import huggingface_hub
    from huggingface_hub import constants  # a lazily loaded submodule: import it by name

    def cached() -> bool:
        try:
            found = huggingface_hub.try_to_load_from_cache(repo_id, "config.json")
        except _hub_errors():
            return False
        return isinstance(found, str)

    offline = getattr(constants, "HF_HUB_OFFLINE", False) or os.environ.get(
        "HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline:
        if not cached():
            raise HubError(f"{repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                           "is set: unset it, or download the model once where the Hub is reachable")
        return
    try:
        huggingface_hub.model_info(repo_id, timeout=timeout_s)
    except Exception as err:  # noqa: BLE001 - the Hub's and the HTTP client's errors vary by version
        names = _error_name(err)
        if "GatedRepoError" in names:
            return  # it exists; the loader asks for access with the user's token
        if "RepositoryNotFoundError" in names:
            raise HubError(f"the Hub has no model {repo_id!r} (or it is private and no token was "
                           "given): check the name, or log in with `hf auth login`") from err
        if "HFValidationError" in names:
            raise _explain(err, repo_id, None, pushing=False) from err
        if "HfHubHTTPError" in names and "Timeout" not in names:
            return  # the Hub answered, with something else: the loader reports it
        if cached():
            return
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(f"the Hub cannot be reached ({first}) and {repo_id!r} is not in the local "
                       "Hugging Face cache: connect, or download the model once where the Hub is "
                       "reachable") from err
