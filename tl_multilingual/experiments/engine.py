"""The experiment engine: one loop of baseline, condition and random-neuron controls.

Every controlled intervention experiment of the library has the same shape: measure
the unmodified model (the *baseline*), then, for every *condition* (a language's
neurons, a stage's neurons, a sharing class scaled by a factor), edit the model with
the condition's neuron mask and measure again (the *hit*), and do the same with
random masks holding as many neurons in every layer, drawn outside the condition's
mask (the *controls*, [`NeuronMask.controls()`][tl_multilingual.neurons.masks.NeuronMask.controls]). The change from the baseline
comes with a paired percentile bootstrap interval over the units measured (texts,
items, prompts; [`tl_multilingual.resample`][tl_multilingual.resample]): the same draw of units for the hit,
the controls and the baseline, so variation the conditions share cancels.

[`controlled_runs()`][tl_multilingual.experiments.engine.controlled_runs] is that loop, written once, and
[`paired_interval()`][tl_multilingual.experiments.engine.paired_interval] the interval. The experiments are thin
specialisations that say how to edit the model and what to measure, as
TransformerLens's ``patching.generic_activation_patch`` is specialised by its
per-activation patchers:

- [`deactivation_matrix()`][tl_multilingual.experiments.deactivation.deactivation_matrix] (Zhang et al., AAAI-26, Fig. 2): a
  condition per (class variant, language), deactivated; every language's
  perplexity or accuracy measured;
- [`stage_effects()`][tl_multilingual.experiments.stage_deactivation.stage_effects]: a condition per (stage, language), the
  language's neurons deactivated inside the stage only; perplexity and the lens
  measured;
- [`boost_experiment()`][tl_multilingual.experiments.sharing_experiments.boost_experiment] (Wang et al., 2024): a condition per
  (sharing class, factor), each item with its own class mask (a block per item),
  scaled; each item answered in every language.

Units come in *blocks* that each get their own mask: one block for a whole evaluation
set, or one block per item when every item has its own mask. The controls of block
``b`` are drawn with seed ``seed + 97 * b``. An empty mask changes nothing: its run
is the baseline, not measured again.

A new experiment of this shape is a function that builds its conditions, calls
`controlled_runs()` with its edit and its measurement, and turns the runs into
rows with `paired_interval()`; the experiment verbs take the same run options,
spelled the same way: ``seed``, ``n_boot``, ``ci``, ``batch_size``, ``progress``,
``allow_mismatch``, ``max_length`` and ``overflow``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Hashable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import distributed, resample
from ..errors import SaveError, TLMultilingualError, warn
from ..neurons.masks import NeuronMask
from ..persist import atomic_folder, read_json, write_text

__all__ = ["controlled_runs", "paired_interval", "ControlledRuns", "ConditionRuns", "control_seed",
           "RunStore", "save_frame", "load_frame", "inputs_key", "variant_rows"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class ConditionRuns(Generic[V]):
    """One condition's measurements, per block of units.

    Attributes:
        hit: the measurement under the condition's own mask, per block.
        controls: ``controls[c][b]``, the measurement under random control ``c`` of
            block ``b``.
        sizes: neurons in the condition's mask, per block.
    """

    hit: list[V]
    controls: list[list[V]]
    sizes: list[int]


@dataclass
class ControlledRuns(Generic[K, V]):
    """What [`controlled_runs()`][tl_multilingual.experiments.engine.controlled_runs] measured.

    Attributes:
        baseline: the unmodified model's measurement, per block.
        conditions: per condition key, its [`ConditionRuns`][tl_multilingual.experiments.engine.ConditionRuns], in the
            order the conditions were given.
    """

    baseline: list[V]
    conditions: dict[K, ConditionRuns[V]]


def save_frame(frame: pd.DataFrame, path: Path) -> None:
    """Write a DataFrame of numbers, strings and booleans as JSON that reads back exactly
    (every float64 bit, the dtypes, the index), atomically."""
    body = {"columns": [str(c) for c in frame.columns],
            "dtypes": [str(t) for t in frame.dtypes],
            "index": frame.index.tolist(),
            "data": [frame[c].tolist() for c in frame.columns]}
    write_text(path, json.dumps(body, allow_nan=True))


def load_frame(path: Path) -> pd.DataFrame:
    """Read a DataFrame written by [`save_frame()`][tl_multilingual.experiments.engine.save_frame].

    Raises:
        SaveError: the file is missing, not JSON or not such a frame.
    """
    body = read_json(path)
    try:
        columns = {name: pd.Series(values, dtype=dtype)
                   for name, dtype, values in zip(body["columns"], body["dtypes"], body["data"], strict=True)}
        frame = pd.DataFrame(columns)
        frame.index = pd.Index(body["index"]) if len(body["index"]) else frame.index
    except (KeyError, TypeError, ValueError) as err:
        raise SaveError(f"{path} is not a saved table: {err}") from err
    if not isinstance(frame.index, pd.RangeIndex) and frame.index.equals(pd.RangeIndex(len(frame))):
        frame.index = pd.RangeIndex(len(frame))
    return frame


@dataclass
class RunStore:
    """Where [`controlled_runs()`][tl_multilingual.experiments.engine.controlled_runs] keeps each
    finished run (the baseline, a hit, a control), so that an interrupted experiment
    resumes after its last finished run.

    Attributes:
        folder: the folder of the runs (``run-00000``, ... and ``plan.json``).
        inputs: a key of everything the runs depend on beyond their masks and seeds (the
            data, the model and its weights, the settings); runs saved for other inputs,
            or other masks, are discarded.
        save: ``save(value, folder)`` writes one run's value into an empty folder.
        load: ``load(folder)`` reads it back, exactly.
    """

    folder: Path
    inputs: str
    save: Callable[[Any, Path], None]
    load: Callable[[Path], Any]

    def open(self, plan: str) -> None:
        """Keep the saved runs only if they were saved for ``plan`` and these inputs."""
        self.folder = Path(self.folder)
        record = self.folder / "plan.json"
        try:
            previous = read_json(record) if record.exists() else None
        except SaveError:
            previous = None
        expected = {"plan": plan, "inputs": self.inputs}
        if previous != expected:
            if self.folder.exists():
                if previous is not None:
                    warn(f"the runs saved in {self.folder} were made for other inputs; running them again")
                shutil.rmtree(self.folder, ignore_errors=True)
            write_text(record, json.dumps(expected))

    def get(self, index: int) -> Any | None:
        path = self.folder / f"run-{index:05d}"
        if not path.is_dir():
            return None
        try:
            return self.load(path)
        except (TLMultilingualError, OSError, ValueError, KeyError):
            return None  # damaged: measured again

    def put(self, index: int, value: Any) -> None:
        with atomic_folder(self.folder / f"run-{index:05d}") as staging:
            self.save(value, staging)


def inputs_key(**parts: Any) -> str:
    """A key of what an experiment's runs depend on (plain data; other objects by
    ``str``), for [`RunStore`][tl_multilingual.experiments.engine.RunStore] (``inputs``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _plan(conditions: Mapping[Any, Callable[[int], NeuronMask]], n_blocks: int,
          n_controls: Mapping[Any, int], seed: int) -> str:
    digest = hashlib.sha256(json.dumps([n_blocks, seed]).encode())
    for key, mask_of in conditions.items():
        digest.update(repr(key).encode() + str(n_controls.get(key, 0)).encode())
        for block in range(n_blocks):
            digest.update(mask_of(block).tensor.numpy().tobytes())
    return digest.hexdigest()


def control_seed(seed: int, block: int) -> int:
    """The seed of the random controls of ``block``: ``seed + 97 * block``.

    Every condition of a block draws its controls from this seed (common random
    numbers): two conditions with the same mask sizes and overlapping exclusions get
    largely the same control neurons, so their control measurements are correlated.
    Each cell's interval is unaffected; an analysis that pools control effects across
    conditions of one block must not treat them as independent draws.
    """
    return seed + 97 * block


def controlled_runs(
    conditions: Mapping[K, Callable[[int], NeuronMask]],
    measure: Callable[[int], V],
    intervene: Callable[[K, NeuronMask], AbstractContextManager],
    *,
    n_blocks: int = 1,
    controls: int | Mapping[K, int] = 3,
    seed: int = 0,
    desc: str = "experiment",
    progress: bool = True,
    store: RunStore | None = None,
) -> ControlledRuns[K, V]:
    """Measure the baseline, then every condition and its random controls.

    First the unmodified model is measured on every block; then, for every condition
    in order and every block, the block's mask (the hit) and the condition's random
    controls, each inside ``intervene``. The progress bar closes however the loop ends,
    and ``intervene`` removes its hooks however a measurement ends.

    Args:
        conditions: per condition key, the mask of each block (``mask_of(block)``).
        measure: ``measure(block)`` measures one block on the model as it stands
            (edited or not) and returns its per-unit values.
        intervene: ``intervene(key, mask)``: a context manager that edits the model
            with ``mask`` for the condition ``key`` (e.g. ``ablate(lm, mask)``,
            ``boost(lm, mask, factor=key[1])``) and undoes the edit on exit.
        n_blocks: number of blocks of units.
        controls: random control masks per condition, or a number per condition key.
        seed: seed of the controls ([`control_seed()`][tl_multilingual.experiments.engine.control_seed]).
        desc: the progress bar's label.
        progress: show a progress bar.
        store: where each finished run is saved and, on a rerun with the same masks,
            seeds and inputs, read back instead of measured again
            ([`RunStore`][tl_multilingual.experiments.engine.RunStore]). When the work is
            split across processes, rank 0 reads and writes the store and sends each
            saved run to the other ranks, so every rank skips the same runs.

    Returns:
        [`ControlledRuns`][tl_multilingual.experiments.engine.ControlledRuns]: the baseline per block and, per condition,
        its hits, controls and mask sizes.

    Raises:
        MaskError: a mask holds more than half of some layer's neurons, so no control
            of the same size fits outside it (pass ``controls=0``).
    """
    if isinstance(controls, Mapping):
        n_controls = dict(controls)
    else:
        n_controls = dict.fromkeys(conditions, controls)
    total = n_blocks * (1 + sum(1 + n_controls.get(key, 0) for key in conditions))
    baseline: list[V] = []
    shown = distributed.show_progress(progress)
    if store is not None:  # every rank takes part in every run: rank 0 keeps the store
        plan = _plan(conditions, n_blocks, n_controls, seed)
        distributed.on_main(lambda: store.open(plan))
    counter = iter(range(total))

    def measured(block: int) -> V:
        """``measure(block)``, or the saved value of this run (rank 0's, on every rank)."""
        index = next(counter)
        if store is None:
            return measure(block)
        saved = distributed.broadcast(store.get(index) if distributed.is_main() else None)
        if saved is not None:
            return saved
        value = measure(block)
        distributed.on_main(lambda: store.put(index, value))
        return value

    with tqdm(total=total, disable=not shown, desc=desc, unit="run") as bar:

        def run(key: K, block: int, mask: NeuronMask) -> V:
            if mask.count() == 0:
                next(counter)
                value = baseline[block]
            else:
                with intervene(key, mask):
                    value = measured(block)
            bar.update()
            return value

        for block in range(n_blocks):
            baseline.append(measured(block))
            bar.update()
        runs: dict[K, ConditionRuns[V]] = {}
        for key, mask_of in conditions.items():
            n = n_controls.get(key, 0)
            result: ConditionRuns[V] = ConditionRuns([], [[] for _ in range(n)], [])
            for block in range(n_blocks):
                mask = mask_of(block)
                result.sizes.append(mask.count())
                result.hit.append(run(key, block, mask))
                for c, random_mask in enumerate(mask.controls(n, seed=control_seed(seed, block))):
                    result.controls[c].append(run(key, block, random_mask))
            runs[key] = result
    return ControlledRuns(baseline, runs)


def paired_interval(
    hit: np.ndarray,
    baseline: np.ndarray,
    unit_draws: np.ndarray,
    ci: float,
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> tuple[float, float, float]:
    """The change from ``baseline`` to ``hit`` over the same units, with its paired
    percentile bootstrap interval ([`tl_multilingual.resample`][tl_multilingual.resample]).

    Args:
        hit: per-unit values under the condition (units along the last axis for a
            ``statistic``, along the first otherwise).
        baseline: the same units' values under the baseline, same shape.
        unit_draws: bootstrap draws of unit indices ``[n_boot, n_units]``
            ([`tl_multilingual.resample.draws()`][tl_multilingual.resample.draws]), shared by both conditions.
        ci: the interval's coverage.
        statistic: ``statistic(values, index)`` -> the statistic over the units
            ``index`` (``[..., n]`` -> ``[...]``), for statistics other than the mean
            (a perplexity is a ratio of sums); None: the mean change, with
            [`mean_interval()`][tl_multilingual.resample.mean_interval] (its NaN policy).

    Returns:
        ``(change, ci_low, ci_high)``.
    """
    if statistic is None:
        change, low, high = resample.mean_interval(hit, baseline=baseline, ci=ci,
                                                   unit_draws=unit_draws)
        return float(change), float(low), float(high)
    every = np.arange(unit_draws.shape[1])
    change = float(statistic(hit, every) - statistic(baseline, every))
    replicates = statistic(hit, unit_draws) - statistic(baseline, unit_draws)
    low, high = resample.percentile_interval(replicates, ci)
    return change, float(low), float(high)


def variant_rows(frame: Any, variant: str | None) -> tuple[str, Any]:
    """The rows of an experiment's tidy ``frame`` for one ``variant`` (default: the
    first in the frame), and that variant's name.

    Raises:
        TLMultilingualError: ``frame`` has no such variant.
    """
    variants = list(dict.fromkeys(frame["variant"]))
    variant = variant or variants[0]
    if variant not in variants:
        raise TLMultilingualError(f"no variant {variant!r}; have {variants}")
    return variant, frame[frame["variant"] == variant]
