"""Neuron masks: a boolean grid ``[n_layers, d_mlp]`` with set algebra."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ..errors import MaskError, SaveError
from ..hub import HubMixin
from ..model.adapters import whole_number
from ..persist import manifest_field, read_result, write_result
from ..provenance import model_record

__all__ = ["NeuronMask", "parse_variant"]

KIND = "tl_multilingual.NeuronMask"


def parse_variant(variant: str, allowed: Sequence[str] | None = None) -> tuple[str, ...]:
    """The class names of a variant: ``"specific+related"`` -> ``("specific", "related")``.

    A variant names the union of several classes of neurons (Zhang et al.'s (AAAI-26)
    ``"specific+related+general"``, Wang et al.'s (2024) ``"all_shared+partial_shared"``).

    Args:
        variant: class names joined with ``+``; spaces around a name are ignored.
        allowed: the class names that may appear (None: any).

    Returns:
        The names in order of first appearance, each once.

    Raises:
        MaskError: for an empty variant, an empty name (``"a++b"``) or a name not in
            ``allowed``.
    """
    if not isinstance(variant, str):
        raise MaskError(f"a variant is a string of class names joined with '+', got {variant!r}")
    parts = [p.strip() for p in variant.split("+")]
    if not variant.strip() or any(not p for p in parts):
        raise MaskError(f"empty class name in variant {variant!r}")
    if allowed is not None:
        unknown = [p for p in parts if p not in allowed]
        if unknown:
            raise MaskError(f"unknown class {unknown[0]!r} in variant {variant!r}; use {tuple(allowed)}")
    return tuple(dict.fromkeys(parts))


class NeuronMask(HubMixin):
    """A set of MLP neurons: boolean ``[n_layers, d_mlp]``.

    Supports ``&`` (both), ``|`` (either), ``-`` (in the first, not the second),
    ``^`` and ``~``; ``==`` compares contents. Masks of different shapes never mix.

    ``model`` records the model the mask was identified on (name, architecture), when
    known: masks taken from `LanguageNeurons` or `Sharing` carry it, and
    interventions refuse a mask of another model (see `tl_multilingual.provenance`).
    """

    __slots__ = ("tensor", "name", "model")

    def __init__(
        self, tensor: Bool[Tensor, "layer neuron"], *, name: str | None = None, model: dict[str, Any] | None = None
    ) -> None:
        if not isinstance(tensor, Tensor) or tensor.ndim != 2:
            raise MaskError(f"a neuron mask is a 2-D tensor [n_layers, d_mlp], got {tensor!r:.80}")
        if tensor.is_meta:
            raise MaskError("the mask is on the meta device and holds no values")
        if tensor.dtype != torch.bool:
            if tensor.is_floating_point() or not ((tensor == 0) | (tensor == 1)).all():
                raise MaskError(f"a neuron mask holds booleans, got dtype {tensor.dtype}")
            tensor = tensor.bool()
        self.tensor: Tensor = tensor.detach().to("cpu")
        self.name = name
        self.model = ({k: model.get(k) for k in ("name", "architecture", "weights") if model.get(k) is not None}
                      if model else None)

    @property
    def provenance(self) -> dict[str, Any]:
        """The model the mask comes from (name, architecture, weight fingerprint, when
        known) and its shape."""
        return model_record(self.model, self.n_layers, self.d_mlp)

    # -- construction ---------------------------------------------------------------

    @classmethod
    def empty(cls, n_layers: int, d_mlp: int, *, name: str | None = None) -> NeuronMask:
        return cls(torch.zeros(n_layers, d_mlp, dtype=torch.bool), name=name)

    @classmethod
    def full(cls, n_layers: int, d_mlp: int, *, name: str | None = None) -> NeuronMask:
        return cls(torch.ones(n_layers, d_mlp, dtype=torch.bool), name=name)

    @classmethod
    def from_layer_indices(
        cls, indices: Sequence[Iterable[int] | Tensor], d_mlp: int, *, name: str | None = None
    ) -> NeuronMask:
        """From one list (or LongTensor) of neuron indices per layer: the reference format."""
        mask = torch.zeros(len(indices), d_mlp, dtype=torch.bool)
        for layer, idx in enumerate(indices):
            idx = torch.as_tensor(idx if isinstance(idx, Tensor) else list(idx), dtype=torch.long)
            if idx.numel() and (idx.min() < 0 or idx.max() >= d_mlp):
                raise MaskError(f"layer {layer} has neuron indices outside [0, {d_mlp})")
            mask[layer, idx] = True
        return cls(mask, name=name)

    @classmethod
    def from_pairs(
        cls, pairs: Iterable[tuple[int, int]], n_layers: int, d_mlp: int, *, name: str | None = None
    ) -> NeuronMask:
        """From ``(layer, neuron)`` pairs."""
        mask = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
        pairs = torch.as_tensor(list(pairs), dtype=torch.long).reshape(-1, 2)
        if len(pairs) and ((pairs < 0).any() or (pairs[:, 0] >= n_layers).any() or (pairs[:, 1] >= d_mlp).any()):
            raise MaskError(f"(layer, neuron) pairs fall outside [{n_layers}, {d_mlp}]")
        mask[pairs[:, 0], pairs[:, 1]] = True
        return cls(mask, name=name)

    @classmethod
    def random(
        cls, per_layer: Sequence[int] | Tensor, d_mlp: int, *, seed: int = 0,
        exclude: NeuronMask | None = None, name: str | None = None,
    ) -> NeuronMask:
        """A random mask with ``per_layer[l]`` neurons in layer ``l`` (a control set),
        drawn without the neurons of ``exclude``."""
        counts = torch.as_tensor(per_layer, dtype=torch.long)
        generator = torch.Generator().manual_seed(seed)
        mask = torch.zeros(len(counts), d_mlp, dtype=torch.bool)
        for layer, count in enumerate(counts.tolist()):
            pool = torch.arange(d_mlp)
            if exclude is not None:
                pool = pool[~exclude.tensor[layer]]
            if count > len(pool):
                raise MaskError(f"layer {layer}: cannot draw {count} of {len(pool)} neurons")
            mask[layer, pool[torch.randperm(len(pool), generator=generator)[:count]]] = True
        return cls(mask, name=name)

    def controls(self, n: int, *, seed: int = 0) -> list[NeuronMask]:
        """``n`` random masks with as many neurons as this one in every layer, drawn
        outside it: the control sets of causal experiments."""
        spare = self.d_mlp - self.per_layer()
        crowded = (self.per_layer() > spare).nonzero().squeeze(1).tolist()
        if n and crowded:
            raise MaskError(
                f"no random control of the same size fits outside the mask in layers {crowded} "
                "(the mask holds more than half of their neurons); use controls=0"
            )
        masks = [NeuronMask.random(self.per_layer(), self.d_mlp, seed=seed + 1 + i, exclude=self) for i in range(n)]
        for mask in masks:
            mask.model = self.model
        return masks

    # -- shape and contents ---------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tensor.shape)  # type: ignore[return-value]

    @property
    def n_layers(self) -> int:
        return self.tensor.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.tensor.shape[1]

    def count(self) -> int:
        """Number of neurons in the mask."""
        return int(self.tensor.sum())

    def per_layer(self) -> Int[Tensor, " layer"]:
        """Number of neurons in each layer."""
        return self.tensor.sum(1)

    def indices(self) -> Int[Tensor, "n 2"]:
        """``(layer, neuron)`` rows, sorted."""
        return self.tensor.nonzero()

    def layer_indices(self) -> list[Int[Tensor, " n"]]:
        """Sorted neuron indices of every layer (the reference ``list[layer]`` format)."""
        return [row.nonzero().squeeze(1) for row in self.tensor]

    def restrict(self, layers: Iterable[int] | slice) -> NeuronMask:
        """The mask with every layer outside ``layers`` emptied."""
        keep = torch.zeros(self.n_layers, dtype=torch.bool)
        if isinstance(layers, slice):
            keep[layers] = True
        else:
            idx = [whole_number(i, "layers", MaskError) for i in layers]
            if any(not 0 <= i < self.n_layers for i in idx):
                raise MaskError(f"layers {idx} fall outside [0, {self.n_layers})")
            keep[idx] = True
        return NeuronMask(self.tensor & keep[:, None], name=self.name, model=self.model)

    def to_frame(self) -> pd.DataFrame:
        """Tidy DataFrame with one row per neuron: ``layer``, ``neuron``."""
        idx = self.indices()
        return pd.DataFrame({"layer": idx[:, 0].numpy(), "neuron": idx[:, 1].numpy()})

    # -- algebra --------------------------------------------------------------------

    def _other(self, other: Any) -> Tensor:
        if not isinstance(other, NeuronMask):
            raise MaskError(f"cannot combine a NeuronMask with {type(other).__name__}")
        if other.shape != self.shape:
            raise MaskError(f"mask shapes differ: {self.shape} vs {other.shape}")
        return other.tensor

    def _joint_model(self, other: NeuronMask) -> dict[str, Any] | None:
        """The model of a combination: the one both masks (or either) come from; None
        (unknown) for masks of different models."""
        if self.model is None or other.model is None:
            return self.model or other.model
        return self.model if self.model == other.model else None

    def __and__(self, other: NeuronMask) -> NeuronMask:
        return NeuronMask(self.tensor & self._other(other), model=self._joint_model(other))

    def __or__(self, other: NeuronMask) -> NeuronMask:
        return NeuronMask(self.tensor | self._other(other), model=self._joint_model(other))

    def __xor__(self, other: NeuronMask) -> NeuronMask:
        return NeuronMask(self.tensor ^ self._other(other), model=self._joint_model(other))

    def __sub__(self, other: NeuronMask) -> NeuronMask:
        return NeuronMask(self.tensor & ~self._other(other), model=self._joint_model(other))

    def __invert__(self) -> NeuronMask:
        return NeuronMask(~self.tensor, model=self.model)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NeuronMask) and other.shape == self.shape and bool(
            (other.tensor == self.tensor).all()
        )

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return f"NeuronMask({label}{self.count()} of {self.n_layers}x{self.d_mlp})"

    # -- files ----------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Save to the folder ``path`` (safetensors + manifest)."""
        return write_result(
            path, kind=KIND, tensors={"mask": self.tensor},
            manifest={"name": self.name, "shape": self.shape, "model": self.model},
        )

    @classmethod
    def load(cls, path: str | Path) -> NeuronMask:
        """Load a mask saved with [`save()`][tl_multilingual.neurons.masks.NeuronMask.save].

        Raises:
            SaveError: the folder is missing, damaged or edited, or its manifest
                disagrees with the tensor.
        """
        tensors, manifest = read_result(path, kind=KIND)
        where = Path(path) / "manifest.json"
        shape = manifest_field(manifest, "shape", list, where=where, expect="[n_layers, d_mlp]",
                               check=lambda v: len(v) == 2 and all(type(x) is int for x in v))
        mask = tensors.get("mask")
        if mask is None or list(mask.shape) != shape or mask.dtype != torch.bool:
            raise SaveError(f"{path} does not hold a boolean mask of the shape its manifest states ({shape})")
        name = manifest_field(manifest, "name", (str, type(None)), where=where, default=None)
        model = manifest_field(manifest, "model", (dict, type(None)), where=where, default=None)
        return cls(mask, name=name, model=model)
