"""Whether a model and a result (or two results) belong together: one check for all.

Every result that depends on a model carries a record of it (`provenance`:
``name``, ``architecture``, ``shape = (n_layers, d_mlp)`` and ``weights``, a
fingerprint of the weights ([`weight_fingerprint()`][tl_multilingual.provenance.weight_fingerprint]),
as far as known), and
every place that combines a model with statistics, masks, neurons, sharing classes or
a stage map, or two statistics with each other, calls [`check_compatible()`][tl_multilingual.provenance.check_compatible].

The shape, the languages and the counting settings can never differ (the result
would be meaningless or the computation would fail). The model's name, architecture
and weights may differ on purpose, e.g. to apply a base model's statistics to its
fine-tuned version (same name and shape, other weights): every such entry point takes
``allow_mismatch=True`` for that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import TLMultilingualError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["check_compatible", "check_fits", "model_record", "record_of", "weight_fingerprint",
           "MODEL_FIELDS", "OVERRIDABLE", "SLICES"]

MODEL_FIELDS = ("shape", "name", "architecture", "weights")
OVERRIDABLE = ("name", "architecture", "weights")
SLICES = 8  # values read from each weight tensor for its fingerprint


def weight_fingerprint(model: Any) -> str | None:
    """A short fingerprint of a model's weights: SHA-256 of the shapes of its parameters
    and of ``SLICES`` values of each, read at fixed, evenly spaced positions of the
    flattened tensor (first and last included) and rounded to bfloat16.

    Cheap (a few values per tensor, whatever the model's size) and the same for the
    checkpoint loaded in float32 or bfloat16, on any device. Two checkpoints that differ
    only away from the positions read get the same fingerprint, so it tells apart
    checkpoints (a fine-tuned model, another training step, randomly initialised
    weights), not every edit of a weight. The same checkpoint loaded through another
    wrapper, with processed weights (folded layer norms) or in float16 may get another
    fingerprint.

    Args:
        model: a ``torch.nn.Module`` (a TransformerLens model).

    Returns:
        16 hex digits, or None when the model has no parameters or some are on the
        ``meta`` device (not loaded).
    """
    import torch

    parameters = list(model.parameters()) if hasattr(model, "parameters") else []
    if not parameters or any(p.is_meta for p in parameters):
        return None
    picked: list[Tensor] = []
    floating: list[bool] = []
    with torch.no_grad():
        for p in parameters:
            flat = p.detach().reshape(-1)
            count = min(SLICES, flat.numel())
            at = _evenly_spaced(count, flat.numel()).to(flat.device)
            values = flat.index_select(0, at)
            floating.append(values.is_floating_point())
            picked.append(values.to(torch.bfloat16).double() if floating[-1] else values.double())
        # One transfer per device, not one per parameter.
        on_host: dict[Any, list[Tensor]] = {}
        for device in dict.fromkeys(v.device for v in picked):
            same = [v for v in picked if v.device == device]
            on_host[device] = list(torch.cat(same).cpu().split([v.numel() for v in same]))
    digest = hashlib.sha256()
    for p, values, is_float in zip(parameters, picked, floating):
        digest.update(str(tuple(p.shape)).encode())
        host = on_host[values.device].pop(0)
        if values.numel():
            digest.update((host.float() if is_float else host).numpy().tobytes())
    return digest.hexdigest()[:16]


def _evenly_spaced(count: int, n: int) -> Tensor:
    """``count`` positions of ``0 .. n-1``, the first and last included: ``i (n-1) /
    (count-1)`` rounded half to even, in integer arithmetic (a float32 ``linspace``
    rounds past the end beyond 2**24 values)."""
    import torch

    d = max(count - 1, 1)
    scaled = torch.arange(count, dtype=torch.long) * (n - 1)
    q, r = scaled // d, scaled % d
    up = (2 * r > d) | ((2 * r == d) & (q % 2 == 1))
    return q + up.long()


def model_record(model: Mapping[str, Any] | None, n_layers: int | None = None,
                 d_mlp: int | None = None) -> dict[str, Any]:
    """The provenance record of a result: the model's name, architecture and weight
    fingerprint (when recorded) and the shape of its neuron grid.

    Args:
        model: the model's description (``ModelAdapter.describe()``), or None.
        n_layers: layers of the neuron grid; by default the description's own.
        d_mlp: neurons per layer; by default the description's own.
    """
    model = model or {}
    n_layers = model.get("n_layers") if n_layers is None else n_layers
    d_mlp = model.get("d_mlp") if d_mlp is None else d_mlp
    return {"name": model.get("name"), "architecture": model.get("architecture"),
            "weights": model.get("weights"), "shape": (n_layers, d_mlp)}


def _show(field: str, value: Any) -> str:
    if field == "shape" and isinstance(value, (tuple, list)) and len(value) == 2:
        return "x".join("?" if v is None else str(v) for v in value)
    return repr(tuple(value) if isinstance(value, list) else value)


def _same(field: str, x: Any, y: Any) -> bool:
    if field == "shape":  # a side may know only some dimensions (None for the others)
        return len(x) == len(y) and all(a is None or b is None or a == b for a, b in zip(x, y))
    return (tuple(x) if isinstance(x, list) else x) == (tuple(y) if isinstance(y, list) else y)


def check_compatible(
    mine: Mapping[str, Any],
    theirs: Mapping[str, Any],
    *,
    fields: Sequence[str] = MODEL_FIELDS,
    labels: tuple[str, str] = ("the model", "the result"),
    error: type[TLMultilingualError] = TLMultilingualError,
    allow_mismatch: bool = False,
) -> None:
    """Raise ``error`` unless every field of ``fields`` known on both sides agrees.

    Args:
        mine: a provenance record (``ModelAdapter.describe()`` or a result's
            ``provenance``); a field missing or None on either side is not compared.
        theirs: the other side's record, likewise.
        fields: what must agree (``shape``, ``name``, ``architecture``, ``languages``,
            ``threshold``, ``token_policy``, ``include_bos``...).
        labels: how the two sides are named in the message.
        error: the exception class raised.
        allow_mismatch: accept a different model ``name``, ``architecture`` or
            ``weights`` (never a different shape, languages or counting settings).

    Raises:
        error: a field differs, named with both values.
    """
    for field in fields:
        x, y = mine.get(field), theirs.get(field)
        if x is None or y is None:
            continue
        if _same(field, x, y):
            continue
        if field in OVERRIDABLE:
            if allow_mismatch:
                continue
            if field == "weights":
                raise error(
                    f"{labels[0]} and {labels[1]} come from different weights of a model with "
                    f"the same name and shape (weight fingerprints {x} vs {y}): another "
                    "checkpoint, a fine-tuned or randomly initialised model; pass "
                    "allow_mismatch=True to combine them on purpose"
                )
            raise error(
                f"{labels[0]} and {labels[1]} come from different models ({field}: {_show(field, x)} vs "
                f"{_show(field, y)}); pass allow_mismatch=True to combine them on purpose"
            )
        if field == "shape":
            raise error(f"{labels[0]} and {labels[1]} differ in shape: {_show(field, x)} vs {_show(field, y)} "
                        "(n_layers x d_mlp)")
        raise error(f"{labels[0]} and {labels[1]} differ in {field}: {_show(field, x)} vs {_show(field, y)}")


def record_of(thing: Any) -> dict[str, Any]:
    """The provenance record of a model adapter (from ``describe()``) or of a result
    (its ``provenance``)."""
    if hasattr(thing, "provenance"):
        return dict(thing.provenance)
    return model_record(thing.describe(), thing.n_layers, thing.d_mlp)


def check_fits(
    lm: Any, result: Any, *, what: str, error: type[TLMultilingualError] = TLMultilingualError,
    allow_mismatch: bool = False,
) -> None:
    """[`check_compatible()`][tl_multilingual.provenance.check_compatible] of a model adapter and a result used on it: the shapes
    must agree, and the model's name, architecture and weights unless ``allow_mismatch``."""
    check_compatible(record_of(lm), record_of(result), labels=("the model", what), error=error,
                     allow_mismatch=allow_mismatch)
