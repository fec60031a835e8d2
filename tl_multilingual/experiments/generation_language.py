"""In which language does the model write under an edit?
[`generation_language()`][tl_multilingual.experiments.generation_language.generation_language].

Steering and language-forcing studies (Gurgurov et al., 2025; Chou et al., 2025;
Rahmanisa et al., 2025) judge an edit of language neurons by the language of what the
model then generates: greedy continuations of prompts, their language identified
([`language_of()`][tl_multilingual.inputs.language_id.language_of], any backend), with
two measures per continuation:

- **target share**: 1 when the continuation as a whole is identified as the target
  language, else 0 (also for an empty continuation or one in no identified language);
  its mean over prompts is the share of continuations written in the target language;
- **code-switching**: the share of the continuation's *segments* identified in another
  language than the target, among its segments identified at all. Segments are
  sentences and lines ([`segments()`][tl_multilingual.experiments.generation_language.segments]:
  split after ``. ! ? 。 ！ ？ ।`` and at line breaks; a piece with no letter is no
  segment). A continuation with no identified segment has no value (NaN) and is left
  out of the mean and of its interval; 0 is a continuation entirely in the target
  language, 1 one entirely in others.

For each target language, its prompts are continued by the unmodified model (the
baseline), with the language's neurons edited (``steer`` toward the language,
``boost`` them, or ``ablate`` them), and with random neuron sets of the same size per
layer edited the same way (the controls), by the experiment engine
([`controlled_runs()`][tl_multilingual.experiments.engine.controlled_runs]); changes
come with paired percentile bootstrap intervals over prompts
([`paired_interval()`][tl_multilingual.experiments.engine.paired_interval]).

Typical uses: steering prompts of one language toward another (``prompts={"fr":
english_prompts}``, ``edit="steer"``: does the model switch to French?); ablating a
language's neurons on prompts in that language (``edit="ablate"``: does it leave the
language?).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .. import resample
from ..causal.evaluate import generate
from ..causal.interventions import Layers, ablate, boost, check_steering, check_value, steer
from ..errors import CorpusError, IdentificationError, SaveError, StatsError, TLMultilingualError
from ..hub import HubMixin
from ..inputs.language_id import Backend, Lingua, language_of
from ..inputs.languages import normalize_language, same_language
from ..model.adapters import adapt
from ..model.tokens import Overflow
from ..neurons.classes import LanguageNeurons
from ..neurons.masks import NeuronMask
from ..neurons.stats import ActivationStats
from ..persist import library_versions, read_tables, write_tables
from ..provenance import check_fits, model_record
from .deactivation import variant_mask
from .engine import controlled_runs, paired_interval, variant_rows

__all__ = ["generation_language", "GenerationLanguage", "segments", "MEASURES"]

_KIND = "tl_multilingual.GenerationLanguage"
MEASURES = ("target_share", "code_switching")
"""The measures of a continuation (see the module docstring)."""
_COLUMNS = ["variant", "language", "measure", "edit", "n_prompts", "n_neurons", "baseline", "value",
            "change", "ci_low", "ci_high", "control_value", "control_change", "control_ci_low",
            "control_ci_high", "over_control", "over_control_ci_low", "over_control_ci_high"]
_GENERATION_COLUMNS = ["variant", "language", "condition", "prompt", "generation", "detected",
                       "confidence", "target_share", "code_switching", "n_segments"]
_BREAK = re.compile(r"(?<=[.!?。！？।])\s*|\n+")
Edit = Literal["steer", "boost", "ablate"]


def segments(text: str) -> list[str]:
    """The segments of a text for the code-switching measure: split after sentence
    ends (``. ! ? 。 ！ ？ ।``) and at line breaks, stripped; pieces without a letter
    (numbers, punctuation) are dropped.

    >>> segments("Le chat dort. The cat sleeps!\\n12 + 30")
    ['Le chat dort.', 'The cat sleeps!']
    """
    pieces = (piece.strip() for piece in _BREAK.split(text))
    return [piece for piece in pieces if any(ch.isalpha() for ch in piece)]


@dataclass
class GenerationLanguage(HubMixin):
    """Outcome of
    [`generation_language()`][tl_multilingual.experiments.generation_language.generation_language].

    Attributes:
        frame: one row per (variant, target language, measure): ``edit``,
            ``n_prompts`` (prompts with a value of the measure under the baseline),
            ``n_neurons`` edited, ``baseline`` and ``value`` (means over prompts),
            ``change`` with its paired interval (``ci_low``, ``ci_high``),
            ``control_value`` and ``control_change`` (mean over the random controls)
            with ``control_ci_low/high``, and ``over_control`` = change - control
            change with ``over_control_ci_low/high``. Measures:
            [`MEASURES`][tl_multilingual.experiments.generation_language.MEASURES].
        generations: one row per (variant, language, condition, prompt): the
            continuation, its ``detected`` language and ``confidence``, its
            ``target_share`` (0 or 1), ``code_switching`` and ``n_segments``
            identified; ``condition`` is ``baseline`` (variant empty), ``edited`` or
            ``control <c>``.
        record: provenance and settings: ``model``, ``languages``, ``edit``,
            ``recipe`` (every argument), ``backend`` (its repr) and ``versions``.
    """

    frame: pd.DataFrame
    generations: pd.DataFrame
    record: dict[str, Any]

    @property
    def provenance(self) -> dict[str, Any]:
        """The model the result comes from (see `tl_multilingual.provenance`)."""
        return model_record(self.record.get("model"))

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def table(self, measure: str = "target_share", variant: str | None = None) -> pd.DataFrame:
        """Languages (rows) by ``baseline``, ``value`` (edited), ``control_value`` and
        ``change`` with its interval, for one measure and variant (default: the first).

        Raises:
            TLMultilingualError: no such measure or variant.
        """
        if measure not in MEASURES:
            raise TLMultilingualError(f"measure is one of {MEASURES}, got {measure!r}")
        variant, rows = variant_rows(self.frame, variant)
        rows = rows[rows["measure"] == measure]
        return rows.set_index("language")[["baseline", "value", "control_value", "change", "ci_low",
                                           "ci_high", "over_control"]]

    def save(self, path: str | Path) -> Path:
        """Save to the folder ``path``: ``cells.csv``, ``generations.csv`` and
        ``result.json`` (kind, provenance, settings), replaced together.

        Raises:
            SaveError: ``path`` holds something else, or writing failed.
        """
        return write_tables(path, {"cells": self.frame, "generations": self.generations},
                            {"kind": _KIND, **self.record})

    @classmethod
    def load(cls, path: str | Path) -> GenerationLanguage:
        """Load a result saved with
        [`save()`][tl_multilingual.experiments.generation_language.GenerationLanguage.save].

        Raises:
            SaveError: the folder is missing, damaged, or holds another kind of result.
        """
        record, frames = read_tables(path, ("cells", "generations"), _KIND,
                                     "generation-language result",
                                     {"generations": ("variant", "generation", "detected")})
        record.pop("kind")
        missing = [c for c in _COLUMNS if c not in frames["cells"].columns]
        if missing:
            raise SaveError(f"{Path(path) / 'cells.csv'} lacks the columns {missing}")
        generations = frames["generations"]
        for column in ("variant", "generation", "detected"):  # empty text is read back as NaN
            generations[column] = generations[column].astype(object).where(
                generations[column].notna(), "" if column != "detected" else None)
        return cls(frames["cells"], generations, record)


def _score(texts: list[str], target: str, backend: Backend) -> pd.DataFrame:
    """Per continuation: detected language, confidence and the two measures."""
    whole = language_of(texts, backend=backend)
    pieces = [segments(text) for text in texts]
    flat = [piece for parts in pieces for piece in parts]
    found = language_of(flat, backend=backend)["language"].tolist() if flat else []
    switching, counts, at = [], [], 0
    for parts in pieces:
        labels = [lang for lang in found[at : at + len(parts)] if lang is not None]
        at += len(parts)
        counts.append(len(labels))
        off = [not same_language(target, lang) for lang in labels]
        switching.append(float(np.mean(off)) if off else float("nan"))
    share = [float(lang is not None and same_language(target, lang)) for lang in whole["language"]]
    return pd.DataFrame({"prompt": range(len(texts)), "generation": texts,
                         "detected": whole["language"], "confidence": whole["confidence"],
                         "target_share": share, "code_switching": switching,
                         "n_segments": counts})


def generation_language(
    model: Any,
    neurons: LanguageNeurons | Mapping[str, NeuronMask],
    prompts: Mapping[str, Sequence[str]] | Sequence[str],
    *,
    edit: Edit = "steer",
    classes: Iterable[str] = ("specific",),
    languages: Iterable[str] | None = None,
    stats: ActivationStats | None = None,
    factor: float = 2.0,
    mode: Literal["set", "add"] = "set",
    source: str | None = None,
    strength: float = 1.0,
    value: float | Literal["zero", "mean"] = 0.0,
    layers: Layers = None,
    backend: Backend | None = None,
    max_new_tokens: int = 32,
    stop: Sequence[str] = ("\n\n",),
    controls: int = 3,
    seed: int = 0,
    n_boot: int = 1000,
    ci: float = 0.95,
    batch_size: int = 8,
    progress: bool = True,
    allow_mismatch: bool = False,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> GenerationLanguage:
    """The language of greedy continuations under an edit of each target language's
    neurons, against the unmodified model and random neurons (see the module
    docstring for the two measures).

    Args:
        model: a model or [`ModelAdapter`][tl_multilingual.model.adapters.ModelAdapter].
        neurons: identified neurons (a class variant per language is edited), or a
            mask per target language (``classes`` is then ignored; the variant is
            ``"mask"``).
        prompts: per target language, the prompts to continue (e.g. English prompts
            under ``{"fr": ...}`` to steer toward French), or one list for every
            target language.
        edit: ``"steer"`` (toward the target's mean activations, needs ``stats``; see
            [`steer()`][tl_multilingual.causal.interventions.steer]), ``"boost"``
            (scale by ``factor``) or ``"ablate"`` (set to ``value``).
        classes: variants to edit, as in
            [`deactivation_matrix()`][tl_multilingual.experiments.deactivation.deactivation_matrix].
        languages: the target languages (default: the keys of ``prompts``, or with one
            list of prompts, every language of ``neurons``).
        stats: activation statistics (``steer``; ``ablate`` with ``value="mean"``).
        factor: ``boost``'s factor.
        mode: ``steer``'s mode, ``"set"`` or ``"add"``.
        source: ``steer``'s source language (``mode="add"``).
        strength: ``steer``'s strength (``mode="add"``).
        value: ``ablate``'s value.
        layers: restrict every mask (and its controls) to these layers.
        backend: the language identifier, any callable ``texts -> labels`` (see
            [`language_of()`][tl_multilingual.inputs.language_id.language_of]); default
            [`Lingua`][tl_multilingual.inputs.language_id.Lingua] over every language it
            knows.
        max_new_tokens: tokens generated per prompt.
        stop: strings that end a continuation.
        controls: random same-size-per-layer neuron sets per (variant, language).
        seed: seed of the controls and of the bootstrap.
        n_boot: paired bootstrap replicates over prompts.
        ci: the intervals' coverage.
        batch_size: prompts per forward pass.
        progress: show a progress bar.
        allow_mismatch: accept neurons or statistics of another model of the same shape.
        max_length: longest sequence fed to the model (default: its context size).
        overflow: ``"truncate"`` or ``"error"`` (see
            [`generate()`][tl_multilingual.causal.evaluate.generate]).

    Returns:
        [`GenerationLanguage`][tl_multilingual.experiments.generation_language.GenerationLanguage]
        (``to_frame()``, ``table(measure)``, ``generations``, ``save()``).

    Raises:
        TLMultilingualError: an unknown ``edit``, ``steer`` without ``stats``, no
            target language, a target without neurons or masks, or a backend that
            answers malformed labels (and Lingua missing without a backend).
        CorpusError: a target language with no prompt.
        LanguageError: a language code the library cannot read.
        IdentificationError, StatsError, MaskError: neurons, masks or statistics of
            another shape or model (unless ``allow_mismatch``); a mask holding more
            than half of a layer (pass ``controls=0``).
    """
    lm = adapt(model)
    if edit not in ("steer", "boost", "ablate"):
        raise TLMultilingualError(f"edit is 'steer', 'boost' or 'ablate', got {edit!r}")
    if edit == "steer" and stats is None:
        raise TLMultilingualError("edit='steer' sets neurons to a language's mean activations: "
                                  "pass stats=")
    if edit == "steer":  # the edit's options, before any text is generated
        check_steering(mode, strength, source)
    elif edit == "boost":
        check_value("scale", factor, NeuronMask.empty(lm.n_layers, lm.d_mlp))
    if stats is not None:
        check_fits(lm, stats, what="the statistics", error=StatsError,
                   allow_mismatch=allow_mismatch)
    if isinstance(neurons, LanguageNeurons):
        check_fits(lm, neurons, what="the neurons", error=IdentificationError,
                   allow_mismatch=allow_mismatch)
        known = list(neurons.languages)
    else:
        neurons = {normalize_language(lang): mask for lang, mask in neurons.items()}
        known = list(neurons)
    if isinstance(prompts, Mapping):
        prompt_of = {normalize_language(lang): list(p) for lang, p in prompts.items()}
        targets = (list(prompt_of) if languages is None
                   else [normalize_language(x) for x in languages])
    else:
        shared = list(prompts)
        targets = known if languages is None else [normalize_language(x) for x in languages]
        prompt_of = dict.fromkeys(targets, shared)
    if not targets:
        raise TLMultilingualError("no target language: give prompts per language or languages=")
    missing = [lang for lang in targets if lang not in known]
    if missing:
        raise TLMultilingualError(f"no neurons of {missing}; have {sorted(known)}")
    for lang in targets:
        if not prompt_of.get(lang):
            raise CorpusError(f"no prompt for the target language {lang!r}")
        if not all(isinstance(p, str) for p in prompt_of[lang]):
            raise CorpusError(f"the prompts of {lang!r} are not all strings")
    if isinstance(neurons, LanguageNeurons):
        variants = list(classes)
        masks = {(v, lang): variant_mask(neurons, v, lang) for v in variants for lang in targets}
    else:
        variants = ["mask"]
        masks = {("mask", lang): neurons[lang] for lang in targets}
    if layers is not None:
        masks = {key: m.restrict(lm.layer_range(layers)) for key, m in masks.items()}
    detect = backend if backend is not None else Lingua()

    def measure(block: int) -> pd.DataFrame:
        target = targets[block]
        texts = generate(lm, prompt_of[target], max_new_tokens=max_new_tokens, stop=stop,
                         batch_size=batch_size, max_length=max_length, overflow=overflow)
        return _score(texts, target, detect)

    def intervene(key: tuple[str, str], mask: NeuronMask) -> AbstractContextManager:
        if edit == "steer":
            return steer(lm, mask, to=key[1], stats=stats, source=source, mode=mode,
                         strength=strength, allow_mismatch=allow_mismatch)
        if edit == "boost":
            return boost(lm, mask, factor=factor, allow_mismatch=allow_mismatch)
        return ablate(lm, mask, value=value, stats=stats, allow_mismatch=allow_mismatch)

    # A block per target language, a condition per (variant, target) holding its mask in
    # its own block only: the engine's empty mask elsewhere reuses the baseline, unmeasured.
    empty = NeuronMask.empty(lm.n_layers, lm.d_mlp)
    conditions = {
        key: (lambda block, key=key, mask=mask: mask if targets[block] == key[1] else empty)
        for key, mask in masks.items()
    }
    runs = controlled_runs(conditions, measure, intervene, n_blocks=len(targets),
                           controls=controls, seed=seed, desc=f"generation language ({edit})",
                           progress=progress)
    rng = np.random.default_rng(seed)
    unit_draws = [resample.draws(len(prompt_of[lang]), n_boot, rng) for lang in targets]
    rows: list[dict[str, Any]] = []
    tables = [runs.baseline[b].assign(variant="", language=lang, condition="baseline")
              for b, lang in enumerate(targets)]
    for (variant, lang), run in runs.conditions.items():
        b = targets.index(lang)
        base, hit = runs.baseline[b], run.hit[b]
        ctrl = [c[b] for c in run.controls]
        tables.append(hit.assign(variant=variant, language=lang, condition="edited"))
        tables += [c.assign(variant=variant, language=lang, condition=f"control {i}")
                   for i, c in enumerate(ctrl)]
        for name in MEASURES:
            rows.append({"variant": variant, "language": lang, "measure": name, "edit": edit,
                         "n_neurons": run.sizes[b]}
                        | _cells(base[name].to_numpy(float), hit[name].to_numpy(float),
                                 [c[name].to_numpy(float) for c in ctrl], unit_draws[b], ci))
    record = {
        "model": lm.describe(),
        "languages": targets,
        "edit": edit,
        "backend": repr(detect),
        "recipe": {"classes": variants, "factor": factor, "mode": mode, "source": source,
                   "strength": strength, "value": value, "layers": layers,
                   "max_new_tokens": max_new_tokens, "stop": list(stop), "controls": controls,
                   "seed": seed, "n_boot": n_boot, "ci": ci, "max_length": max_length,
                   "overflow": overflow,
                   "n_prompts": {lang: len(prompt_of[lang]) for lang in targets}},
        "versions": library_versions(),
    }
    record = json.loads(json.dumps(record, default=str))  # as a reader of the saved file sees it
    generations = pd.concat(tables, ignore_index=True)[_GENERATION_COLUMNS]
    return GenerationLanguage(pd.DataFrame(rows)[_COLUMNS], generations, record)


def _cells(base: np.ndarray, hit: np.ndarray, ctrl: list[np.ndarray], unit_draws: np.ndarray,
           ci: float) -> dict[str, Any]:
    """Baseline, edited and control means over prompts, with paired intervals (NaN
    prompts left out, as `resample.mean_interval` does)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no prompt with a value: NaN
        baseline, value = float(np.nanmean(base)), float(np.nanmean(hit))
        change, low, high = paired_interval(hit, base, unit_draws, ci)
        if ctrl:
            per_prompt = np.nanmean(np.stack(ctrl), axis=0)  # mean over the controls
            control_change, c_low, c_high = paired_interval(per_prompt, base, unit_draws, ci)
            over, o_low, o_high = paired_interval(hit, per_prompt, unit_draws, ci)
            control_value = float(np.nanmean(per_prompt))
        else:
            control_value = control_change = c_low = c_high = over = o_low = o_high = float("nan")
    return {"n_prompts": int(np.isfinite(base).sum()), "baseline": baseline, "value": value,
            "change": change, "ci_low": low, "ci_high": high, "control_value": control_value,
            "control_change": control_change, "control_ci_low": c_low, "control_ci_high": c_high,
            "over_control": over, "over_control_ci_low": o_low, "over_control_ci_high": o_high}

