"""Hand-made mutation testing: do the tests notice a plausible one-line bug?

Each mutant is one single-point change to one file of the package (an exact snippet
and its replacement) with the test files that should notice it. The script applies
the mutants one at a time to a temporary copy of the repository (the working tree is
never edited), runs those tests with a timeout, and prints per mutant

- ``killed``: the tests failed (or timed out, or could not import the mutated code);
- ``survived``: the tests passed: no test guards this behaviour;
- ``stale``: the snippet is not in the file (any more), or more than once: update the
  mutant after moving code. Stale mutants are listed, never silently skipped, and do
  not count in the score.

The score is killed / (killed + survived). Run it from anywhere::

    python tools/mutants.py                      # every mutant
    python tools/mutants.py --only collect-      # mutants whose name starts with this
    python tools/mutants.py --tests-rev HEAD~3   # the tests as they were at a revision
    python tools/mutants.py --list               # names and status of the snippets only
    python tools/mutants.py --options --only causal/interventions   # option mutants

``--options`` makes the mutants instead of reading the table below: it walks the public
signatures (every name of ``tl_multilingual.__all__``, the public functions of the modules
reached as attributes, and the public methods of the public classes) and, for each
parameter with a default, makes an ``ignored`` mutant (the parameter is rebound to its
default at the top of the function body) and, for a boolean, an ``inverted`` one (rebound
to ``not`` itself). Each runs the tests of the function's module (the test files the table
below names for that module, or ``tests/test_<module>.py``) and those of a few options that
have a file of their own (the length policy). There ``--only`` filters on the module path or
the mutant's name (``causal/interventions``, ``ablate.``); ``--skip`` leaves out the options
listed in ``OPTIONS_UNTESTED`` (progress bars, devices, the Hub) with their reasons.

It is not part of the test run. Each mutant runs a fresh pytest process (``-x``, so a
killed mutant stops at the first failure); on a small machine a full run takes a while:
use ``--only`` while working on one module, and ``--jobs`` where there are spare cores.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "tl_multilingual"
_IGNORED_EVERYWHERE = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", ".pytest_cache", "*.egg-info"
)
# Outputs beside the package (docs site, study folders, builds); never the package's own
# subpackages of the same name (tl_multilingual/study).
_IGNORED_AT_ROOT = {"site", "runs", "study", "build", "dist"}


def COPY_IGNORE(directory: str, names: list[str]) -> set[str]:
    ignored = set(_IGNORED_EVERYWHERE(directory, names))
    if Path(directory).resolve() == ROOT:
        ignored |= _IGNORED_AT_ROOT & set(names)
    return ignored


@dataclass(frozen=True)
class Mutant:
    """One single-point change: in ``file`` (relative to the package), ``original`` (which
    must occur exactly once) becomes ``replacement``; ``tests`` (files or node ids under
    ``tests/``) should fail on it."""

    name: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]


def m(name: str, file: str, original: str, replacement: str, *tests: str) -> Mutant:
    return Mutant(name, file, original, replacement, tuple(f"tests/{t}" for t in tests))


MUTANTS: list[Mutant] = [
    # -- collect: the streaming totals --------------------------------------------------
    m("collect-float32-sums", "neurons/collect.py",
      "dtype=torch.long, device=device),\n                torch.zeros(shape, dtype=torch.float64,",
      "dtype=torch.long, device=device),\n                torch.zeros(shape, dtype=torch.float32,",
      "test_collect.py"),
    m("collect-float32-squares", "neurons/collect.py",
      "torch.zeros(shape, dtype=torch.float64, device=device),\n            )",
      "torch.zeros(shape, dtype=torch.float32, device=device),\n            )",
      "test_collect.py"),
    m("collect-sums-of-gate-input", "neurons/collect.py",
      "for part in acts.split(self.chunk_rows):",
      "for part in flat.split(self.chunk_rows):",
      "test_collect.py"),
    m("collect-gate-not-act-fn", "neurons/collect.py",
      "acts = self.adapter.neuron_values(layer, flat)",
      "acts = flat",
      "test_collect.py"),
    m("collect-threshold-ge", "neurons/collect.py",
      "(acts > self.threshold)",
      "(acts >= self.threshold)",
      "test_collect.py"),
    m("collect-tokens-count-padding", "neurons/collect.py",
      "self.tokens[self.language] += n",
      "self.tokens[self.language] += counted.numel()",
      "test_collect.py"),
    m("collect-rows-all-positions", "neurons/collect.py",
      "    return torch.cat([torch.arange(lo, hi) for lo, hi in spans]), n",
      "    return None, n",
      "test_collect.py"),
    m("collect-squares-abs", "neurons/collect.py",
      "squares[:, k] += (part * part).sum(0)",
      "squares[:, k] += part.abs().sum(0)",
      "test_collect.py"),
    # -- stats ---------------------------------------------------------------------------
    m("stats-variance-mean-not-squared", "neurons/stats.py",
      "- mean**2).clamp_min(0)",
      "- mean).clamp_min(0)",
      "test_stats.py", "test_collect.py"),
    m("stats-add-drops-other-tokens", "neurons/stats.py",
      "self.tokens + other.tokens.to(self.tokens.device)",
      "self.tokens.clone()",
      "test_stats.py"),
    m("stats-select-keeps-all-sums", "neurons/stats.py",
      "sums=_pick(self.sums, idx),",
      "sums=self.sums,",
      "test_stats.py"),
    m("stats-reference-abs-not-clamp", "neurons/stats.py",
      "oz = diff.clamp_min(0)",
      "oz = diff.abs()",
      "test_stats.py"),
    m("stats-probability-per-total", "neurons/stats.py",
      "return values.to(dtype) / self.tokens.to(device=values.device, dtype=dtype)",
      "return values.to(dtype) / self.tokens.sum().to(device=values.device, dtype=dtype)",
      "test_stats.py"),
    m("stats-redraw-keeps-counts", "neurons/stats.py",
      "counts = torch.binomial(tokens, probs, generator=generator).long()",
      "counts = self.active_counts.clone()",
      "test_stats.py"),
    # -- identify ------------------------------------------------------------------------
    m("identify-lape-all-zero-inf", "neurons/identification.py",
      "return _entropy(probs, if_zero=0.0)",
      "return _entropy(probs, if_zero=math.inf)",
      "test_identification.py"),
    m("identify-ternary-all-zero-zero", "neurons/identification.py",
      "_entropy(probs, if_zero=math.log(k_langs)) / math.log(k_langs)",
      "_entropy(probs, if_zero=0.0) / math.log(k_langs)",
      "test_identification.py", "test_classes.py"),
    m("identify-bar-off-by-one", "neurons/identification.py",
      "min(max(round(ratio * flat.numel()), 1), flat.numel())",
      "min(max(round(ratio * flat.numel()) + 1, 1), flat.numel())",
      "test_identification.py"),
    m("identify-ties-to-higher-index", "neurons/identification.py",
      "ties = (scores == kth).nonzero().squeeze(1)[: k - below.numel()]",
      "ties = (scores == kth).nonzero().squeeze(1).flip(0)[: k - below.numel()]",
      "test_identification.py"),
    m("identify-prefilter-ge", "neurons/identification.py",
      "~(probs > bar).any(-1)",
      "~(probs >= bar).any(-1)",
      "test_identification.py"),
    m("identify-lape-membership-ge", "neurons/identification.py",
      "return Selection(chosen, probs > bar, bar)",
      "return Selection(chosen, probs >= bar, bar)",
      "test_identification.py"),
    m("identify-norm-max-short", "neurons/identification.py",
      "sum(1.0 / i for i in range(1, n_languages + 1)) / n_languages",
      "sum(1.0 / i for i in range(1, n_languages)) / n_languages",
      "test_identification.py"),
    m("identify-sweep-keeps-low", "neurons/identification.py",
      "best, lo = mid, mid",
      "best, hi = mid, mid",
      "test_identification.py"),
    # -- interventions -------------------------------------------------------------------
    m("interventions-pooled-mean-is-language-0", "causal/interventions.py",
      'target: Tensor | float = stats._require("sums").sum(-1) / stats.tokens.sum()',
      "target: Tensor | float = stats.means()[..., 0]",
      "test_interventions.py"),
    m("interventions-exit-keeps-hooks", "causal/interventions.py",
      "self._stack.pop().close()",
      "self._stack[-1]",
      "test_interventions.py"),
    m("interventions-set-ignores-up", "causal/interventions.py",
      "scale = up[..., index] if self.gated else 1.0",
      "scale = 1.0",
      "test_interventions.py"),
    m("interventions-add-ignores-up", "causal/interventions.py",
      "current + value * scale",
      "current + value",
      "test_interventions.py"),
    m("interventions-positions-inverted", "causal/interventions.py",
      "new = torch.where(rows[..., None], new, current)",
      "new = torch.where(rows[..., None], current, new)",
      "test_interventions.py"),
    m("interventions-steer-add-ignores-source", "causal/interventions.py",
      "delta = strength * (target - _language_means(stats, source))",
      "delta = strength * target",
      "test_interventions.py"),
    m("interventions-layers-ignored", "causal/interventions.py",
      "return mask if layers is None else mask.restrict(lm.layer_range(layers))",
      "return mask",
      "test_interventions.py"),
    # -- evaluate ------------------------------------------------------------------------
    m("evaluate-first-position-guard", "causal/evaluate.py",
      "replace(seq, start=max(seq.start, 1))",
      "replace(seq, start=seq.start)",
      "test_evaluate.py"),
    m("readout-targets-shift", "model/readout.py",
      "(where + 1).to(ids.device, non_blocking=True)",
      "where.to(ids.device, non_blocking=True)",
      "test_evaluate.py"),
    m("evaluate-perplexity-per-text", "causal/evaluate.py",
      'grouped["nll"] = grouped["nll"] / grouped["tokens"]',
      'grouped["nll"] = grouped["nll"] / grouped["texts"]',
      "test_evaluate.py"),
    m("evaluate-length-normalize-ignored", "causal/evaluate.py",
      "(n if length_normalize else 1)",
      "(n if length_normalize else n)",
      "test_evaluate.py"),
    m("evaluate-choice-min", "causal/evaluate.py",
      "best = max(range(k), key=lambda j: scores[j])",
      "best = min(range(k), key=lambda j: scores[j])",
      "test_evaluate.py"),
    # -- lens ----------------------------------------------------------------------------
    m("readout-head-skips-final-transform", "model/readout.py",
      "        return transform(logits)\n",
      "        return logits\n",
      "test_lens.py", "test_evaluate.py"),
    m("lens-rank-of-worst-token", "stages/lens.py",
      "best = chosen.max(-1).values",
      "best = chosen.min(-1).values",
      "test_lens.py"),
    m("lens-probability-max-not-sum", "stages/lens.py",
      "p_out[i, :, k] = chosen.sum(-1)",
      "p_out[i, :, k] = chosen.max(-1).values",
      "test_lens.py"),
    m("lens-curves-nan-as-zero", "stages/lens.py",
      "mean = torch.nanmean(self.probability, dim=0).numpy()",
      "mean = self.probability.nan_to_num(0.0).mean(0).numpy()",
      "test_lens.py"),
    m("lens-entropy-mean", "stages/lens.py",
      "entropy = -(probs * logp).sum(-1)",
      "entropy = -(probs * logp).mean(-1)",
      "test_lens.py"),
    m("readout-reads-resid-pre", "model/readout.py",
      "(lm.resid_hook(layer), keep(layer))",
      '(f"blocks.{layer}.hook_resid_pre", keep(layer))',
      "test_lens.py"),
    # -- stages --------------------------------------------------------------------------
    m("stages-language-neurons-all", "stages/features.py",
      "language = neurons.membership.any(-1).sum(1)",
      "language = neurons.membership.all(-1).sum(1)",
      "test_mapping.py"),
    m("stages-layers-overlap", "stages/stage_map.py",
      "return {s: range(edges[k], edges[k + 1]) for k, s in enumerate(STAGES)}",
      "return {s: range(edges[k], edges[k + 1] + 1) for k, s in enumerate(STAGES)}",
      "test_mapping.py"),
    m("stages-max-last-ignored", "stages/segmentation.py",
      "ok = ok & (m4 + _EPS >= m1) & (m4 + _EPS >= m2) & (m4 + _EPS >= m3)",
      "ok = ok & (m4 + _EPS >= m1)",
      "test_segmentation.py", "test_mapping.py"),
    # -- sharing -------------------------------------------------------------------------
    m("sharing-all-shared-off-by-one", "neurons/sharing_classes.py",
      "out[count == n_languages] = 0",
      "out[count >= n_languages - 1] = 0",
      "test_sharing_classes.py"),
    m("sharing-any-counts-bos", "neurons/sharing_classes.py",
      "counted[torch.arange(len(chunk)), start] = lengths == 1  # keep BOS only if alone",
      "counted[torch.arange(len(chunk)), start] = True",
      "test_sharing_classes.py"),
    m("sharing-any-is-last", "neurons/sharing_classes.py",
      'if position == "last":',
      'if position in ("last", "any"):',
      "test_sharing_classes.py"),
    # -- resample: every interval -------------------------------------------------------
    m("resample-mean-wrong-axis", "resample.py",
      "replicates = np.nanmean(data[index], axis=1)",
      "replicates = np.nanmean(data[index], axis=0)",
      "test_resample.py"),
    m("resample-alpha-not-halved", "resample.py",
      "alpha = (1.0 - ci) / 2.0",
      "alpha = 1.0 - ci",
      "test_resample.py"),
    m("resample-paired-difference-reversed", "resample.py",
      "data = data - base",
      "data = base - data",
      "test_resample.py"),
    m("resample-draws-miss-last-unit", "resample.py",
      "rng.integers(0, max(n_units, 1), size=(n_boot, n_units))",
      "rng.integers(0, max(n_units - 1, 1), size=(n_boot, n_units))",
      "test_resample.py"),
    m("resample-nan-units-as-zero", "resample.py",
      "replicates = np.nanmean(data[index], axis=1)",
      "replicates = np.nan_to_num(data[index]).mean(axis=1)",
      "test_resample.py"),
    m("resample-few-units-le", "resample.py",
      "return n_units < MIN_UNITS",
      "return n_units <= MIN_UNITS",
      "test_resample.py"),
    # -- provenance: one compatibility rule ----------------------------------------------
    m("provenance-unknown-side-compared", "provenance.py",
      "if x is None or y is None:",
      "if x is None and y is None:",
      "test_provenance.py"),
    m("provenance-shape-overridable", "provenance.py",
      'OVERRIDABLE = ("name", "architecture")',
      'OVERRIDABLE = ("name", "architecture", "shape")',
      "test_provenance.py"),
    m("provenance-allow-mismatch-inverted", "provenance.py",
      "            if allow_mismatch:\n                continue",
      "            if not allow_mismatch:\n                continue",
      "test_provenance.py"),
    m("provenance-shape-any-dimension", "provenance.py",
      "all(a is None or b is None or a == b for a, b in zip(x, y))",
      "any(a is None or b is None or a == b for a, b in zip(x, y))",
      "test_provenance.py"),
    m("provenance-shape-length-ignored", "provenance.py",
      "return len(x) == len(y) and all(",
      "return all(",
      "test_provenance.py"),
    m("provenance-record-shape-swapped", "provenance.py",
      '"shape": (n_layers, d_mlp)}',
      '"shape": (d_mlp, n_layers)}',
      "test_provenance.py"),
    # -- persist: checksums, atomic writes, recovery -------------------------------------
    m("persist-manifest-checksum-skipped", "persist.py",
      'if version_ >= 2 and manifest.get("checksum") != _digest(manifest):',
      'if version_ > 2 and manifest.get("checksum") != _digest(manifest):',
      "test_persist.py"),
    m("persist-tensor-hash-unchecked", "persist.py",
      "if expected != actual:",
      "if expected is None:",
      "test_persist.py"),
    m("persist-kind-unchecked", "persist.py",
      'if manifest.get("kind") != kind:',
      'if manifest.get("kind") is None:',
      "test_persist.py"),
    m("persist-recover-oldest", "persist.py",
      "newest = max(candidates)[1]",
      "newest = min(candidates)[1]",
      "test_persist.py",
      "test_reliability.py::test_sigkill_at_every_step_of_a_save_leaves_no_wrong_or_stranded_save"),
    m("persist-bool-read-as-number", "persist.py",
      "ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)",
      "ok = isinstance(value, allowed)",
      "test_persist.py"),
    m("persist-newer-format-accepted", "persist.py",
      "if version_ > FORMAT_VERSION:",
      "if version_ > FORMAT_VERSION + 1:",
      "test_persist.py"),
    m("persist-live-save-removed", "persist.py",
      "if pid.isdigit() and _alive(int(pid)):",
      "if pid.isdigit() and not _alive(int(pid)):",
      "test_persist.py"),
    m("persist-temporary-without-target", "persist.py",
      "if sep and len(stem) > 1:",
      "if sep:",
      "test_persist.py"),
    # -- distributed: how units are dealt ------------------------------------------------
    m("distributed-shard-offset", "distributed.py",
      "return sorted(order[r::w])",
      "return sorted(order[r + 1 :: w])",
      "test_distributed.py::test_shards_deal_the_units_in_turn_largest_first"),
    m("distributed-shard-smallest-first", "distributed.py",
      "key=lambda i: (-sizes[i], i)",
      "key=lambda i: (sizes[i], i)",
      "test_distributed.py::test_shards_deal_the_units_in_turn_largest_first"),
    m("distributed-progress-on-every-rank", "distributed.py",
      "return bool(progress) and is_main()",
      "return bool(progress)",
      "test_distributed.py::test_shards_deal_the_units_in_turn_largest_first"),
    m("distributed-gather-count-unchecked", "distributed.py",
      "if seen != n:",
      "if seen > n:",
      "test_distributed.py::test_gathering_keeps_the_order_and_refuses_a_mismatched_split"),
    # -- languages ------------------------------------------------------------------------
    m("languages-script-kept-before-region", "inputs/languages.py",
      "if script is not None and script == usual_script(language):",
      "if script is not None and script == usual_script(language) and region is None:",
      "test_languages.py"),
    m("languages-withdrawn-kept", "inputs/languages.py",
      "code = _WITHDRAWN.get(code, code)",
      "code = code",
      "test_languages.py"),
    m("languages-region-fold-drops-script", "inputs/languages.py",
      "script = script or implied",
      "script = script",
      "test_languages.py"),
    m("languages-macrolanguage-always", "inputs/languages.py",
      'if "macrolanguage" in fold and macrolanguage(language):',
      "if macrolanguage(language):",
      "test_languages.py"),
    m("languages-variants-silent", "inputs/languages.py",
      'dropped = "" if keep_variants else "-".join(extra)',
      'dropped = ""',
      "test_languages.py"),
    # -- tokens: spans, lengths, budgets -------------------------------------------------
    m("tokens-last-policy-off-by-one", "model/tokens.py",
      "start = max(len(piece) - 1, lo)",
      "start = max(len(piece) - 2, lo)",
      "test_collect.py", "test_length_policy.py"),
    m("tokens-split-step-ignores-bos", "model/tokens.py",
      "step = max_length - first",
      "step = max_length",
      "test_length_policy.py"),
    m("tokens-truncate-drops-bos", "model/tokens.py",
      "seq = seq[:first] + seq[first + lost :]",
      "seq = seq[lost:]",
      "test_length_policy.py"),
    m("tokens-budget-off-by-one", "model/tokens.py",
      "take = min(seq.n_counted, budget - used)",
      "take = min(seq.n_counted, budget - used + 1)",
      "test_collect.py"),
    m("tokens-left-padding-shift-ignored", "model/tokens.py",
      'shift = (width - lengths) if batch.padding_side == "left" else torch.zeros_like(lengths)',
      "shift = torch.zeros_like(lengths)",
      "test_tokens.py"),
    m("tokens-response-start-drops-bos", "model/tokens.py",
      "start = max(answer_from - offset + first, first)",
      "start = max(answer_from - offset, first)",
      "test_collect.py", "test_length_policy.py"),
    # -- stats: merging ---------------------------------------------------------------------
    m("stats-add-keeps-one-sides-sums", "neurons/stats.py",
      "return None if a is None or b is None else a + b.to(a.device)",
      "return b if a is None else (a if b is None else a + b.to(a.device))",
      "test_stats.py"),
    m("stats-merge-ignores-bos", "neurons/stats.py",
      '_SETTINGS = ("languages", "shape", "token_policy", "threshold", "include_bos")',
      '_SETTINGS = ("languages", "shape", "token_policy", "threshold")',
      "test_provenance.py"),
    m("stats-compare-ignores-architecture", "neurons/stats.py",
      'fields = (*_SETTINGS, "architecture", *(("name",) if same_model else ()))',
      'fields = (*_SETTINGS, *(("name",) if same_model else ()))',
      "test_provenance.py"),
    # -- identification: lambda, histogram, dropped ----------------------------------------
    m("identify-sweep-counts-one-language-less", "neurons/identification.py",
      "return int((self.n_above[self.select(lam).selected] == self.n_languages).sum())",
      "return int((self.n_above[self.select(lam).selected] >= self.n_languages - 1).sum())",
      "test_identification.py"),
    m("classes-histogram-of-every-neuron", "neurons/classes.py",
      "n = self.n_active_languages[self._selected]",
      "n = self.n_active_languages.flatten()",
      "test_identification.py"),
    m("classes-dropped-not-only-selected", "neurons/classes.py",
      "codes[self._selected & (n == 0)] = DROPPED",
      "codes[n == 0] = DROPPED",
      "test_identification.py"),
    # -- deactivation: cells and controls ------------------------------------------------
    m("deactivation-unpaired-baseline", "experiments/engine.py",
      "statistic(hit, unit_draws) - statistic(baseline, unit_draws)",
      "statistic(hit, unit_draws) - statistic(baseline, unit_draws[::-1])",
      "test_deactivation.py"),
    m("deactivation-mean-interval-unpaired", "experiments/engine.py",
      'resample.mean_interval(hit, baseline=baseline, ci=ci,',
      'resample.mean_interval(hit - np.nanmean(baseline, 0), ci=ci,',
      "test_sharing_experiments.py"),
    m("deactivation-control-sd-population", "experiments/deactivation.py",
      "float(ctrl_changes.std(ddof=1))",
      "float(ctrl_changes.std())",
      "test_deactivation.py"),
    m("deactivation-relative-to-value", "experiments/deactivation.py",
      '"relative_change": change / base if base',
      '"relative_change": change / value if base',
      "test_deactivation.py"),
    m("deactivation-control-value-drops-baseline", "experiments/deactivation.py",
      '"control_value": base + ctrl_change,',
      '"control_value": ctrl_change,',
      "test_deactivation.py"),
    m("deactivation-blocks-share-control-seed", "experiments/engine.py",
      "return seed + 97 * block",
      "return seed",
      "test_sharing_experiments.py"),
    m("masks-controls-share-one-seed", "neurons/masks.py",
      "seed=seed + 1 + i, exclude=self",
      "seed=seed + 1, exclude=self",
      "test_masks.py", "test_deactivation.py"),
    m("masks-controls-overlap-mask", "neurons/masks.py",
      "seed=seed + 1 + i, exclude=self",
      "seed=seed + 1 + i, exclude=None",
      "test_masks.py"),
    # -- stage effects -------------------------------------------------------------------
    m("stage-effects-carries-or", "experiments/stage_deactivation.py",
      'bool(values["over_control_ci_low"] > 0 and values["over_others_ci_low"] > 0)',
      'bool(values["over_control_ci_low"] > 0 or values["over_others_ci_low"] > 0)',
      "test_stage_deactivation.py"),
    m("stage-effects-control-mean-wrong-axis", "experiments/stage_deactivation.py",
      "control = np.mean(ctrl_reps, axis=0)",
      "control = np.mean(ctrl_reps, axis=1, keepdims=True)",
      "test_stage_deactivation.py"),
    m("stage-effects-own-change-reversed", "experiments/stage_deactivation.py",
      'values["own_change"] = _ppl_change(h, b, tokens)',
      'values["own_change"] = _ppl_change(b, h, tokens)',
      "test_stage_deactivation.py"),
    m("stage-effects-lens-output-not-last", "experiments/stage_deactivation.py",
      '"lens_output_change": float(change[-1]),',
      '"lens_output_change": float(change[-2]),',
      "test_stage_deactivation.py"),
    m("stage-effects-peak-of-rise", "experiments/stage_deactivation.py",
      "peak = int(np.nanargmin(change))",
      "peak = int(np.nanargmax(change))",
      "test_stage_deactivation.py"),
    m("stage-effects-layers-label-off-by-one", "experiments/stage_deactivation.py",
      'f"{span.start}-{span.stop - 1}"',
      'f"{span.start}-{span.stop}"',
      "test_stage_deactivation.py"),
    m("stage-effects-lens-control-from-hit", "experiments/stage_deactivation.py",
      "float(np.nanmean((control - b)[:, -1]))",
      "float(np.nanmean((control - answer(hit))[:, -1]))",
      "test_stage_deactivation.py"),
    m("stage-effects-others-include-own", "experiments/stage_deactivation.py",
      'values["n_texts"] = len(b)',
      'values["n_texts"] = len(b)\n            other_reps.append((values["own_change"], reps))',
      "test_stage_deactivation.py"),
    # -- benchmarks and the language of generations ----------------------------------------
    m("benchmarks-sum-not-mean", "experiments/benchmarks.py",
      "return num / np.maximum(den, 1e-12)",
      "return num",
      "test_benchmarks.py"),
    m("benchmarks-items-out-of-order", "experiments/benchmarks.py",
      'key=lambda s: s["doc_id"])',
      'key=lambda s: -s["doc_id"])',
      "test_benchmarks.py"),
    m("benchmarks-group-first-subtask-only", "experiments/benchmarks.py",
      "return [leaf for sub in groups[name] for leaf in _leaves(sub, groups)]",
      "return _leaves(groups[name][0], groups)",
      "test_benchmarks.py"),
    m("generation-switching-counts-target", "experiments/generation_language.py",
      "off = [not same_language(target, lang) for lang in labels]",
      "off = [same_language(target, lang) for lang in labels]",
      "test_generation_language.py"),
    m("generation-segments-ignore-lines", "experiments/generation_language.py",
      r'''_BREAK = re.compile(r"(?<=[.!?。！？।])\s*|\n+")''',
      r'''_BREAK = re.compile(r"(?<=[.!?。！？।])\s*")''',
      "test_generation_language.py"),
    m("generation-control-change-from-hit", "experiments/generation_language.py",
      "control_change, c_low, c_high = paired_interval(per_prompt, base, unit_draws, ci)",
      "control_change, c_low, c_high = paired_interval(per_prompt, hit, unit_draws, ci)",
      "test_generation_language.py"),
    # -- sharing experiments ---------------------------------------------------------------
    m("boost-control-change-from-hit", "experiments/sharing_experiments.py",
      "(ctrl[:, :, p, 1] - baseline[None, :, p, 1]).mean()",
      "(ctrl[:, :, p, 1] - hit[None, :, p, 1]).mean()",
      "test_sharing_experiments.py"),
    m("boost-accuracy-of-logprob", "experiments/sharing_experiments.py",
      '"accuracy": hit[:, p, 0].mean()',
      '"accuracy": hit[:, p, 1].mean()',
      "test_sharing_experiments.py"),
    m("boost-mean-neurons-of-first-item", "experiments/sharing_experiments.py",
      '"mean_neurons": float(np.mean(run.sizes))',
      '"mean_neurons": float(run.sizes[0])',
      "test_sharing_experiments.py"),
    m("correct-vs-incorrect-all-items", "experiments/sharing_experiments.py",
      "mean = counts[picks].mean(0)",
      "mean = counts.mean(0)",
      "test_sharing_experiments.py"),
    m("correct-vs-incorrect-percent-of-layers", "experiments/sharing_experiments.py",
      "counts = sharing.counts().double() * 100.0 / sharing.d_mlp",
      "counts = sharing.counts().double() * 100.0 / sharing.n_layers",
      "test_sharing_experiments.py"),
    # -- comparison ----------------------------------------------------------------------
    m("comparison-kept-over-after", "experiments/comparison.py",
      '"kept": both / int(b.sum()) if b.any()',
      '"kept": both / int(a.sum()) if b.any()',
      "test_comparison.py"),
    m("comparison-jaccard-over-before", "experiments/comparison.py",
      '"jaccard": both / either if either',
      '"jaccard": both / int(b.sum()) if either',
      "test_comparison.py"),
    m("comparison-base-lambda-ignored", "experiments/comparison.py",
      '(before.lam if lam == "base" else lam)',
      '("auto" if lam == "base" else lam)',
      "test_comparison.py"),
    m("comparison-each-uses-base-lambda", "experiments/comparison.py",
      'lam="auto" if lam == "each" else',
      'lam=before.lam if lam == "each" else',
      "test_comparison.py"),
    m("comparison-series-first-lambda-ignored", "experiments/comparison.py",
      '(first.lam if lam == "first" else lam)',
      '("auto" if lam == "first" else lam)',
      "test_comparison.py"),
    m("comparison-opposite-sign-same", "experiments/comparison.py",
      "np.mean(np.sign(values) != np.sign(change))",
      "np.mean(np.sign(values) == np.sign(change))",
      "test_comparison.py"),
    m("comparison-transitions-swapped", "experiments/comparison.py",
      "pairs = before * n + after",
      "pairs = after * n + before",
      "test_comparison.py"),
    m("comparison-groups-inverted", "experiments/comparison.py",
      'np.where(frame["trained"], "trained", "other")',
      'np.where(frame["trained"], "other", "trained")',
      "test_comparison.py"),
    # -- patching ------------------------------------------------------------------------
    m("patching-control-pools-patched", "causal/patching.py",
      '"control": list(range(2, len(self.conditions)))',
      '"control": list(range(1, len(self.conditions)))',
      "test_patching.py"),
    m("patching-change-from-patched", "causal/patching.py",
      "baseline=probs[0], ci=ci, unit_draws=unit_draws",
      "baseline=probs[1], ci=ci, unit_draws=unit_draws",
      "test_patching.py"),
    m("patching-output-first-layer", "causal/patching.py",
      'frame[frame["layer"] == frame["layer"].max()]',
      'frame[frame["layer"] == frame["layer"].min()]',
      "test_patching.py"),
    m("patching-target-position-of-source", "causal/patching.py",
      "positions[rows, tgt_last] = True",
      "positions[rows, src_last] = True",
      "test_patching.py"),
    # -- attribution ---------------------------------------------------------------------
    m("attribution-share-counts-not-fractions", "causal/attribution.py",
      "share = torch.nn.functional.one_hot(picked, n_classes).double().mean(-2)",
      "share = torch.nn.functional.one_hot(picked, n_classes).double().sum(-2)",
      "test_attribution.py"),
    m("attribution-all-is-first-layer", "causal/attribution.py",
      'sl = slice(None) if layer == "all" else layer',
      'sl = slice(0, 1) if layer == "all" else layer',
      "test_attribution.py"),
    m("attribution-enrichment-inverted", "causal/attribution.py",
      "float(s[c] / b[c]) if b[c] > 0",
      "float(b[c] / s[c]) if b[c] > 0",
      "test_attribution.py"),
    m("attribution-top-lowest", "causal/attribution.py",
      "return self.scores.topk(min(k, self.scores.shape[-1]), dim=-1).indices",
      "return self.scores.topk(min(k, self.scores.shape[-1]), dim=-1, largest=False).indices",
      "test_attribution.py"),
    # -- sharing classes -----------------------------------------------------------------
    m("sharing-stability-any-item", "neurons/sharing_classes.py",
      "same = (classes == classes[:1]).all(0)",
      "same = (classes == classes[:1]).any(0)",
      "test_sharing_classes.py"),
    m("sharing-stability-ignores-class", "neurons/sharing_classes.py",
      "stable = same[layer] & (classes[0, layer] == k)",
      "stable = same[layer] & (classes[-1, layer] >= k)",
      "test_sharing_classes.py"),
    m("sharing-percent-of-layers", "neurons/sharing_classes.py",
      '"percent": 100.0 * counts.reshape(-1) / self.d_mlp',
      '"percent": 100.0 * counts.reshape(-1) / self.n_layers',
      "test_sharing_classes.py"),
    m("sharing-profile-sd-population", "neurons/sharing_classes.py",
      "counts.std(0) if counts.shape[0] > 1",
      "counts.std(0, unbiased=False) if counts.shape[0] > 1",
      "test_sharing_classes.py"),
    # -- stage map -------------------------------------------------------------------------
    m("stages-p-value-without-floor", "stages/segmentation.py",
      "p_value = float((1 + np.sum(null >= explained - 1e-12)) / (1 + n_null))",
      "p_value = float(np.sum(null >= explained - 1e-12) / n_null)",
      "test_mapping.py", "test_segmentation.py"),
    m("stages-beats-without-floor", "stages/segmentation.py",
      "beats[k] = float((1 + np.sum(gain >= observed - 1e-12)) / (1 + n_null))",
      "beats[k] = float(np.sum(gain >= observed - 1e-12) / n_null)",
      "test_mapping.py", "test_segmentation.py"),
    m("stages-stability-within-one-layer", "stages/mapping.py",
      "float((replicates[:, k] == fit.boundaries[k]).mean())",
      "float((abs(replicates[:, k] - fit.boundaries[k]) <= 1).mean())",
      "test_mapping.py", "test_segmentation.py"),
    m("stages-check-two-of-three-stages", "stages/signatures.py",
      "return m[1] <= m[0] + 1e-9 * scale and m[1] <= m[2] + 1e-9 * scale",
      "return m[1] <= m[0] + 1e-9 * scale",
      "test_mapping.py", "test_segmentation.py"),
    m("stages-constraint-two-of-three-stages", "stages/segmentation.py",
      "ok = ok & (m2 <= m1 + _EPS) & (m2 <= m3 + _EPS)",
      "ok = ok & (m2 <= m1 + _EPS)",
      "test_mapping.py", "test_segmentation.py"),
    m("stages-english-over-english-prompts", "stages/features.py",
      'not_target = (column != langs.index("en"))',
      'not_target = (column == langs.index("en"))',
      "test_mapping.py", "test_segmentation.py"),
    m("stages-target-of-first-language", "stages/features.py",
      "torch.nanmean(lens.probability[rows, :, column], dim=0)",
      "torch.nanmean(lens.probability[rows, :, 0], dim=0)",
      "test_mapping.py", "test_segmentation.py"),
    m("stages-explained-is-unexplained", "stages/segmentation.py",
      "return float(1.0 - sse / total)",
      "return float(sse / total)",
      "test_mapping.py", "test_segmentation.py"),
    m("stages-interval-coverage", "stages/mapping.py",
      "replicates[:, k].astype(float), ci=0.90)",
      "replicates[:, k].astype(float), ci=0.80)",
      "test_mapping.py", "test_segmentation.py"),
    m("stages-agreement-sign", "stages/mapping.py",
      'agreement["difference"] = agreement["lens"] - agreement["neurons"]',
      'agreement["difference"] = agreement["neurons"] - agreement["lens"]',
      "test_mapping.py", "test_segmentation.py"),
    m("stages-boundary-share-per-layer", "stages/mapping.py",
      "minlength=n_layers)[:n_layers] / len(reps)",
      "minlength=n_layers)[:n_layers] / n_layers",
      "test_mapping.py", "test_segmentation.py"),
    m("stages-general-feature-per-layer-count", "stages/features.py",
      '"f_general": general / neurons.d_mlp,',
      '"f_general": general / neurons.n_layers,',
      "test_mapping.py", "test_segmentation.py"),
    # -- lens ----------------------------------------------------------------------------
    m("lens-summary-ignores-ci", "stages/lens.py",
      "mean, low, high = resample.mean_interval(values, ci=ci, unit_draws=unit_draws)",
      "mean, low, high = resample.mean_interval(values, unit_draws=unit_draws)",
      "test_lens.py"),
    m("lens-summary-draws-per-quantity", "stages/lens.py",
      "mean, low, high = resample.mean_interval(values, ci=ci, unit_draws=unit_draws)",
      "mean, low, high = resample.mean_interval(values, ci=ci, n_boot=n_boot, seed=len(rows))",
      "test_lens.py"),
    # -- report ----------------------------------------------------------------------------
    m("report-quarter-off-by-one", "study/report.py",
      "q = max(n // 4, 1)",
      "q = max(n // 4 + 1, 1)",
      "test_report.py"),
    m("report-stage-last-layer-off-by-one", "study/report.py",
      '"stages": {s: [stages.layers(s).start, stages.layers(s).stop - 1] for s in STAGES},',
      '"stages": {s: [stages.layers(s).start, stages.layers(s).stop] for s in STAGES},',
      "test_report.py"),
    m("report-control-not-relative", "study/report.py",
      '["control_change"].iloc[0] / rows[rows["evaluated"] == lang]["baseline"].iloc[0]',
      '["control_change"].iloc[0]',
      "test_report.py"),
    m("report-others-include-own", "study/report.py",
      'others = float(rows[rows["evaluated"] != lang]["relative_change"].median())',
      'others = float(rows["relative_change"].median())',
      "test_report.py"),
    m("report-stability-of-one-class", "study/report.py",
      "stability().query(\"`class` == 'any'\")",
      "stability().query(\"`class` == 'all_shared'\")",
      "test_report.py"),
    m("report-texts-most-not-fewest", "study/report.py",
      "return int(min(min(held.values()), setting))",
      "return int(min(max(held.values()), setting))",
      "test_report.py"),
    # -- study pipeline: what a resume recomputes ----------------------------------------
    m("pipeline-dependencies-dropped", "study/pipeline.py",
      '"depends": {d: self.keys[d] for d in step.depends},',
      '"depends": {},',
      "test_pipeline.py"),
    m("pipeline-neurons-forget-statistics", "study/steps.py",
      'depends=("statistics",), settings=("top_rate",),',
      'depends=(), settings=("top_rate",),',
      "test_pipeline.py"),
    m("pipeline-stage-effects-forget-stages", "study/steps.py",
      'depends=("neurons", "stages"),',
      'depends=("neurons",),',
      "test_pipeline.py"),
    m("pipeline-sharing-keyed-on-ids", "study/steps.py",
      'settings=("sharing_items", *_HELD),',
      'settings=("sharing_items",),',
      "test_pipeline.py"),
    m("pipeline-stages-forget-n-boot", "study/steps.py",
      'settings=("method", "n_boot", "seed"),',
      'settings=("method", "seed"),',
      "test_pipeline.py"),
]


# Options a test cannot observe on a small CPU-only machine without the network, with why.
# ``--options`` does not make mutants of these (``--list`` shows them).
OPTIONS_UNTESTED: dict[str, str] = {
    "batch_size": "texts per forward pass: no number may depend on it, only memory and speed "
                  "(an ignored batch size is an equivalent mutant)",
    "dim_batch": "Jacobian columns per backward pass: only memory and speed depend on it",
    "progress": "a progress bar on stderr: no number depends on it",
    "disable_tqdm": "the harness's progress bar: no number depends on it",
    "ax": "the matplotlib axes drawn on: a figure is checked by its data, not by where it lands",
    "axes": "the matplotlib axes drawn on: a figure is checked by its data, not by where it lands",
    "dpi": "the resolution of a saved figure",
    "token": "a Hugging Face token: the tests have no network",
    "cache_dir": "the Hugging Face cache folder: the tests have no network",
    "local_files_only": "the Hugging Face download policy: the tests have no network",
    "private": "a Hub repository's visibility: the tests have no network",
    "create_pr": "a Hub pull request: the tests have no network",
    "commit_message": "a Hub commit message: the tests have no network",
    "limit": "how many records a dataset loader reads: the loaders need the network",
    "split": "which split a dataset loader reads: the loaders need the network",
}
# Options with a test file of their own, run beside the tests of the function's module;
# ``tests/test_options.py`` (the options no module's tests reach) runs for every option.
EVERY_OPTION_TESTS = ("tests/test_options.py",)
OPTION_TESTS: dict[str, tuple[str, ...]] = {
    "max_length": ("tests/test_length_policy.py",),
    "overflow": ("tests/test_length_policy.py",),
}

# Modules with no test file of their own and no mutant above: where their options are used.
MODULE_TESTS: dict[str, tuple[str, ...]] = {
    "data/__init__.py": ("tests/test_data.py",),
    "inputs/prompts.py": ("tests/test_lens.py", "tests/test_data.py"),
    "inputs/items.py": ("tests/test_sharing_classes.py", "tests/test_data.py"),
    "model/models.py": ("tests/test_adapters.py", "tests/test_identification.py"),
}


@dataclass(frozen=True)
class Option:
    """One parameter with a default of one public function (``where``: its qualified name)."""

    where: str
    file: str
    parameter: str
    default: str
    boolean: bool


def _module_tests() -> dict[str, tuple[str, ...]]:
    """The test files of each module of the package: those the mutants above name for it."""
    tests: dict[str, list[str]] = {}
    for mu in MUTANTS:
        for t in mu.tests:
            tests.setdefault(mu.file, [])
            if t.split("::")[0] not in tests[mu.file]:
                tests[mu.file].append(t.split("::")[0])
    return {file: tuple(found) for file, found in tests.items()}


def _public_functions() -> dict[str, object]:
    """Qualified name -> function, for every public function and public method."""
    package = importlib.import_module(PACKAGE)
    found: dict[str, object] = {}

    def add(qualname: str, fn: object) -> None:
        fn = inspect.unwrap(fn)
        try:
            source = inspect.getsourcefile(fn)
        except TypeError:
            return
        if source and f"/{PACKAGE}/" in source.replace(os.sep, "/"):
            found.setdefault(f"{fn.__module__}.{fn.__qualname__}", fn)

    def add_class(cls: type) -> None:
        for klass in cls.__mro__:
            if not klass.__module__.startswith(PACKAGE):
                continue
            for attr, value in vars(klass).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                if isinstance(value, (classmethod, staticmethod)):
                    value = value.__func__
                if inspect.isfunction(value):
                    add(attr, value)

    for module, names in package._PUBLIC.items():
        home = importlib.import_module(f"{PACKAGE}.{module}")
        for name in names:
            obj = getattr(home, name)
            add_class(obj) if inspect.isclass(obj) else add(name, obj)
    for module in package._MODULES.values():
        home = importlib.import_module(f"{PACKAGE}.{module}")
        for name, obj in vars(home).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != home.__name__:
                continue
            add_class(obj) if inspect.isclass(obj) else add(name, obj)
    return found


def _find_def(tree: ast.Module, qualname: str) -> ast.FunctionDef | None:
    def walk(body: list[ast.stmt], prefix: str) -> ast.FunctionDef | None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if prefix + node.name == qualname:
                    return node
            elif isinstance(node, ast.ClassDef):
                hit = walk(node.body, f"{prefix}{node.name}.")
                if hit:
                    return hit
        return None

    return walk(tree.body, "")


def option_mutants() -> tuple[list[Mutant], list[Option]]:
    """The ignored and inverted mutants of every option of every public function, and the
    options left out (``OPTIONS_UNTESTED``)."""
    sys.path.insert(0, str(ROOT))
    tests_of = _module_tests()
    mutants: list[Mutant] = []
    skipped: list[Option] = []
    for _key, fn in sorted(_public_functions().items()):
        path = Path(inspect.getsourcefile(fn)).resolve()
        file = path.relative_to(ROOT / PACKAGE).as_posix()
        text = path.read_text(encoding="utf-8")
        node = _find_def(ast.parse(text), fn.__qualname__)
        if node is None:
            continue
        body = node.body
        first = body[1] if (len(body) > 1 and isinstance(body[0], ast.Expr)
                            and isinstance(body[0].value, ast.Constant)
                            and isinstance(body[0].value.value, str)) else body[0]
        if first.lineno == node.lineno:
            continue  # a one-line body
        args = node.args
        positional = [*args.posonlyargs, *args.args]
        pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
        pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
        lines = text.splitlines(keepends=True)
        start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
        original = "".join(lines[start - 1:node.end_lineno])
        indent = " " * first.col_offset
        at = first.lineno - start  # the line of the first statement within ``original``
        own = lines[start - 1:node.end_lineno]
        stem = file.rsplit("/", 1)[-1].removesuffix(".py")
        module_tests = tests_of.get(file) or MODULE_TESTS.get(file) or (f"tests/test_{stem}.py",)
        where = f"{file.removesuffix('.py')}:{fn.__qualname__}"
        for arg, default in pairs:
            source = ast.get_source_segment(text, default)
            boolean = (isinstance(default, ast.Constant) and isinstance(default.value, bool)) or (
                arg.annotation is not None and ast.unparse(arg.annotation) == "bool")
            option = Option(where, file, arg.arg, source, boolean)
            if arg.arg in OPTIONS_UNTESTED:
                skipped.append(option)
                continue
            # The options' own file first: it is quick, and pytest stops at the first failure.
            extra = [t for t in OPTION_TESTS.get(arg.arg, ()) if t not in module_tests]
            tests = (*EVERY_OPTION_TESTS, *module_tests, *extra)
            kinds = [("ignored", source)] + ([("inverted", f"not {arg.arg}")] if boolean else [])
            for kind, value in kinds:
                rebound = [*own[:at], f"{indent}{arg.arg} = {value}\n", *own[at:]]
                mutants.append(Mutant(f"{where}.{arg.arg}:{kind}", file, original,
                                      "".join(rebound), tests))
    return mutants, skipped


def _option_chosen(name: str, pattern: str) -> bool:
    """``name`` is ``module:qualname.parameter:kind``; ``pattern`` is a prefix of it, of its
    ``qualname.parameter``, or ``.parameter`` for that parameter of every function."""
    module, rest = name.split(":", 1)
    if pattern.startswith("."):
        return rest.rsplit(":", 1)[0].endswith(pattern)
    return name.startswith(pattern) or rest.startswith(pattern)


def prepare(workdir: Path, tests_rev: str | None) -> None:
    """A copy of the repository in ``workdir``; with ``tests_rev``, its tests/ replaced by
    the tests of that revision."""
    shutil.copytree(ROOT, workdir, ignore=COPY_IGNORE, dirs_exist_ok=True)
    if tests_rev:
        shutil.rmtree(workdir / "tests")
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", tests_rev, "tests"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive, check=True)


def snippet_status(mutant: Mutant, root: Path = ROOT) -> str:
    source = (root / PACKAGE / mutant.file).read_text(encoding="utf-8")
    count = source.count(mutant.original)
    if count == 1:
        return "ok"
    return "stale (snippet not found)" if count == 0 else f"stale (snippet found {count} times)"


def run_one(mutant: Mutant, workdir: Path, timeout: float) -> tuple[str, str, float]:
    """Apply one mutant in ``workdir``, run its tests, restore the file."""
    status = snippet_status(mutant, workdir)
    if status != "ok":
        return "stale", status, 0.0
    tests = [t for t in mutant.tests if (workdir / t.split("::")[0]).is_file()]
    if not tests:
        return "survived", "no test file", 0.0
    path = workdir / PACKAGE / mutant.file
    pristine = path.read_text(encoding="utf-8")
    path.write_text(pristine.replace(mutant.original, mutant.replacement, 1), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(workdir), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    env.pop("CI", None)
    fixtures = ROOT.parent / "shared" / "fixtures"  # where the tests look beside a checkout
    if "TLM_FIXTURES" not in env and fixtures.is_dir():
        env["TLM_FIXTURES"] = str(fixtures)
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "killed", f"timeout after {timeout:.0f}s", time.monotonic() - start
    finally:
        path.write_text(pristine, encoding="utf-8")
    seconds = time.monotonic() - start
    lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else done.stderr.strip()[-200:]
    if done.returncode == 0:
        return "survived", last, seconds
    if done.returncode == 5:
        return "survived", "no tests collected", seconds
    if done.returncode == 4 and "not found:" in done.stdout + done.stderr:
        return "survived", "no such test", seconds
    failed = next((line for line in lines if line.startswith(("FAILED", "ERROR"))), last)
    return "killed", failed[:160], seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="run mutants whose name starts with one of these")
    parser.add_argument("--tests-rev", default=None, help="use the tests/ folder of this git revision")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant (default 900)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once, each in its own copy")
    parser.add_argument("--list", action="store_true", help="only list the mutants and whether their snippet is found")
    parser.add_argument("--options", action="store_true",
                        help="the ignored and inverted mutants of every option of every "
                             "public function")
    args = parser.parse_args(argv)

    if args.options:
        table, skipped = option_mutants()
        chosen = [mu for mu in table if not args.only or any(_option_chosen(mu.name, p)
                                                             for p in args.only)]
    else:
        table, skipped = MUTANTS, []
        chosen = [mu for mu in MUTANTS
                  if not args.only or any(mu.name.startswith(p) for p in args.only)]
    names = [mu.name for mu in table]
    if len(set(names)) != len(names):
        raise SystemExit("mutant names must be unique")
    if args.list:
        for mu in chosen:
            print(f"{mu.name:45s} {mu.file:18s} {snippet_status(mu)}")
        for option in skipped:
            where = f"{option.where}.{option.parameter}"
            if not args.only or any(_option_chosen(f"{where}:ignored", p) for p in args.only):
                reason = OPTIONS_UNTESTED[option.parameter]
                print(f"untested {option.where}.{option.parameter}: {reason}")
        return 0

    jobs = max(1, min(args.jobs, len(chosen)))
    with tempfile.TemporaryDirectory(prefix="tlm-mutants-") as tmp:
        workdirs = [Path(tmp) / f"copy{i}" for i in range(jobs)]
        for workdir in workdirs:
            prepare(workdir, args.tests_rev)
        free = list(workdirs)

        def task(mutant: Mutant) -> tuple[str, str, float]:
            workdir = free.pop()
            try:
                return run_one(mutant, workdir, args.timeout)
            finally:
                free.append(workdir)

        results: dict[str, tuple[str, str, float]] = {}
        with ThreadPoolExecutor(jobs) as pool:
            for mutant, result in zip(chosen, pool.map(task, chosen)):
                results[mutant.name] = result
                outcome, detail, seconds = result
                print(f"{outcome:8s} {mutant.name:45s} {seconds:6.0f}s  {detail}", flush=True)

    killed = sum(r[0] == "killed" for r in results.values())
    survived = [name for name, r in results.items() if r[0] == "survived"]
    stale = [name for name, r in results.items() if r[0] == "stale"]
    print()
    print(f"score: {killed}/{killed + len(survived)} killed" + (f", {len(stale)} stale" if stale else ""))
    if survived:
        print("survived: " + ", ".join(survived))
    if stale:
        print("stale (update these mutants): " + ", ".join(stale))
    return 0 if not survived and not stale else 1


if __name__ == "__main__":
    sys.exit(main())
