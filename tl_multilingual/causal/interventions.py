"""Causal interventions on neuron masks, at the adapter's write hook.

Every intervention edits the neurons of a [`NeuronMask`][tl_multilingual.neurons.masks.NeuronMask] at
``blocks.{l}.mlp.hook_post``, the vector that multiplies ``W_out``:

========== ============================== ==========================================
operation  plain MLP (``c = v``)           gated MLP (``c = v * up``)
========== ============================== ==========================================
zero       ``c = 0``                       ``c = 0``, i.e. ``act_fn(gate) = 0``
set ``a``  ``c = a``                       ``c = a * up``, i.e. ``act_fn(gate) = a``
add ``d``  ``c = c + d``                   ``c = (v + d) * up``
scale      ``c = f c``                     ``c = f c``, i.e. ``act_fn(gate) *= f``
patch      ``c = c_source``                ``c = c_source`` (the source's ``act_fn(gate) * up``)
========== ============================== ==========================================

``v`` is the neuron value (``act_fn(gate)`` for gated MLPs, as in the statistics),
``c`` what multiplies ``W_out`` and ``up = x W_in`` (read at ``hook_pre_linear`` in
the same pass). Values given to ``set`` and ``add`` (constants, a language's mean
activation from [`ActivationStats`][tl_multilingual.neurons.stats.ActivationStats]) are neuron values ``v``; ``patch`` copies
``c``, so a patched neuron's contribution to the residual stream is the source's.

The verbs [`ablate()`][tl_multilingual.causal.interventions.ablate], [`boost()`][tl_multilingual.causal.interventions.boost], [`steer()`][tl_multilingual.causal.interventions.steer], [`patch()`][tl_multilingual.causal.interventions.patch] and
[`intervene()`][tl_multilingual.causal.interventions.intervene] return [`Interventions`][tl_multilingual.causal.interventions.Interventions]: use them as context managers (hooks
are removed on exit, also when the body raises), add them with ``+`` to compose, or
take ``.hooks()`` for TransformerLens's ``run_with_hooks`` / ``model.hooks()``.

Masks and statistics must come from the model they are applied to: a different
shape is always refused, a different model name or architecture unless the verb is
given ``allow_mismatch=True`` (see `tl_multilingual.provenance`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..errors import MaskError, StatsError, TLMultilingualError
from ..model.adapters import ModelAdapter, adapt
from ..neurons.masks import NeuronMask
from ..neurons.stats import ActivationStats
from ..provenance import check_fits

__all__ = [
    "Edit",
    "Interventions",
    "intervene",
    "ablate",
    "ablation_hooks",
    "boost",
    "steer",
    "patch",
    "record",
]

Op = Literal["set", "add", "scale", "patch"]
Positions = None | int | slice | Sequence[int] | Tensor
Layers = None | Iterable[int] | slice  # e.g. stage_map.layers("shared_reasoning")


@dataclass(frozen=True)
class Edit:
    """One operation on the neurons of a mask.

    Attributes:
        mask: the neurons edited.
        op: ``"set"``, ``"add"``, ``"scale"`` or ``"patch"`` (see the module table).
        value: a number, or a tensor ``[n_layers, d_mlp]`` of per-neuron values; for
            ``patch`` the source's write-hook values ``[..., n_layers, d_mlp]`` with
            optional leading ``[batch, pos]`` or ``[pos]`` axes (none: broadcast).
        positions: the sequence positions edited (None: all). An int, slice or list
            of indices into the position axis, or a boolean tensor ``[pos]`` or
            ``[batch, pos]``.
    """

    mask: NeuronMask
    op: Op
    value: float | Tensor
    positions: Positions = None

    def __post_init__(self) -> None:
        if self.op not in ("set", "add", "scale", "patch"):
            raise TLMultilingualError(f"unknown intervention {self.op!r}")
        if not isinstance(self.mask, NeuronMask):
            raise MaskError(f"interventions need a NeuronMask, got {type(self.mask).__name__}")


@dataclass
class Interventions:
    """Edits bound to a model: a context manager, a hook list, composable with ``+``."""

    adapter: ModelAdapter
    edits: list[Edit] = field(default_factory=list)
    _stack: list[ExitStack] = field(default_factory=list, repr=False)

    def __add__(self, other: Interventions) -> Interventions:
        if other.adapter.model is not self.adapter.model:
            raise TLMultilingualError("cannot combine interventions on different models")
        return Interventions(self.adapter, self.edits + other.edits)

    def hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        """Forward hooks implementing the edits, for ``run_with_hooks`` / ``model.hooks()``."""
        lm = self.adapter
        for edit in self.edits:
            if edit.mask.shape != (lm.n_layers, lm.d_mlp):
                raise MaskError(f"mask shape {edit.mask.shape} does not fit {lm.n_layers}x{lm.d_mlp}")
        hooks: list[tuple[str, Callable[..., Any]]] = []
        for layer in range(lm.n_layers):
            plans = [_LayerEdit.build(lm, edit, layer) for edit in self.edits]
            plans = [p for p in plans if p is not None]
            if not plans:
                continue
            ups: dict[str, Tensor] = {}
            if lm.gated and any(p.needs_up for p in plans):
                hooks.append((lm.up_hook(layer), _keep(ups)))
            hooks.append((lm.write_hook(layer), _apply(plans, ups)))
        return hooks

    def __enter__(self) -> Interventions:
        stack = ExitStack()
        stack.enter_context(self.adapter.hooks(self.hooks()))
        self._stack.append(stack)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._stack:
            raise TLMultilingualError("these interventions were never entered: use them as 'with interventions:'")
        self._stack.pop().close()


def _keep(store: dict[str, Tensor]) -> Callable[..., None]:
    def keep(tensor: Tensor, hook: Any) -> None:
        store["up"] = tensor

    return keep


def _apply(plans: list[_LayerEdit], ups: dict[str, Tensor]) -> Callable[..., Tensor]:
    def apply(tensor: Tensor, hook: Any) -> Tensor:
        out = tensor.clone() if tensor.requires_grad else tensor
        for plan in plans:
            plan.apply(out, ups.get("up"))
        ups.clear()
        return out

    return apply


@dataclass
class _LayerEdit:
    """An edit restricted to one layer. Its indices and values are moved, once, to the
    device of the activations the hook sees (a model split across devices)."""

    op: Op
    index: Tensor  # neuron indices in this layer
    value: Tensor  # scalar, or one value per edited neuron (with leading axes for patch)
    positions: Positions
    gated: bool
    _placed: dict = field(default_factory=dict, repr=False)

    def on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The indices and values on ``device`` (cached)."""
        if device not in self._placed:
            self._placed[device] = (self.index.to(device), self.value.to(device))
        return self._placed[device]

    @property
    def needs_up(self) -> bool:
        return self.op in ("set", "add")

    @classmethod
    def build(cls, lm: ModelAdapter, edit: Edit, layer: int) -> _LayerEdit | None:
        index = edit.mask.tensor[layer].nonzero().squeeze(1)
        if index.numel() == 0:
            return None
        value = edit.value
        if isinstance(value, Tensor):
            if value.shape[-2:] != (lm.n_layers, lm.d_mlp):
                raise TLMultilingualError(
                    f"intervention values must end in [n_layers, d_mlp] = [{lm.n_layers}, {lm.d_mlp}], "
                    f"got {tuple(value.shape)}"
                )
            value = value[..., layer, :].index_select(-1, index.to(value.device))
        value = torch.as_tensor(value).to(dtype=lm.dtype)
        return cls(edit.op, index, value, edit.positions, lm.gated)

    def apply(self, out: Tensor, up: Tensor | None) -> None:
        index, value = self.on(out.device)
        current = out[..., index]
        if self.op == "scale":
            new = current * value
        elif self.op == "patch":
            new = _broadcast_source(value, current)
        else:
            if self.gated and up is None:
                raise TLMultilingualError("the up projection of a gated MLP was not captured")
            scale = up[..., index] if self.gated else 1.0
            new = value * scale if self.op == "set" else current + value * scale
        if self.positions is not None:
            rows = _position_mask(self.positions, out.shape[:-1], out.device)
            new = torch.where(rows[..., None], new, current)
        out[..., index] = new.to(out.dtype)


def _broadcast_source(source: Tensor, like: Tensor) -> Tensor:
    if source.ndim > like.ndim or any(s not in (1, t) for s, t in zip(source.shape[::-1], like.shape[::-1])):
        raise TLMultilingualError(
            f"patch source {tuple(source.shape)} does not match the run's [batch, pos, neurons] = "
            f"{tuple(like.shape)}: give per-position values for the same length, or one vector to broadcast"
        )
    return source.expand_as(like)


def _position_mask(positions: Positions, shape: torch.Size, device: torch.device) -> Bool[Tensor, "batch pos"]:
    batch, length = shape[0], shape[1]
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        rows = positions.to(device)
        if rows.shape[-1] != length:
            raise TLMultilingualError(f"position mask covers {rows.shape[-1]} positions, the run has {length}")
        return rows.expand(batch, length)
    rows = torch.zeros(length, dtype=torch.bool, device=device)
    if isinstance(positions, (int, slice)):
        rows[positions] = True
    else:
        rows[torch.as_tensor(list(positions) if not isinstance(positions, Tensor) else positions, device=device)] = True
    return rows.expand(batch, length)


# -- verbs ---------------------------------------------------------------------------


def _restricted(lm: ModelAdapter, mask: NeuronMask, layers: Layers) -> NeuronMask:
    return mask if layers is None else mask.restrict(lm.layer_range(layers))


def intervene(model: Any, edits: Iterable[Edit], *, allow_mismatch: bool = False) -> Interventions:
    """Bind edits to a model (composition of any kinds, applied in order per layer).

    Raises:
        MaskError: a mask of another shape, or (unless ``allow_mismatch``) identified on
            another model.
    """
    lm = adapt(model)
    edits = list(edits)
    for edit in edits:
        if isinstance(edit, Edit):
            check_fits(lm, edit.mask, what="the mask", error=MaskError, allow_mismatch=allow_mismatch)
    return Interventions(lm, edits)


def _checked_stats(lm: ModelAdapter, stats: ActivationStats | None, what: str, allow_mismatch: bool) -> ActivationStats:
    if stats is None:
        raise TLMultilingualError(f"{what} needs activation statistics: pass stats=")
    if not isinstance(stats, ActivationStats):
        raise StatsError(f"{what} needs ActivationStats, got {type(stats).__name__}")
    check_fits(lm, stats, what="the statistics", error=StatsError, allow_mismatch=allow_mismatch)
    return stats


def _language_means(stats: ActivationStats, language: str) -> Float[Tensor, "layer neuron"]:
    return stats.means()[..., stats.language_index(language)]


def ablate(
    model: Any,
    mask: NeuronMask,
    *,
    value: float | Literal["zero", "mean"] = 0.0,
    stats: ActivationStats | None = None,
    language: str | None = None,
    layers: Layers = None,
    positions: Positions = None,
    allow_mismatch: bool = False,
) -> Interventions:
    """Deactivate the neurons of ``mask``: set them to zero (default), a constant, or
    their mean activation (``value="mean"``: over all languages of ``stats`` weighted
    by tokens, or over ``language``). ``layers`` is a range of layers, e.g.
    ``stage_map.layers("understanding")``.

    ``allow_mismatch=True`` accepts a mask or statistics of another model of the same
    shape (e.g. a base model's, on its fine-tuned version).

    Raises:
        StatsError, MaskError: statistics or a mask of another shape, or of another
            model (unless ``allow_mismatch``).
    """
    lm = adapt(model)
    mask = _restricted(lm, mask, layers)
    if isinstance(value, str) and value == "zero":
        value = 0.0
    if isinstance(value, str) and value == "mean":
        stats = _checked_stats(lm, stats, 'value="mean"', allow_mismatch)
        if language is None:
            target: Tensor | float = stats._require("sums").sum(-1) / stats.tokens.sum()
        else:
            target = _language_means(stats, language)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        target = float(value)
    else:
        raise TLMultilingualError(f'value must be a finite number, "zero" or "mean", got {value!r}')
    return intervene(lm, [Edit(mask, "set", target, positions)], allow_mismatch=allow_mismatch)


def ablation_hooks(model: Any, mask: NeuronMask, **kwargs: Any) -> list[tuple[str, Callable[..., Any]]]:
    """The hooks of [`ablate()`][tl_multilingual.causal.interventions.ablate], for ``model.run_with_hooks(..., fwd_hooks=...)``."""
    return ablate(model, mask, **kwargs).hooks()


def boost(
    model: Any, mask: NeuronMask, factor: float = 2.0, *, layers: Layers = None, positions: Positions = None,
    allow_mismatch: bool = False,
) -> Interventions:
    """Scale the neurons of ``mask`` by ``factor`` (Wang et al.'s (2024) strengthening).
    ``allow_mismatch`` as in [`ablate()`][tl_multilingual.causal.interventions.ablate]."""
    lm = adapt(model)
    return intervene(lm, [Edit(_restricted(lm, mask, layers), "scale", float(factor), positions)],
                     allow_mismatch=allow_mismatch)


def steer(
    model: Any,
    mask: NeuronMask,
    *,
    to: str,
    stats: ActivationStats,
    source: str | None = None,
    mode: Literal["set", "add"] = "set",
    strength: float = 1.0,
    layers: Layers = None,
    positions: Positions = None,
    allow_mismatch: bool = False,
) -> Interventions:
    """Push the neurons of ``mask`` toward language ``to``.

    ``mode="set"`` sets them to ``to``'s mean activation; ``mode="add"`` adds
    ``strength * (mean[to] - mean[source])``, the steering vector between the languages.
    ``allow_mismatch`` as in [`ablate()`][tl_multilingual.causal.interventions.ablate].

    Raises:
        StatsError, MaskError: statistics or a mask of another shape, or of another
            model (unless ``allow_mismatch``).
    """
    lm = adapt(model)
    stats = _checked_stats(lm, stats, "steering", allow_mismatch)
    target = _language_means(stats, to)
    mask = _restricted(lm, mask, layers)
    if mode == "set":
        return intervene(lm, [Edit(mask, "set", target, positions)], allow_mismatch=allow_mismatch)
    if mode != "add":
        raise TLMultilingualError(f"mode must be 'set' or 'add', got {mode!r}")
    if source is None:
        raise TLMultilingualError("mode='add' steers by a difference of means: pass source=")
    delta = strength * (target - _language_means(stats, source))
    return intervene(lm, [Edit(mask, "add", delta, positions)], allow_mismatch=allow_mismatch)


def patch(
    model: Any, mask: NeuronMask, source: Tensor, *, layers: Layers = None, positions: Positions = None,
    allow_mismatch: bool = False,
) -> Interventions:
    """Copy the neurons of ``mask`` from a source run's write-hook values (see [`record()`][tl_multilingual.causal.interventions.record]).

    ``source`` is ``[n_layers, d_mlp]`` (one vector broadcast to every position),
    ``[pos, n_layers, d_mlp]`` or ``[batch, pos, n_layers, d_mlp]`` (per position).
    ``allow_mismatch`` as in [`ablate()`][tl_multilingual.causal.interventions.ablate].
    """
    lm = adapt(model)
    return intervene(lm, [Edit(_restricted(lm, mask, layers), "patch", source, positions)],
                     allow_mismatch=allow_mismatch)


def record(model: Any, batch: Any, *, layers: Layers = None) -> Float[Tensor, "batch pos layer neuron"]:
    """Write-hook values of every neuron on a batch (padded as the adapter pads), for
    [`patch()`][tl_multilingual.causal.interventions.patch]. Layers outside ``layers`` are left at zero."""
    lm = adapt(model)
    wanted = lm.layer_range(layers)
    shape = (*batch.input_ids.shape, lm.n_layers, lm.d_mlp)
    out = torch.zeros(shape, device=lm.device, dtype=lm.dtype)

    def store(layer: int) -> Callable[..., None]:
        def keep(tensor: Tensor, hook: Any) -> None:
            out[:, :, layer] = tensor.detach()

        return keep

    lm.forward(batch, fwd_hooks=[(lm.write_hook(layer), store(layer)) for layer in wanted], logits=False)
    return out
