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

**Positions.** ``positions=`` counts each text's real tokens, whatever the padding
and the batch: ``0`` is a text's first token (BOS when the model reads one), ``-1``
its last real token, ``-2`` the one before, on either padding side and at any batch
size, so a text is edited the same way alone or next to longer texts. It takes an
index, a slice, a list of indices, an integer tensor of indices, a boolean tensor
``[pos]`` (the positions marked, counted the same way), or a boolean tensor
``[batch, pos]`` that marks tokens of the batch as it is run (the padded layout of
[`ModelAdapter.pad()`][tl_multilingual.model.adapters.ModelAdapter.pad], like its attention mask). An index beyond a text's real
tokens, or a boolean mask that marks padding, is refused during the pass that meets
it. The library's own passes tell the hooks which tokens are real (see
[`running_batch()`][tl_multilingual.model.adapters.running_batch]); under TransformerLens's own ``run_with_hooks`` or a
direct ``model(...)`` call no attention mask reaches the hooks and every position of
the run counts as a real token, so run padded batches through the library (e.g.
``lm.forward(batch)``) when ``positions=`` is given.

**Values.** Every value an edit writes (a set or added value, a scale factor, a
patch source, a steering vector) must be finite at the neurons it edits; there is no
exception. Positions must be integers or booleans, and no value, position or mask
tensor may be on the ``meta`` device. Both are checked when an edit is made, before
any hook is placed.

**Fresh tensors.** An edited layer's hook returns a new tensor; the tensor the hook
was given is never written, so another hook that kept a reference to it (a cache)
still holds the unedited values.

Masks and statistics must come from the model they are applied to: a different
shape is always refused, a different model name or architecture unless the verb is
given ``allow_mismatch=True`` (see `tl_multilingual.provenance`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..errors import MaskError, StatsError, TLMultilingualError
from ..model.adapters import Batch, ModelAdapter, adapt, running_batch, whole_number
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
Positions = None | int | slice | Sequence[int] | Tensor  # see the module docstring
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
        positions: the sequence positions edited (None: all), counted in each text's
            real tokens (negative: back from its last real token): an int, a slice, a
            list or integer tensor of indices, a boolean tensor ``[pos]``, or a
            boolean tensor ``[batch, pos]`` in the batch's padded layout (see the
            module docstring).

    Raises:
        TLMultilingualError: an unknown operation; a value that is not a number or a
            real tensor, or that is NaN or infinite at an edited neuron; positions
            that are not integers or booleans; a value or position tensor on the
            ``meta`` device.
        MaskError: a mask that is not a ``NeuronMask``, or whose tensor is on the
            ``meta`` device.
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
        if not isinstance(self.mask.tensor, Tensor) or self.mask.tensor.is_meta:
            raise MaskError("the mask's tensor is on the meta device and holds no neurons")
        object.__setattr__(self, "value", check_value(self.op, self.value, self.mask))
        object.__setattr__(self, "positions", check_positions(self.positions))


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
        where = [_Where(edit.positions) for edit in self.edits]  # one per edit, for all layers
        for layer in range(lm.n_layers):
            plans = [_LayerEdit.build(lm, edit, layer, w) for edit, w in zip(self.edits, where)]
            plans = [p for p in plans if p is not None]
            if not plans:
                continue
            ups: dict[str, Tensor] = {}
            if lm.gated and any(p.needs_up for p in plans):
                hooks.append((lm.up_hook(layer), _keep(ups)))
            hooks.append((lm.write_hook(layer), _apply(plans, ups, lm.model)))
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


def _apply(plans: list[_LayerEdit], ups: dict[str, Tensor], model: Any) -> Callable[..., Tensor]:
    def apply(tensor: Tensor, hook: Any) -> Tensor:
        out = tensor.clone()  # a fresh tensor: hooks that kept ``tensor`` see it unedited
        batch = running_batch(model)
        try:
            for plan in plans:
                plan.apply(out, ups.get("up"), batch)
        finally:
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
    where: _Where
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
    def build(cls, lm: ModelAdapter, edit: Edit, layer: int, where: _Where) -> _LayerEdit | None:
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
        return cls(edit.op, index, value, where, lm.gated)

    def apply(self, out: Tensor, up: Tensor | None, batch: Batch | None) -> None:
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
        rows = self.where.rows(out.shape, out.device, batch)
        if rows is not None:
            new = torch.where(rows[..., None], new, current)
        out[..., index] = new.to(out.dtype)


def _broadcast_source(source: Tensor, like: Tensor) -> Tensor:
    if source.ndim > like.ndim or any(s not in (1, t) for s, t in zip(source.shape[::-1], like.shape[::-1])):
        raise TLMultilingualError(
            f"patch source {tuple(source.shape)} does not match the run's [batch, pos, neurons] = "
            f"{tuple(like.shape)}: give per-position values for the same length, or one vector to broadcast"
        )
    return source.expand_as(like)


# -- validation --------------------------------------------------------------------

_VALUE_NAMES = {
    "set": "value set", "add": "value added", "scale": "scale factor", "patch": "patch source",
}


def check_value(op: str, value: Any, mask: NeuronMask) -> float | Tensor:
    """The one validation of the values an edit writes, shared by every intervention.

    Args:
        op: the operation (``"set"``, ``"add"``, ``"scale"``, ``"patch"``).
        value: a number, or a tensor whose last two axes are ``[n_layers, d_mlp]``
            (others are checked whole; their shape is refused later).
        mask: the neurons edited; only their values must be finite.

    Returns:
        The value: a ``float`` for a number or a 0-d tensor, the tensor unchanged
        otherwise (a NumPy array becomes a tensor).

    Raises:
        TLMultilingualError: not a real number or tensor; a tensor on the ``meta``
            device; a NaN or infinite value at an edited neuron (no operation needs
            one: a NaN or infinite factor, source or vector only turns the logits
            into NaN).
    """
    what = _VALUE_NAMES.get(op, "value")
    if hasattr(value, "__array__") and not isinstance(value, (Tensor, numbers.Number)):
        value = torch.as_tensor(value)  # a NumPy array
    if isinstance(value, Tensor):
        if value.is_meta:
            raise TLMultilingualError(f"the {what} is on the meta device and holds no values")
        if value.dtype == torch.bool or value.is_complex():
            raise TLMultilingualError(f"the {what} must hold real numbers, got dtype {value.dtype}")
        edited = value
        if value.ndim >= 2 and tuple(value.shape[-2:]) == tuple(mask.shape):
            edited = value[..., mask.tensor.to(value.device)]
        bad = ~torch.isfinite(edited)
        if bool(bad.any()):
            raise TLMultilingualError(
                f"the {what} holds {int(bad.sum())} NaN or infinite values at the edited neurons; "
                "edits must be finite"
            )
        return float(value) if value.ndim == 0 else value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TLMultilingualError(f"the {what} must be a number or a tensor, got {value!r:.60}")
    if not math.isfinite(value):
        raise TLMultilingualError(f"the {what} must be finite, got {value}")
    return float(value)


def check_positions(positions: Any) -> Positions:
    """The one validation of ``positions=``, before any hook is placed.

    Returns:
        ``None``, an ``int``, a ``slice`` of ints, a tuple of ints, or a boolean tensor
        ``[pos]`` / ``[batch, pos]``.

    Raises:
        TLMultilingualError: positions that are not whole numbers or booleans (floats,
            strings, a bare ``True``), a slice with non-integer bounds or a zero step,
            a tensor on the ``meta`` device or of more than two axes.
    """
    if positions is None:
        return None
    what = "positions"
    if isinstance(positions, slice):
        parts = (positions.start, positions.stop, positions.step)
        if any(p is not None and (isinstance(p, bool) or not isinstance(p, numbers.Integral))
               for p in parts):
            raise TLMultilingualError(f"a positions slice takes whole numbers, got {positions!r}")
        if positions.step == 0:
            raise TLMultilingualError("a positions slice cannot have step 0")
        return slice(*(None if p is None else int(p) for p in parts))
    if isinstance(positions, Tensor):
        if positions.is_meta:
            raise TLMultilingualError("the positions are on the meta device and hold no values")
        if positions.dtype == torch.bool:
            if positions.ndim not in (1, 2):
                raise TLMultilingualError(
                    "a boolean positions mask is [pos] or [batch, pos], got "
                    f"{tuple(positions.shape)}"
                )
            return positions.detach()
        if positions.is_floating_point() or positions.is_complex():
            raise TLMultilingualError(
                f"positions must be whole numbers or a boolean mask, got dtype {positions.dtype}"
            )
        if positions.ndim > 1:
            raise TLMultilingualError(
                f"integer positions are one list of indices, got shape {tuple(positions.shape)}"
            )
        return int(positions) if positions.ndim == 0 else tuple(positions.tolist())
    if isinstance(positions, (str, bytes)) or isinstance(positions, bool):
        raise TLMultilingualError(
            f"{what} must be whole numbers or a boolean mask, got {positions!r:.60}"
        )
    if isinstance(positions, numbers.Integral):
        return int(positions)
    if hasattr(positions, "__array__") and not isinstance(positions, Sequence):
        return check_positions(torch.as_tensor(positions))
    if not isinstance(positions, Iterable):
        raise TLMultilingualError(
            f"{what} must be whole numbers or a boolean mask, got {positions!r:.60}"
        )
    return tuple(whole_number(item, what) for item in positions)


@dataclass
class _Where:
    """The positions of one edit, turned into a ``[batch, pos]`` mask of each run."""

    positions: Positions
    _last: tuple = field(default=(), repr=False)  # (batch, shape, device, rows) of the last run

    def rows(self, shape: torch.Size, device: torch.device, batch: Batch | None) -> Tensor | None:
        """Which tokens of a run of ``shape`` (``[batch, pos, ...]``) are edited (None:
        all), from the attention mask of ``batch`` (None: every position is real).

        Raises:
            TLMultilingualError: an index beyond a text's real tokens, or a boolean mask
                that does not fit the run or marks padding.
        """
        if self.positions is None:
            return None
        key = (tuple(shape[:2]), device)
        if self._last and self._last[0] is batch and self._last[1] == key:
            return self._last[2]
        rows = _position_mask(self.positions, key[0], device, batch)
        self._last = (batch, key, rows)
        return rows


def _position_mask(
    positions: Positions, shape: tuple[int, ...], device: torch.device, batch: Batch | None
) -> Bool[Tensor, "batch pos"]:
    n_rows, length = shape
    if batch is not None and tuple(batch.attention_mask.shape) == (n_rows, length):
        real = batch.attention_mask.to(device).bool()
    else:  # outside the library's passes: nothing says which tokens are padding
        real = torch.ones(n_rows, length, dtype=torch.bool, device=device)
    if isinstance(positions, Tensor) and positions.ndim == 2:
        marked = positions.to(device)
        if tuple(marked.shape) != (n_rows, length):
            raise TLMultilingualError(
                f"a [batch, pos] positions mask must have the run's shape {(n_rows, length)}, "
                f"got {tuple(marked.shape)}"
            )
        if bool((marked & ~real).any()):
            row = int((marked & ~real).any(1).nonzero()[0])
            raise TLMultilingualError(
                f"the positions mask marks padding in row {row}: mark real tokens only (where the "
                "batch's attention mask is 1)"
            )
        return marked
    counts = real.sum(1)
    first = real.int().argmax(1)  # where each row's real tokens start (either padding side)
    out = torch.zeros(n_rows, length, dtype=torch.bool, device=device)
    if isinstance(positions, Tensor):  # a boolean [pos]: the positions it marks
        positions = tuple(positions.nonzero().squeeze(1).tolist())
    if isinstance(positions, slice):
        for row, (n, start) in enumerate(zip(counts.tolist(), first.tolist())):
            chosen = list(range(n)[positions])
            if chosen:
                out[row, torch.tensor(chosen, device=device) + start] = True
        return out
    wanted = torch.tensor([positions] if isinstance(positions, int) else list(positions),
                          dtype=torch.long, device=device)
    if wanted.numel() == 0:
        return out
    index = torch.where(wanted < 0, counts[:, None] + wanted, wanted.expand(n_rows, -1))
    outside = (index < 0) | (index >= counts[:, None])
    if bool(outside.any()):
        row, col = (int(i) for i in outside.nonzero()[0])
        raise TLMultilingualError(
            f"position {int(wanted[col])} is outside text {row} of the batch, which has "
            f"{int(counts[row])} real tokens (positions count each text's real tokens; negative "
            "ones count back from its last)"
        )
    out.scatter_(1, first[:, None] + index, True)
    return out


# -- verbs ---------------------------------------------------------------------------


def _restricted(lm: ModelAdapter, mask: NeuronMask, layers: Layers) -> NeuronMask:
    return mask if layers is None else mask.restrict(lm.layer_range(layers))


def intervene(model: Any, edits: Iterable[Edit], *, allow_mismatch: bool = False) -> Interventions:
    """Bind edits to a model (composition of any kinds, applied in order per layer).

    Raises:
        MaskError: a mask of another shape, or (unless ``allow_mismatch``) identified on
            another model.
        TLMultilingualError: an item that is not an [`Edit`][tl_multilingual.causal.interventions.Edit] (edits validate
            their values and positions when they are made).
    """
    lm = adapt(model)
    edits = list(edits)
    for edit in edits:
        if not isinstance(edit, Edit):
            raise TLMultilingualError(f"intervene takes Edit objects, got {type(edit).__name__}")
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

    ``positions`` count each text's real tokens (see the module docstring).

    Raises:
        StatsError, MaskError: statistics or a mask of another shape, or of another
            model (unless ``allow_mismatch``).
        TLMultilingualError: a value that is not a finite number, ``"zero"`` or
            ``"mean"``; mean activations that are not finite; bad ``positions``.
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
    elif isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
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
    ``positions`` count each text's real tokens (``[-1]``: each text's last token; see
    the module docstring). ``allow_mismatch`` as in [`ablate()`][tl_multilingual.causal.interventions.ablate].

    Raises:
        TLMultilingualError: a factor that is not a finite number (or a tensor of
            finite values at the edited neurons); bad ``positions``.
        MaskError: a mask of another shape, or of another model (unless
            ``allow_mismatch``).
    """
    lm = adapt(model)
    return intervene(lm, [Edit(_restricted(lm, mask, layers), "scale", factor, positions)],
                     allow_mismatch=allow_mismatch)


def check_steering(mode: str, strength: Any, source: str | None) -> float:
    """The one validation of [`steer()`][tl_multilingual.causal.interventions.steer]'s options,
    before any hook is placed or any text is read.

    Returns:
        ``strength`` as a ``float``.

    Raises:
        TLMultilingualError: a ``mode`` other than ``"set"`` or ``"add"``; a
            ``strength`` that is not a finite number, or other than 1 with
            ``mode="set"`` (which sets means and has no strength); ``mode="add"``
            without ``source``.
    """
    if mode not in ("set", "add"):
        raise TLMultilingualError(f"mode must be 'set' or 'add', got {mode!r}")
    if isinstance(strength, Tensor) and strength.ndim == 0 and not strength.is_meta:
        strength = float(strength)
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not math.isfinite(strength):
        raise TLMultilingualError(f"strength must be a finite number, got {strength!r:.40}")
    if mode == "set" and strength != 1.0:
        raise TLMultilingualError(
            f"strength={strength} scales the steering vector of mode='add'; mode='set' sets the "
            "neurons to the mean activation of `to`, with no strength: pass mode='add' and source= "
            "to scale a steering vector")
    if mode == "add" and source is None:
        raise TLMultilingualError("mode='add' steers by a difference of means: pass source=")
    return float(strength)


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
    ``positions`` count each text's real tokens (see the module docstring).
    ``allow_mismatch`` as in [`ablate()`][tl_multilingual.causal.interventions.ablate].

    Raises:
        StatsError, MaskError: statistics or a mask of another shape, or of another
            model (unless ``allow_mismatch``).
        TLMultilingualError: a ``strength`` that is not a finite number, or other than
            1 with ``mode="set"`` (which has no strength); a steering vector that is NaN
            or infinite at an edited neuron (a language without tokens); bad
            ``positions`` or ``layers``.
    """
    lm = adapt(model)
    strength = check_steering(mode, strength, source)
    stats = _checked_stats(lm, stats, "steering", allow_mismatch)
    target = _language_means(stats, to)
    mask = _restricted(lm, mask, layers)
    if mode == "set":
        return intervene(lm, [Edit(mask, "set", target, positions)], allow_mismatch=allow_mismatch)
    delta = strength * (target - _language_means(stats, source))
    return intervene(lm, [Edit(mask, "add", delta, positions)], allow_mismatch=allow_mismatch)


def patch(
    model: Any, mask: NeuronMask, source: Tensor, *, layers: Layers = None, positions: Positions = None,
    allow_mismatch: bool = False,
) -> Interventions:
    """Copy the neurons of ``mask`` from a source run's write-hook values (see [`record()`][tl_multilingual.causal.interventions.record]).

    ``source`` is ``[n_layers, d_mlp]`` (one vector broadcast to every position),
    ``[pos, n_layers, d_mlp]`` or ``[batch, pos, n_layers, d_mlp]`` (per position, in
    the padded layout of the batch it is run on, as [`record()`][tl_multilingual.causal.interventions.record] gives it).
    ``positions`` count each text's real tokens (see the module docstring).
    ``allow_mismatch`` as in [`ablate()`][tl_multilingual.causal.interventions.ablate].

    Raises:
        TLMultilingualError: a source that is NaN or infinite at an edited neuron, or
            on the ``meta`` device; bad ``positions``.
        MaskError: a mask of another shape, or of another model (unless
            ``allow_mismatch``).
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
