"""The study's steps, declared once: what each computes, from what, and where it is kept.

A study is a chain of steps (activation statistics -> LAPE and ternary neurons ->
logit lens -> stage map -> deactivation matrix on held-out texts -> deactivation
inside each stage -> sharing profile on parallel items), followed by the report.
[`STEPS`][tl_multilingual.study.steps.STEPS] declares each one as a [`Step`][tl_multilingual.study.steps.Step]: its name, what it
computes, the type and path of its result in the study folder, the steps it depends
on, the settings that enter its cache key, and how the result is saved and loaded.
[`Study.run()`][tl_multilingual.study.pipeline.Study.run] runs the table in order,
[`check_output_folder()`][tl_multilingual.study.pipeline.check_output_folder] knows what a study writes from it, and
[`write_report()`][tl_multilingual.study.report.write_report] loads the results it lists.

A step's cache key is made of the values of its declared settings, the keys of the
steps it depends on, the model and the corpus: a step is recomputed exactly when
something that enters it changed, and a dependency cannot be left out of a key
without being left out of the step.

A new step is one entry in `STEPS` and the function it runs, e.g. for an
experiment in ``experiments/``::

    def _my_effect(study, done):
        return my_effect(study.lm, done["neurons"][study.settings.method], study.evaluation,
                         seed=study.settings.seed, n_boot=study.settings.n_boot)

    STEPS["my_effect"] = Step(
        "my_effect", "my effect of each language's neurons",
        path="my_effect", result=MyEffect, run=_my_effect, depends=("neurons",),
        settings=("eval_texts", "held_out", "min_held_out", "seed", "n_boot"))

The stage map is passed to the steps that use it; nothing is attached to the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import CorpusError, TLMultilingualError, UnsupportedModelError
from ..experiments.deactivation import DeactivationResult, deactivation_matrix, variant_mask
from ..experiments.stage_deactivation import StageEffects, stage_effects
from ..inputs.items import ParallelItem, ParallelItems
from ..inputs.prompts import LensPrompt, translation
from ..neurons.classes import LanguageNeurons
from ..neurons.collect import collect_stats
from ..neurons.identification import METHODS, identify
from ..neurons.sharing_classes import Sharing, sharing
from ..neurons.stats import ActivationStats
from ..stages.lens import LensResult, language_lens
from ..stages.mapping import map_stages
from ..stages.segmentation import check_layer_count
from ..stages.stage_map import StageMap

__all__ = ["StudySettings", "Step", "Skip", "STEPS", "key", "settings_of"]


@dataclass
class StudySettings:
    """What a study computes, and how much of the data it uses."""

    batch_size: int = 8
    max_tokens_per_language: int | None = None
    held_out: float | int = 0.2  # fraction (or count) of each language held out of the statistics
    min_held_out: int = 5  # texts held out at least, whatever the fraction
    min_train_texts: int = 5  # texts left for the statistics at least
    eval_texts: int = 10
    variants: tuple[str, ...] = ("specific", "specific+related", "specific+related+general")
    controls: int = 3
    control_variant: str | None = None  # controls for this variant only (None: for every one)
    top_rate: float = 0.01
    method: str = "ternary"  # the identification method whose neurons the later steps use
    lens_pairs: int = 3
    lens_words: int = 40
    sharing_items: int = 30
    stage_variant: str = "specific"  # neurons deactivated inside each stage
    stage_words: int = 10  # lens prompts per language for the stage effects
    allow_unsupported_stages: bool = False  # run the stage effects on a map the data do not support
    n_boot: int = 200
    seed: int = 0
    checkpoint_every: int = 50  # batches between two saves of the statistics' running totals


@dataclass(frozen=True)
class Skip:
    """What a step returns when the study's data do not allow it (``reason``: why, in
    words). A skipped step saves nothing and its key is None in its dependants' keys."""

    reason: str


@dataclass(frozen=True)
class Step:
    """One step of a study.

    Attributes:
        name: the step's name in the manifest, the progress lines and the results.
        computes: what it computes, in words.
        path: where its result is saved, relative to the study folder.
        result: the type of its result; its ``save(path)`` and ``load(path)`` are used
            unless ``save`` and ``load`` are given.
        run: ``run(study, done) -> result``: computes the result from the
            [`Study`][tl_multilingual.study.pipeline.Study] (its model ``lm``, ``settings``, ``train``,
            ``evaluation``, ``held``, ``words``, ``progress``) and ``done``, the results
            of the steps it depends on (None for a skipped one); returns a
            [`Skip`][tl_multilingual.study.steps.Skip] when the data do not allow the step.
        depends: the steps whose results it reads; their keys enter its key.
        settings: the [`StudySettings`][tl_multilingual.study.steps.StudySettings] fields whose values enter its
            key (``"words"``: the study's word list).
        save: ``save(result, path)``, when the result's own ``save`` does not apply.
        load: ``load(path) -> result``, likewise.
        tables: ``tables(result, settings) -> {name: DataFrame}``, the tables the
            report writes from the result (``tables/<name>.csv``).
        required: whether the report counts the study as in progress until the step
            has run.
        check: ``check(study)``, run before any step: raises (the library's error) when
            the study can never run this step, so that nothing is written first.
    """

    name: str
    computes: str
    path: str
    result: Any
    run: Callable[[Any, Mapping[str, Any]], Any]
    depends: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()
    save: Callable[[Any, Path], Any] | None = None
    load: Callable[[Path], Any] | None = None
    tables: Callable[[Any, StudySettings], dict[str, pd.DataFrame]] | None = field(
        default=None, repr=False)
    required: bool = False
    check: Callable[[Any], None] | None = None

    def save_result(self, result: Any, path: Path) -> Any:
        """Save ``result`` at ``path`` (the declared ``save``, else the result's own)."""
        return self.save(result, path) if self.save is not None else result.save(path)

    def load_result(self, path: Path) -> Any:
        """Load the result saved at ``path`` (the declared ``load``, else the type's)."""
        return self.load(path) if self.load is not None else self.result.load(path)


def key(data: Any) -> str:
    """A short, stable fingerprint of plain data (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- the steps' inputs ------------------------------------------------------------------

_LENS_PAIRS = [("fr", "zh"), ("de", "ru"), ("es", "ja"), ("ru", "fr"), ("zh", "de")]


def lens_prompts(words: list[dict[str, str]] | None, languages: tuple[str, ...],
                 settings: StudySettings) -> list[LensPrompt]:
    """Wendler et al.'s translation prompts between non-English languages (French to
    Chinese first, as in the paper), tracking English; empty when the word list does not
    cover two non-English languages of the corpus and English."""
    if not words:
        return []
    langs = [lang for lang in languages if lang != "en" and all(lang in w for w in words)]
    if len(langs) < 2 or not all("en" in w for w in words):
        return []
    chosen = words[: settings.lens_words]
    preferred = [p for p in _LENS_PAIRS if p[0] in langs and p[1] in langs]
    generic = [(langs[(i + 1) % len(langs)], langs[i]) for i in range(len(langs))]
    pairs = list(dict.fromkeys(preferred + generic))[: settings.lens_pairs]
    prompts: list[LensPrompt] = []
    for src, tgt in pairs:
        prompts += translation(chosen, src=src, tgt=tgt, shots=3, seed=settings.seed)
    return prompts


def stage_prompts(words: list[dict[str, str]] | None, languages: tuple[str, ...],
                  settings: StudySettings) -> list[LensPrompt]:
    """Translation prompts into every language the word list covers (from the next such
    language), so each language's neurons have answers of their own to read."""
    if not words:
        return []
    langs = [lang for lang in languages if all(lang in w for w in words)]
    if len(langs) < 2:
        return []
    chosen = words[: settings.stage_words]
    prompts: list[LensPrompt] = []
    for i, tgt in enumerate(langs):
        src = langs[(i + 1) % len(langs)]
        prompts += translation(chosen, src=src, tgt=tgt, shots=3, seed=settings.seed, track=())
    return prompts


def sharing_items(study: Any) -> ParallelItems | None:
    """The first ``sharing_items`` held-out texts as parallel items (None when the corpus
    is not parallel)."""
    held = study.held
    if not held.is_parallel:
        return None
    n = min(study.settings.sharing_items, len(held[held.languages[0]]))
    items = [ParallelItem(f"held-{i}", {lang: held[lang][i].text for lang in held.languages})
             for i in range(n)]
    try:
        return ParallelItems(items, languages=held.languages)
    except CorpusError:
        return None


# -- the steps --------------------------------------------------------------------------


def _statistics(study: Any, done: Mapping[str, Any]) -> ActivationStats:
    s = study.settings
    return collect_stats(study.lm, study.train, batch_size=s.batch_size,
                         max_tokens_per_language=s.max_tokens_per_language,
                         progress=study.progress, checkpoint=getattr(study, "checkpoint", None),
                         checkpoint_every=s.checkpoint_every)


def _neurons(study: Any, done: Mapping[str, Any]) -> dict[str, LanguageNeurons]:
    stats, top_rate = done["statistics"], study.settings.top_rate
    return {method: identify(stats, method=method, top_rate=top_rate) for method in METHODS}


def _save_neurons(result: dict[str, LanguageNeurons], path: Path) -> None:
    for method, neurons in result.items():
        neurons.save(path / method)


def _load_neurons(path: Path) -> dict[str, LanguageNeurons]:
    return {method: LanguageNeurons.load(path / method) for method in METHODS
            if (path / method).exists()}


def _lens(study: Any, done: Mapping[str, Any]) -> LensResult | Skip:
    prompts = lens_prompts(study.words, study.corpus.languages, study.settings)
    if not prompts:
        return Skip("no word list covers two non-English languages of the corpus")
    return language_lens(study.lm, prompts, batch_size=study.settings.batch_size,
                         progress=study.progress)


def _check_stages(study: Any) -> None:
    try:
        check_layer_count(study.lm.n_layers)
    except TLMultilingualError as err:
        raise UnsupportedModelError(f"{study.lm.name} cannot be studied: {err}") from None


def _stages(study: Any, done: Mapping[str, Any]) -> StageMap:
    s = study.settings
    return map_stages(done["neurons"][s.method], done["lens"], stats=done["statistics"],
                      n_boot=s.n_boot, seed=s.seed)


def _deactivation(study: Any, done: Mapping[str, Any]) -> DeactivationResult:
    s = study.settings
    controls = s.controls if s.control_variant is None else {s.control_variant: s.controls}
    return deactivation_matrix(study.lm, done["neurons"][s.method], study.evaluation,
                               classes=list(s.variants), controls=controls, seed=s.seed,
                               n_boot=s.n_boot, batch_size=s.batch_size, progress=study.progress,
                               checkpoint=getattr(study, "checkpoint", None))


def _stage_effects(study: Any, done: Mapping[str, Any]) -> StageEffects | Skip:
    s = study.settings
    stages = done["stages"]
    if not stages.supported and not s.allow_unsupported_stages:
        return Skip(f"the data do not support the stage map ({stages.describe()}), so no stage "
                    "was deactivated; the setting allow_unsupported_stages "
                    "(--allow-unsupported-stages) runs it on that map anyway")
    neurons = done["neurons"][s.method]
    if not any(variant_mask(neurons, s.stage_variant, lang).count()
               for lang in neurons.languages if lang in study.evaluation.languages):
        return Skip(f"no language has a '{s.stage_variant}' neuron, so no stage holds one "
                    "to deactivate")
    prompts = stage_prompts(study.words, study.corpus.languages, s)
    return stage_effects(study.lm, neurons, stages, study.evaluation,
                         lens_prompts=prompts, variant=s.stage_variant, controls=s.controls,
                         seed=s.seed, n_boot=s.n_boot, batch_size=s.batch_size,
                         progress=study.progress, allow_unsupported=s.allow_unsupported_stages,
                         checkpoint=getattr(study, "checkpoint", None))


def _sharing(study: Any, done: Mapping[str, Any]) -> Sharing | Skip:
    items = sharing_items(study)
    if items is None:
        return Skip("the corpus is not parallel")
    return sharing(study.lm, items, batch_size=study.settings.batch_size, progress=study.progress)


def _neuron_tables(result: dict[str, LanguageNeurons],
                   settings: StudySettings) -> dict[str, pd.DataFrame]:
    chosen = result[settings.method]
    tables = {"neuron_classes_per_layer": chosen.layer_counts(),
              "neurons_per_language": chosen.summary()}
    tables.update({f"{method}_per_language": neurons.summary()
                   for method, neurons in result.items() if method != settings.method})
    sensitivity = chosen.lambda_sensitivity()
    if not sensitivity.empty:
        tables["lambda_sensitivity"] = sensitivity
    return tables


def _stage_tables(stages: StageMap, settings: StudySettings) -> dict[str, pd.DataFrame]:
    tables = {"stages": stages.to_frame(), "stage_maps": stages.summary()}
    if stages.agreement is not None:
        tables["stage_agreement"] = stages.agreement
    return tables


_HELD = ("held_out", "min_held_out", "seed")  # the settings that choose the held-out texts
_EVALUATION = (*_HELD, "eval_texts")  # ... and the evaluation texts among them

STEPS: dict[str, Step] = {
    step.name: step
    for step in (
        Step("statistics", "activation statistics of the training texts",
             path="statistics", result=ActivationStats, run=_statistics,
             settings=("max_tokens_per_language", *_HELD),
             tables=lambda r, s: {"token_counts": r.to_frame()}, required=True),
        Step("neurons", "language neurons by each identification method (a LanguageNeurons each)",
             path="neurons", result=LanguageNeurons, run=_neurons,
             depends=("statistics",), settings=("top_rate",),
             save=_save_neurons, load=_load_neurons, tables=_neuron_tables, required=True),
        Step("lens", "the multilingual logit lens on translation prompts",
             path="lens", result=LensResult, run=_lens,
             settings=("lens_pairs", "lens_words", "seed", "words"),
             tables=lambda r, s: {"lens": r.summary(n_boot=500)}),
        Step("stages", "the four-stage map of the layers the evidence supports, with its verdict",
             path="stages.json", result=StageMap, run=_stages,
             depends=("statistics", "neurons", "lens"), settings=("method", "n_boot", "seed"),
             tables=_stage_tables, required=True, check=_check_stages),
        Step("deactivation", "the deactivation matrix on held-out texts",
             path="deactivation", result=DeactivationResult, run=_deactivation,
             depends=("neurons",),
             settings=("method", "variants", "controls", "control_variant", "n_boot", *_EVALUATION),
             tables=lambda r, s: {"deactivation": r.frame}, required=True),
        Step("stage_effects", "each language's neurons deactivated inside each stage",
             path="stage_effects", result=StageEffects, run=_stage_effects,
             depends=("neurons", "stages"),
             settings=("method", "stage_variant", "controls", "n_boot", "stage_words", "words",
                       "allow_unsupported_stages", *_EVALUATION),
             tables=lambda r, s: {"stage_effects": r.frame}),
        Step("sharing", "sharing classes on held-out parallel items",
             path="sharing", result=Sharing, run=_sharing,
             settings=("sharing_items", *_HELD),
             tables=lambda r, s: {"sharing_profile": r.layer_profile(),
                                  "sharing_stability": r.stability()}),
    )
}
"""The study's steps in the order they run, by name."""


def settings_of(record: Mapping[str, Any] | None) -> StudySettings:
    """The settings a manifest records (``asdict(settings)``); a field it lacks (a study
    made before the field existed) takes its default."""
    known = {f.name for f in fields(StudySettings)}
    values = {k: v for k, v in (record or {}).items() if k in known}
    if isinstance(values.get("variants"), list):
        values["variants"] = tuple(values["variants"])
    return StudySettings(**values)
