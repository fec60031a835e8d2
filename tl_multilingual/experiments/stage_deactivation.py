"""Causal evidence per stage: [`stage_effects()`][tl_multilingual.experiments.stage_deactivation.stage_effects].

For every stage of a [`StageMap`][tl_multilingual.stages.stage_map.StageMap] and every language, the language's neurons
(a class variant, as in [`tl_multilingual.deactivation_matrix()`][tl_multilingual.experiments.deactivation.deactivation_matrix]) are deactivated
*inside that stage's layers only*, and the model is read two ways:

- perplexity of held-out texts: the relative change of the language's own
  perplexity and the mean relative change of the other languages';
- the logit lens (Wendler et al., 2024) on prompts whose answer is in the language:
  the change in the answer's probability at every layer (where it starts, how much
  at the output).

Random neuron sets with the same number of neurons per layer (drawn outside the
mask, [`NeuronMask.controls()`][tl_multilingual.neurons.masks.NeuronMask.controls]) are deactivated the same way. Intervals are paired
percentile bootstraps over texts or prompts ([`tl_multilingual.resample`][tl_multilingual.resample]): the
same draw of units for the deactivated, control and unmodified runs.

A stage *carries* a language's effect when the own-language change exceeds both the
controls' and the other languages' (both interval lower bounds above zero). A stage
that holds none of a language's neurons is *not measured* for it: its values are
missing (NaN) with a ``note``, never a measured zero.

The experiment follows the map's verdict
([`Verdict`][tl_multilingual.stages.stage_map.Verdict]): a map the data do not support
(``"not supported"``) is refused unless ``allow_unsupported=True``, and the result
records which map it used (`StageEffects.stage_map`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import resample
from ..causal.evaluate import text_nll
from ..causal.interventions import ablate
from ..errors import IdentificationError, TLMultilingualError
from ..hub import HubMixin
from ..inputs.corpus import Corpus
from ..inputs.prompts import LensPrompt
from ..model.adapters import adapt
from ..model.tokens import Overflow
from ..neurons.classes import LanguageNeurons
from ..neurons.masks import NeuronMask
from ..persist import read_json, write_text
from ..provenance import check_fits
from ..stages.lens import language_lens
from ..stages.stage_map import STAGES, StageMap
from .deactivation import variant_mask
from .engine import RunStore, controlled_runs, inputs_key, load_frame, save_frame

if TYPE_CHECKING:
    from ..stages.lens import LensResult

__all__ = ["stage_effects", "StageEffects"]

_KIND = "tl_multilingual.StageEffects"


@dataclass
class StageEffects(HubMixin):
    """Outcome of [`stage_effects()`][tl_multilingual.experiments.stage_deactivation.stage_effects].

    Attributes:
        frame: one row per (stage, language): ``layers`` (first-last), ``n_neurons``
            deactivated; perplexity: ``own_change`` (relative change of the language's
            own perplexity) with ``own_ci_low/high``, ``others_change`` (mean relative
            change of the other languages), ``control_change`` (own change under the
            random controls, mean over them), ``over_control`` = own - control and
            ``over_others`` = own - others, each with a paired interval; ``carries``
            (both lower bounds above zero); lens: ``lens_output_change`` (change of the
            answer's probability at the last layer) with its interval,
            ``lens_control_change``, ``lens_peak_layer`` and ``lens_peak_change``
            (the layer where the probability falls most, and by how much); ``n_texts``
            and ``n_prompts``; ``measured`` (False where the stage holds none of the
            language's neurons: every value is then missing) and ``note``.
        lens: one row per (stage, language, condition, layer): mean change of the
            answer probability, with a paired interval (``condition``: ``deactivated``
            or ``control``).
        variant: the neuron class variant deactivated.
        ci: the intervals' coverage.
        stage_map: which stage map was used, its stages and verdict
            ([`StageMap.label()`][tl_multilingual.stages.stage_map.StageMap.label]).
        evaluated: the languages whose perplexity was read.
    """

    frame: pd.DataFrame
    lens: pd.DataFrame
    variant: str
    ci: float = 0.95
    stage_map: str = ""
    evaluated: tuple[str, ...] = ()

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def matrix(self, value: str = "over_control") -> pd.DataFrame:
        """Stages (rows, in order) by languages (columns) of one column of `frame`."""
        if value not in self.frame.columns:
            raise TLMultilingualError(f"no column {value!r}; have {list(self.frame.columns)}")
        table = self.frame.pivot(index="stage", columns="language", values=value)
        stages = [s for s in STAGES if s in table.index]
        return table.loc[stages, list(dict.fromkeys(self.frame["language"]))]

    def carriers(self) -> list[str]:
        """Stages that carry the language-specific effect for at least one language."""
        carried = self.frame[self.frame["carries"].fillna(False).astype(bool)]
        return [s for s in STAGES if s in set(carried["stage"])]

    def few_units(self) -> bool:
        """Whether some interval rests on fewer than [`resample.MIN_UNITS`][tl_multilingual.resample.MIN_UNITS] texts."""
        return bool(self.frame["n_texts"].min() < resample.MIN_UNITS)

    def _measured(self) -> pd.Series:
        if "measured" not in self.frame:
            return pd.Series(True, index=self.frame.index)
        return self.frame["measured"].astype(bool)

    def finding(self) -> str:
        """The result in plain words."""
        frame = self.frame
        measured = self._measured()
        parts, unmeasured = [], []
        for stage in STAGES:
            rows = frame[frame["stage"] == stage]
            if rows.empty:
                continue
            done = rows[measured[rows.index]]
            n = int(done["carries"].astype(bool).sum())
            parts.append(f"{stage.replace('_', ' ')} {n} of {len(done)}" if len(done)
                         else f"{stage.replace('_', ' ')} not measured")
            if len(done) < len(rows):
                missing = ", ".join(rows[~measured[rows.index]]["language"])
                unmeasured.append(f"{stage.replace('_', ' ')} ({missing})")
        carriers = self.carriers()
        if carriers:
            head = (f"Deactivating a language's '{self.variant}' neurons inside one stage raised that language's "
                    f"perplexity beyond random neurons and beyond the other languages in "
                    f"{', '.join(s.replace('_', ' ') for s in carriers)}")
        else:
            head = (f"Deactivating a language's '{self.variant}' neurons inside any one stage did not raise its own "
                    "perplexity beyond both random neurons and the other languages")
        text = head + f" (languages per stage: {'; '.join(parts)})."
        if unmeasured:
            text += (" Not measured, for want of the languages' neurons in those layers: "
                     + "; ".join(unmeasured) + ".")
        if frame["lens_output_change"].notna().any():
            means = frame.groupby("stage", sort=False)["lens_output_change"].mean()
            worst = means.idxmin()
            peak = frame[frame["stage"] == worst]["lens_peak_layer"].median()  # NaN when nothing fell
            text += (f" Through the logit lens, the answer in the deactivated language lost most probability at the "
                     f"output when {worst.replace('_', ' ')} was hit (mean change {means[worst]:+.3g}"
                     + (f", largest drop around layer {peak:.0f})." if np.isfinite(peak) else ")."))
        if self.few_units():
            text += (f" Intervals rest on fewer than {resample.MIN_UNITS} texts per language "
                     f"({int(frame['n_texts'].min())}): read them with caution.")
        evaluated = self.evaluated or tuple(dict.fromkeys(frame["language"]))
        if len(evaluated) < 2:
            text += " With one language evaluated there is no other-language comparison."
        if self.stage_map:
            text += f" Stages: the {self.stage_map}."
        return text

    def save(self, path: str | Path) -> Path:
        """Save to the folder ``path``: ``cells.csv``, ``lens.csv``, ``result.json``."""
        folder = Path(path)
        write_text(folder / "cells.csv", self.frame.to_csv(index=False))
        write_text(folder / "lens.csv", self.lens.to_csv(index=False))
        meta = {"kind": _KIND, "variant": self.variant, "ci": self.ci, "stage_map": self.stage_map,
                "evaluated": list(self.evaluated)}
        write_text(folder / "result.json", json.dumps(meta))
        return folder

    @classmethod
    def load(cls, path: str | Path) -> StageEffects:
        """Load a result saved with [`save()`][tl_multilingual.experiments.stage_deactivation.StageEffects.save].

        Raises:
            TLMultilingualError: if the folder holds no saved stage effects.
        """
        folder = Path(path)
        try:
            meta = read_json(folder / "result.json", error=TLMultilingualError)
            if not isinstance(meta, dict) or meta.get("kind") != _KIND:
                raise ValueError(f"kind {meta.get('kind')!r}")
            return cls(pd.read_csv(folder / "cells.csv"), pd.read_csv(folder / "lens.csv"),
                       meta["variant"], float(meta.get("ci", 0.95)), str(meta.get("stage_map", "")),
                       tuple(meta.get("evaluated", ())))
        except (OSError, ValueError, KeyError, TLMultilingualError) as err:
            raise TLMultilingualError(f"{folder} is not a saved stage-effects result: {err}") from None


def _save_run(value: tuple[pd.DataFrame, LensResult | None], folder: Path) -> None:
    save_frame(value[0], folder / "nll.json")
    if value[1] is not None:
        value[1].save(folder / "lens")


def _load_run(folder: Path) -> tuple[pd.DataFrame, LensResult | None]:
    from ..stages.lens import LensResult

    return load_frame(folder / "nll.json"), (LensResult.load(folder / "lens") if (folder / "lens").exists()
                                               else None)


def _target(prompt: LensPrompt) -> str | None:
    return next(iter(prompt.answers), None) if prompt.answers else None


def _ppl_replicates(nll: np.ndarray, base: np.ndarray, tokens: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Relative perplexity change ``exp((sum nll - sum base) / sum tokens) - 1`` per
    draw of texts ``[n_boot, n]`` (texts pooled, as perplexity pools them)."""
    return np.exp((nll[index].sum(1) - base[index].sum(1)) / np.maximum(tokens[index].sum(1), 1)) - 1.0


def _ppl_change(nll: np.ndarray, base: np.ndarray, tokens: np.ndarray) -> float:
    return float(np.exp((nll.sum() - base.sum()) / max(tokens.sum(), 1)) - 1.0)


def stage_effects(
    model: Any,
    neurons: LanguageNeurons,
    stage_map: StageMap,
    eval_texts: Corpus,
    *,
    lens_prompts: Sequence[LensPrompt] | None = None,
    variant: str = "specific",
    languages: Sequence[str] | None = None,
    stages: Sequence[str] = STAGES,
    controls: int = 3,
    seed: int = 0,
    n_boot: int = 1000,
    ci: float = 0.95,
    batch_size: int = 8,
    progress: bool = True,
    allow_mismatch: bool = False,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
    allow_unsupported: bool = False,
    checkpoint: str | Path | None = None,
) -> StageEffects:
    """Which stages carry the language-specific effect of a language's neurons.

    Args:
        model: a model or `ModelAdapter`.
        neurons: identified neurons.
        stage_map: the stages (from [`tl_multilingual.map_stages()`][tl_multilingual.stages.mapping.map_stages], or
            [`StageMap.from_boundaries()`][tl_multilingual.stages.stage_map.StageMap.from_boundaries]); the default map of
            ``map_stages`` is the one the evidence supports.
        eval_texts: held-out texts per language (perplexity).
        lens_prompts: prompts ending before an answer ([`tl_multilingual.inputs.prompts`][tl_multilingual.inputs.prompts]);
            a prompt's first answer language is its target. None: no lens readout.
        variant: the neuron classes deactivated, e.g. ``"specific"`` or
            ``"specific+related"``.
        languages: languages whose neurons are deactivated (default: those of
            ``neurons`` that ``eval_texts`` has).
        stages: the stages to test.
        controls: random same-size-per-layer neuron sets per (stage, language).
        seed: seed of the controls and of the bootstrap.
        n_boot: bootstrap replicates.
        ci: the intervals' coverage.
        batch_size: texts or prompts per forward pass.
        progress: show a progress bar.
        allow_mismatch: accept neurons of another model of the same shape.
        max_length: longest sequence fed to the model (default: its context size).
        overflow: ``"truncate"``, ``"split"`` (texts only; prompts are truncated) or
            ``"error"``; see [`tl_multilingual.model.tokens`][tl_multilingual.model.tokens].
        allow_unsupported: run on a stage map whose verdict is ``"not supported"``.
        checkpoint: a folder where every finished run is saved; a rerun with the same
            inputs reads them back instead of running them again (see
            [`deactivation_matrix()`][tl_multilingual.experiments.deactivation.deactivation_matrix]).

    Returns:
        [`StageEffects`][tl_multilingual.experiments.stage_deactivation.StageEffects] (``to_frame()``, ``matrix()``, ``finding()``).

    Raises:
        IdentificationError: neurons of another shape, or of another model (unless
            ``allow_mismatch``).
        TLMultilingualError: when the stage map does not fit the model, the data do
            not support it (unless ``allow_unsupported``), or a stage or language is
            unknown.
    """
    if not allow_unsupported:
        stage_map.require_support("stage_effects")
    lm = adapt(model)
    if stage_map.n_layers != lm.n_layers or neurons.n_layers != lm.n_layers:
        raise TLMultilingualError(
            f"the stage map ({stage_map.n_layers} layers) and neurons ({neurons.n_layers}) must fit the model "
            f"({lm.n_layers} layers)"
        )
    check_fits(lm, neurons, what="the neurons", error=IdentificationError,
               allow_mismatch=allow_mismatch)
    for stage in stages:
        stage_map.layers(stage)  # unknown stage: a clear error before any run
    langs = [lang for lang in (languages or neurons.languages) if lang in eval_texts.languages]
    if not langs:
        raise TLMultilingualError(f"no language of {list(languages or neurons.languages)} has evaluation texts")
    prompts = list(lens_prompts or [])
    evaluated = list(eval_texts.languages)
    lens_overflow: Overflow = "truncate" if overflow == "split" else overflow  # prompts: no split

    def measure(block: int) -> tuple[pd.DataFrame, LensResult | None]:
        nll = text_nll(lm, eval_texts, batch_size=batch_size, max_length=max_length,
                       overflow=overflow)
        if not prompts:
            return nll, None
        return nll, language_lens(lm, prompts, batch_size=batch_size, max_length=max_length,
                                  overflow=lens_overflow)

    every = {(stage, lang): variant_mask(neurons, variant, lang).restrict(stage_map.layers(stage))
             for stage in stages for lang in langs}
    cells = {key: mask for key, mask in every.items() if mask.count() > 0}
    if not cells:
        raise TLMultilingualError(
            f"no stage holds any '{variant}' neuron of {langs}: nothing to deactivate")

    def intervene(key: tuple[str, str], mask: NeuronMask) -> Any:
        return ablate(lm, mask, allow_mismatch=allow_mismatch)

    store = None if checkpoint is None else RunStore(
        Path(checkpoint),
        inputs_key(texts=eval_texts.fingerprint(), prompts=[repr(p) for p in prompts], model=lm.describe(),
                   batch_size=batch_size, max_length=max_length, overflow=overflow),
        _save_run, _load_run)
    runs = controlled_runs({key: (lambda block, mask=mask: mask) for key, mask in cells.items()},
                           measure, intervene, controls=controls, seed=seed, desc="stage effects",
                           progress=progress, store=store)
    (baseline,) = runs.baseline
    base_nll, base_lens = baseline
    rng = np.random.default_rng(seed)
    texts = {lang: base_nll[base_nll["language"] == lang].sort_values("text") for lang in evaluated}
    text_draws = {lang: resample.draws(len(texts[lang]), n_boot, rng) for lang in evaluated}
    targets = [_target(p) for p in prompts]
    rows, lens_rows = [], []
    for stage, lang in every:
        span = stage_map.layers(stage)
        layers = f"{span.start}-{span.stop - 1}"
        if (stage, lang) not in cells:
            rows.append({"stage": stage, "language": lang, "layers": layers, "n_neurons": 0,
                         "measured": False, "carries": False,
                         "note": f"not measured: no '{variant}' neurons of {lang} in layers "
                                 f"{layers}"})
            continue
        run = runs.conditions[(stage, lang)]
        (hit,), ctrl = run.hit, [c[0] for c in run.controls]
        row = _perplexity_row(texts, hit[0], [c[0] for c in ctrl], lang, text_draws, ci)
        row.update({"stage": stage, "language": lang, "layers": layers, "n_neurons": run.sizes[0],
                    "measured": True, "note": ""})
        row.update(_lens_row(base_lens, hit[1], [c[1] for c in ctrl], targets, lang, stage, n_boot,
                             ci, rng, lens_rows))
        rows.append(row)
    columns = ["stage", "language", "layers", "n_neurons", "n_texts", "own_change", "own_ci_low", "own_ci_high",
               "others_change", "control_change", "over_control", "over_control_ci_low", "over_control_ci_high",
               "over_others", "over_others_ci_low", "over_others_ci_high", "carries", "n_prompts",
               "lens_output_change", "lens_output_ci_low", "lens_output_ci_high", "lens_control_change",
               "lens_peak_layer", "lens_peak_change", "measured", "note"]
    lens_columns = ["stage", "language", "condition", "layer", "change", "ci_low", "ci_high"]
    frame = pd.DataFrame(rows).reindex(columns=columns)
    return StageEffects(frame, pd.DataFrame(lens_rows, columns=lens_columns), variant, ci,
                        stage_map.label(), tuple(evaluated))


def _perplexity_row(
    texts: dict[str, pd.DataFrame], hit: pd.DataFrame, ctrl: list[pd.DataFrame], lang: str,
    draws: dict[str, np.ndarray], ci: float,
) -> dict[str, Any]:
    def arrays(frame: pd.DataFrame, language: str) -> np.ndarray:
        return frame[frame["language"] == language].sort_values("text")["nll"].to_numpy(float)

    own_reps, ctrl_reps, other_reps = None, [], []
    values: dict[str, Any] = {}
    for language, base in texts.items():
        b, tokens = base["nll"].to_numpy(float), base["tokens"].to_numpy(float)
        h = arrays(hit, language)
        reps = _ppl_replicates(h, b, tokens, draws[language])
        if language == lang:
            values["own_change"] = _ppl_change(h, b, tokens)
            own_reps = reps
            changes = [_ppl_change(arrays(c, language), b, tokens) for c in ctrl]
            values["control_change"] = float(np.mean(changes)) if changes else float("nan")
            ctrl_reps = [_ppl_replicates(arrays(c, language), b, tokens, draws[language]) for c in ctrl]
            values["n_texts"] = len(b)
        else:
            other_reps.append((_ppl_change(h, b, tokens), reps))
    assert own_reps is not None
    values["others_change"] = float(np.mean([c for c, _ in other_reps])) if other_reps else float("nan")
    low, high = resample.percentile_interval(own_reps, ci)
    values.update(own_ci_low=low, own_ci_high=high)
    control = np.mean(ctrl_reps, axis=0) if ctrl_reps else np.full_like(own_reps, np.nan)
    values["over_control"] = values["own_change"] - values["control_change"]
    values["over_control_ci_low"], values["over_control_ci_high"] = resample.percentile_interval(own_reps - control, ci)
    others = np.mean([r for _, r in other_reps], axis=0) if other_reps else np.full_like(own_reps, np.nan)
    values["over_others"] = values["own_change"] - values["others_change"]
    values["over_others_ci_low"], values["over_others_ci_high"] = resample.percentile_interval(own_reps - others, ci)
    values["carries"] = bool(values["over_control_ci_low"] > 0 and values["over_others_ci_low"] > 0)
    return values


def _lens_row(
    base: LensResult | None, hit: LensResult | None, ctrl: list[LensResult | None], targets: list[str | None],
    lang: str, stage: str, n_boot: int, ci: float, rng: np.random.Generator, lens_rows: list,
) -> dict[str, Any]:
    empty = {"n_prompts": 0, "lens_output_change": np.nan, "lens_output_ci_low": np.nan,
             "lens_output_ci_high": np.nan, "lens_control_change": np.nan, "lens_peak_layer": np.nan,
             "lens_peak_change": np.nan}
    if base is None or hit is None or lang not in base.languages:
        return empty
    rows = [i for i, t in enumerate(targets) if t == lang]
    if not rows:
        return empty
    k = base.languages.index(lang)

    def answer(result: LensResult) -> np.ndarray:
        return result.probability[rows, :, k].numpy().astype(float)  # [prompt, layer]

    b = answer(base)
    unit_draws = resample.draws(len(rows), n_boot, rng)
    change, low, high = resample.mean_interval(answer(hit), baseline=b, ci=ci, unit_draws=unit_draws)
    ctrl_values = [answer(c) for c in ctrl if c is not None]
    control = np.mean(ctrl_values, axis=0) if ctrl_values else None
    for condition, (c, lo, hi) in (("deactivated", (change, low, high)),) + (
        (("control", resample.mean_interval(control, baseline=b, ci=ci, unit_draws=unit_draws)),)
        if control is not None else ()
    ):
        for layer in range(len(c)):
            lens_rows.append((stage, lang, condition, layer, float(c[layer]), float(lo[layer]), float(hi[layer])))
    peak = int(np.nanargmin(change)) if np.isfinite(change).any() and np.nanmin(change) < 0 else -1
    return {
        "n_prompts": len(rows),
        "lens_output_change": float(change[-1]),
        "lens_output_ci_low": float(low[-1]),
        "lens_output_ci_high": float(high[-1]),
        "lens_control_change": float(np.nanmean((control - b)[:, -1])) if control is not None else np.nan,
        "lens_peak_layer": peak if peak >= 0 else np.nan,
        "lens_peak_change": float(change[peak]) if peak >= 0 else np.nan,
    }
