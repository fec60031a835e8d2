"""Identified language neurons: [`LanguageNeurons`][tl_multilingual.neurons.classes.LanguageNeurons].

Zhang et al.'s (AAAI-26) ternary classes, from the selected neurons and the languages each is
active in (probability above the activation bar ``tau``), with ``N`` the number of
such languages and ``K`` the number of languages:

- **language-specific** to ``k``: selected, ``N == 1``, active in ``k``;
- **language-related** to ``k``: selected, ``1 < N < K``, active in ``k``;
- **general**: ``N == K`` over the whole population, selected or not.

Selected neurons with ``N == 0`` belong to no language; the reference code drops
them silently, here [`LanguageNeurons.dropped`][tl_multilingual.neurons.classes.LanguageNeurons.dropped], [`LanguageNeurons.summary()`][tl_multilingual.neurons.classes.LanguageNeurons.summary]
and [`LanguageNeurons.to_frame()`][tl_multilingual.neurons.classes.LanguageNeurons.to_frame] report them.

[`LanguageNeurons.classes()`][tl_multilingual.neurons.classes.LanguageNeurons.classes] is the one definition of these classes: one code per
neuron (`CLASS_CODES`), on which every mask, count and table is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Int, Int8
from torch import Tensor

from ..errors import IdentificationError, SaveError
from ..hub import HubMixin
from ..inputs.languages import normalize_language
from ..persist import manifest_field, read_result, read_torch_file, write_result
from ..provenance import model_record
from .masks import NeuronMask

__all__ = ["LanguageNeurons", "CLASSES", "CLASS_CODES", "MASK_NAMES", "SPECIFIC", "RELATED", "GENERAL", "OTHER", "DROPPED"]

KIND = "tl_multilingual.LanguageNeurons"
CLASSES = ("specific", "related", "general")

SPECIFIC, RELATED, GENERAL, OTHER, DROPPED = 0, 1, 2, 3, 4
MASK_NAMES = ("specific", "related", "general", "language", "selected")
"""The class names [`LanguageNeurons.mask()`][tl_multilingual.neurons.classes.LanguageNeurons.mask] (and so a variant such as
``"specific+related"``) accepts."""
CLASS_CODES = ("specific", "related", "general", "other", "dropped")
"""Names of the codes of [`LanguageNeurons.classes()`][tl_multilingual.neurons.classes.LanguageNeurons.classes], in code order:

- ``0`` specific: selected and above the bar in exactly one language;
- ``1`` related: selected and above the bar in more than one language but not all;
- ``2`` general: above the bar in every language (selected or not);
- ``3`` other: none of the above and not selected;
- ``4`` dropped: selected but above the bar in no language (the reference drops them).
"""


class LanguageNeurons(HubMixin):
    """Language-specific, language-related and general neurons of one model.

    Attributes:
        languages: language tags, in the order of the statistics.
        method: ``"ternary"``, ``"lape"`` or ``"reference"`` (imported masks).
        lam: Zhang et al.'s (AAAI-26) lambda (None for LAPE).
        bar: the activation bar ``tau``.
        params: the identification parameters.
        recipe: every argument of [`tl_multilingual.identify()`][tl_multilingual.neurons.identification] that produced these
            neurons, resolved (the lambda the sweep found, the pre-filter decided), so
            ``identify(stats, **neurons.recipe)`` re-identifies alike on other
            statistics; empty for imported masks.
        membership: boolean ``[n_layers, d_mlp, K]``: selected and active in language k.
    """

    def __init__(
        self,
        languages: Sequence[str],
        membership: Bool[Tensor, "layer neuron lang"],
        selected: Bool[Tensor, "layer neuron"],
        general: Bool[Tensor, "layer neuron"] | None,
        *,
        method: str,
        lam: float | None = None,
        bar: float | None = None,
        params: Mapping[str, Any] | None = None,
        source: Mapping[str, Any] | None = None,
        recipe: Mapping[str, Any] | None = None,
    ) -> None:
        self.languages: tuple[str, ...] = tuple(languages)
        if membership.ndim != 3 or membership.shape[2] != len(self.languages):
            raise IdentificationError(
                f"membership must be [n_layers, d_mlp, {len(self.languages)}], got {tuple(membership.shape)}"
            )
        if selected.shape != membership.shape[:2] or (general is not None and general.shape != selected.shape):
            raise IdentificationError("selected and general masks must be [n_layers, d_mlp]")
        if (membership & ~selected[..., None]).any():
            raise IdentificationError("a neuron belongs to a language without being selected")
        self.membership = membership.bool().cpu()
        self._selected = selected.bool().cpu()
        self._general = None if general is None else general.bool().cpu()
        self.method = method
        self.lam = lam
        self.bar = bar
        self.params = dict(params or {})
        self.source = dict(source or {})
        self._recipe = dict(recipe or {})

    @classmethod
    def from_selection(
        cls,
        languages: Sequence[str],
        selected: Int[Tensor, " n"],
        above: Bool[Tensor, "layer neuron lang"],
        **kwargs: Any,
    ) -> LanguageNeurons:
        """From flat indices of the selected neurons and the "above the bar" grid."""
        n_layers, d_mlp, _ = above.shape
        chosen = torch.zeros(n_layers * d_mlp, dtype=torch.bool, device=above.device)
        chosen[selected] = True
        chosen = chosen.view(n_layers, d_mlp)
        return cls(languages, above & chosen[..., None], chosen, above.all(-1), **kwargs)

    # -- shape ----------------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        return self.membership.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.membership.shape[1]

    def _index(self, language: str) -> int:
        lang = language if language in self.languages else normalize_language(language, allow_unknown=True)
        if lang not in self.languages:
            raise IdentificationError(f"no neurons were identified for {language!r}; have {self.languages}")
        return self.languages.index(lang)

    @property
    def n_active_languages(self) -> Int[Tensor, "layer neuron"]:
        """``N``: number of languages each selected neuron belongs to (0 elsewhere)."""
        return self.membership.sum(-1)

    # -- classes --------------------------------------------------------------------

    @property
    def provenance(self) -> dict[str, Any]:
        """The model the neurons were identified on (name, architecture, when recorded)
        and the shape of its neuron grid."""
        model = self.source.get("model")
        return model_record(model if isinstance(model, dict) else None, self.n_layers, self.d_mlp)

    def classes(self) -> Int8[Tensor, "layer neuron"]:
        """The class of every neuron: the one definition every mask, count and table
        (and [`tl_multilingual.compare()`][tl_multilingual.experiments.comparison]) builds on.

        Returns:
            int8 ``[n_layers, d_mlp]`` of codes (`CLASS_CODES`): ``0`` specific,
            ``1`` related, ``2`` general, ``3`` other, ``4`` dropped (selected, in no
            language). A neuron's languages are ``membership[layer, neuron]``. When the
            general neurons are unknown (masks imported with
            [`from_reference_format()`][tl_multilingual.neurons.classes.LanguageNeurons.from_reference_format]) no neuron has code ``2``, and a selected
            neuron in every language has code ``3``.
        """
        n = self.n_active_languages
        codes = torch.full(n.shape, OTHER, dtype=torch.int8)
        codes[self._selected & (n == 0)] = DROPPED
        codes[(n > 1) & (n < len(self.languages))] = RELATED
        codes[n == 1] = SPECIFIC
        if self._general is not None:
            codes[self._general] = GENERAL
        return codes

    def _of_class(self, code: int) -> Bool[Tensor, "layer neuron lang"]:
        """``membership`` restricted to the neurons of one class: per language."""
        return self.membership & (self.classes() == code)[..., None]

    def _mask(self, grid: Tensor, name: str) -> NeuronMask:
        model = self.source.get("model")
        return NeuronMask(grid, name=name, model=model if isinstance(model, dict) else None)

    def selected(self) -> NeuronMask:
        """All neurons the method selected (including those in no language)."""
        return self._mask(self._selected, "selected")

    def language(self, language: str) -> NeuronMask:
        """Every selected neuron of ``language``: the reference per-language set."""
        k = self._index(language)
        return self._mask(self.membership[..., k], f"{self.languages[k]} neurons")

    def _class_mask(self, code: int, language: str | None) -> NeuronMask:
        name = CLASS_CODES[code]
        if language is None:
            return self._mask(self.classes() == code, name)
        k = self._index(language)
        return self._mask(self._of_class(code)[..., k], f"{self.languages[k]}-{name}")

    def specific(self, language: str | None = None) -> NeuronMask:
        """Language-specific neurons of ``language`` (of any language when None)."""
        return self._class_mask(SPECIFIC, language)

    def related(self, language: str | None = None) -> NeuronMask:
        """Language-related neurons of ``language`` (of any language when None)."""
        return self._class_mask(RELATED, language)

    def general(self) -> NeuronMask:
        """General neurons: active above the bar in every language."""
        if self._general is None:
            raise IdentificationError(
                "general neurons are defined over all neurons and need activation statistics; "
                "these neurons were imported from selected indices only"
            )
        return self._class_mask(GENERAL, None)

    def mask(self, cls: str, language: str | None = None) -> NeuronMask:
        """The mask of a class by name: ``"specific"``, ``"related"``, ``"general"``,
        ``"language"`` (needs a language) or ``"selected"``."""
        if cls == "general":
            return self.general()
        if cls == "selected":
            return self.selected()
        if cls == "language":
            if language is None:
                raise IdentificationError("the 'language' class needs a language")
            return self.language(language)
        if cls in ("specific", "related"):
            return getattr(self, cls)(language)
        raise IdentificationError(f"unknown neuron class {cls!r}; use one of {MASK_NAMES}")

    # -- recipe ---------------------------------------------------------------------

    @property
    def recipe(self) -> dict[str, Any]:
        """The resolved arguments of [`tl_multilingual.identify()`][tl_multilingual.neurons.identification] that produced these
        neurons: ``identify(stats, **neurons.recipe)`` identifies alike on other
        statistics (a bootstrap replicate, another checkpoint), with the same lambda.

        Raises:
            IdentificationError: for masks imported from the reference format, which
                carry no recipe.
        """
        if not self._recipe:
            raise IdentificationError(
                f"these neurons ({self.method}) were not identified here and carry no recipe to repeat; "
                "steps that re-identify (stage-map refits on statistics, comparison intervals) need neurons "
                "from identify"
            )
        return dict(self._recipe)

    # -- diagnostics ----------------------------------------------------------------

    @property
    def histogram(self) -> list[int]:
        """Selected neurons by number of languages above the bar, for ``N = 0..K``."""
        n = self.n_active_languages[self._selected]
        return torch.bincount(n, minlength=len(self.languages) + 1).tolist()

    @property
    def dropped(self) -> int:
        """Selected neurons above the bar in no language (the reference drops them)."""
        return int((self.classes() == DROPPED).sum())

    def layer_counts(self) -> pd.DataFrame:
        """Tidy counts per layer: ``layer``, ``class``, ``language`` (None for general and
        dropped neurons), ``count``. ``dropped`` counts the selected neurons of the layer
        that belong to no language."""
        codes = self.classes()
        rows = []
        for code in (SPECIFIC, RELATED):
            counts = (self.membership & (codes == code)[..., None]).sum(1)  # [layer, lang]
            for layer in range(self.n_layers):
                for k, lang in enumerate(self.languages):
                    rows.append((layer, CLASS_CODES[code], lang, int(counts[layer, k])))
        shared = (GENERAL, DROPPED) if self._general is not None else (DROPPED,)
        for code in shared:
            for layer, count in enumerate((codes == code).sum(1).tolist()):
                rows.append((layer, CLASS_CODES[code], None, count))
        return pd.DataFrame(rows, columns=["layer", "class", "language", "count"])

    def summary(self) -> pd.DataFrame:
        """Neurons per language: ``specific``, ``related``, ``total`` (all the language's
        selected neurons) and ``dropped``, the selected neurons that belong to no
        language at all (the same number on every row: the share of the selection the
        bar leaves unused)."""
        return pd.DataFrame(
            {
                "language": list(self.languages),
                "specific": self._of_class(SPECIFIC).sum((0, 1)).tolist(),
                "related": self._of_class(RELATED).sum((0, 1)).tolist(),
                "total": self.membership.sum((0, 1)).tolist(),
                "dropped": self.dropped,
            }
        )

    def lambda_identified(self) -> bool | None:
        """Whether the data identify Zhang et al.'s (AAAI-26) lambda: False when the automatic
        search found that no selected neuron is above the bar in every language at any
        lambda (the criterion never binds), True when it binds, None without a search."""
        search = self.params.get("lam_search") or {}
        if "identified" not in search:
            return None
        return bool(search["identified"])

    def lambda_sensitivity(self) -> pd.DataFrame:
        """How the class counts move with lambda, when the data do not identify it: tidy,
        one row per (``lambda``, ``class``) with ``count`` (classes ``selected``,
        ``specific``, ``related``, ``general``, ``dropped``) and ``chosen`` (the lambda
        used). Empty when lambda was identified or given."""
        rows = []
        for entry in (self.params.get("lam_search") or {}).get("sensitivity") or []:
            lam = float(entry["lambda"])
            for cls in ("selected", "specific", "related", "general", "dropped"):
                rows.append((lam, cls, int(entry[cls]), self.lam is not None and lam == self.lam))
        return pd.DataFrame(rows, columns=["lambda", "class", "count", "chosen"])

    def to_frame(self) -> pd.DataFrame:
        """Tidy DataFrame, one row per (neuron, class, language): ``layer``, ``neuron``,
        ``class`` (``specific``, ``related``, ``general`` or ``dropped``), ``language``
        (None for general and dropped neurons)."""
        codes = self.classes()
        frames = []
        for code in (SPECIFIC, RELATED):
            idx = (self.membership & (codes == code)[..., None]).nonzero()
            frames.append(
                pd.DataFrame(
                    {
                        "layer": idx[:, 0].numpy(),
                        "neuron": idx[:, 1].numpy(),
                        "class": CLASS_CODES[code],
                        "language": [self.languages[k] for k in idx[:, 2].tolist()],
                    }
                )
            )
        for code in (GENERAL, DROPPED):
            idx = (codes == code).nonzero()
            frames.append(
                pd.DataFrame(
                    {"layer": idx[:, 0].numpy(), "neuron": idx[:, 1].numpy(), "class": CLASS_CODES[code],
                     "language": None}
                )
            )
        frame = pd.concat(frames, ignore_index=True)
        return frame.sort_values(["layer", "neuron", "class"], kind="stable", ignore_index=True)

    def __repr__(self) -> str:
        lam = f", lam={self.lam:g}" if self.lam is not None else ""
        if self.lambda_identified() is False:
            lam += " (not identified by the data)"
        counts = torch.bincount(self.classes().flatten().long(), minlength=len(CLASS_CODES)).tolist()
        general = counts[GENERAL] if self._general is not None else "?"
        return (
            f"LanguageNeurons({self.method}{lam}, {len(self.languages)} languages, "
            f"selected={int(self._selected.sum())}, specific={counts[SPECIFIC]}, "
            f"general={general}, dropped={counts[DROPPED]})"
        )

    # -- reference format -----------------------------------------------------------

    def to_reference_format(self) -> list[list[Tensor]]:
        """``list[language][layer] -> LongTensor`` of neuron indices, in `languages`
        order: the format of the reference implementations' mask files."""
        return [
            [row.nonzero().squeeze(1) for row in self.membership[..., k]] for k in range(len(self.languages))
        ]

    @classmethod
    def from_reference_format(
        cls,
        masks: Sequence[Sequence[Tensor | Sequence[int]]] | str | Path,
        languages: Sequence[str],
        *,
        d_mlp: int | None = None,
    ) -> LanguageNeurons:
        """From ``list[language][layer] -> indices`` (or a file holding it, read with
        ``torch.load(weights_only=True)``).

        ``d_mlp`` is the MLP width; when None it is taken as the largest index + 1,
        which is only a lower bound. General neurons are unknown in this format.
        """
        if isinstance(masks, (str, Path)):
            masks = read_torch_file(masks, what="reference mask file", error=IdentificationError)
        langs = [normalize_language(code, allow_unknown=True) for code in languages]
        if not isinstance(masks, (list, tuple)) or not all(isinstance(m, (list, tuple)) for m in masks):
            raise IdentificationError(
                f"reference masks are a list (per language) of lists (per layer) of neuron indices, got "
                f"{type(masks).__name__}"
            )
        if len(masks) != len(langs):
            raise IdentificationError(f"the masks hold {len(masks)} languages, {len(langs)} were named")
        n_layers = len(masks[0]) if masks else 0
        if any(len(per_layer) != n_layers for per_layer in masks):
            raise IdentificationError("every language must list the same number of layers")
        try:
            as_long = [[torch.as_tensor(idx).reshape(-1) for idx in m] for m in masks]
        except (TypeError, ValueError, RuntimeError) as err:
            raise IdentificationError(f"reference masks must hold integer neuron indices: {err}") from err
        if any(i.is_floating_point() or i.dtype == torch.bool or i.is_complex() for m in as_long for i in m):
            raise IdentificationError("reference masks must hold integer neuron indices")
        as_long = [[i.long() for i in m] for m in as_long]
        if d_mlp is None:
            d_mlp = 1 + max((int(i.max()) for m in as_long for i in m if i.numel()), default=0)
        grids = [NeuronMask.from_layer_indices(m, d_mlp).tensor for m in as_long]
        membership = torch.stack(grids, dim=-1)
        return cls(langs, membership, membership.any(-1), None, method="reference")

    # -- files ----------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Save to the folder ``path`` (safetensors + manifest)."""
        tensors = {"membership": self.membership.to(torch.uint8), "selected": self._selected.to(torch.uint8)}
        if self._general is not None:
            tensors["general"] = self._general.to(torch.uint8)
        manifest = {
            "languages": list(self.languages),
            "method": self.method,
            "lam": self.lam,
            "bar": self.bar,
            "params": self.params,
            "recipe": self._recipe,
            "source": self.source,
            "shape": [self.n_layers, self.d_mlp],
            "histogram": self.histogram,
        }
        return write_result(path, kind=KIND, tensors=tensors, manifest=manifest)

    @classmethod
    def load(cls, path: str | Path) -> LanguageNeurons:
        """Load neurons saved with [`save()`][tl_multilingual.neurons.classes.LanguageNeurons.save], checking every manifest field.

        Raises:
            SaveError: the folder is missing, damaged or edited, or its manifest is
                invalid or disagrees with the tensors.
        """
        tensors, manifest = read_result(path, kind=KIND)
        where = Path(path) / "manifest.json"
        languages = manifest_field(
            manifest, "languages", list, where=where, expect="a list of distinct language codes",
            check=lambda v: v and all(isinstance(x, str) and x for x in v) and len(set(v)) == len(v),
        )
        shape = manifest_field(manifest, "shape", list, where=where, expect="[n_layers, d_mlp]",
                               check=lambda v: len(v) == 2 and all(type(x) is int for x in v))
        grids = {}
        for name, dims in (("membership", [*shape, len(languages)]), ("selected", shape), ("general", shape)):
            value = tensors.get(name)
            if value is None:
                if name == "general":
                    continue
                raise SaveError(f"{path}: the tensor file lacks {name!r}")
            if list(value.shape) != dims or value.dtype != torch.uint8 or bool((value > 1).any()):
                raise SaveError(f"{path}: {name!r} must be 0/1 of shape {dims} (from the manifest's shape and "
                                f"languages), got {value.dtype} {list(value.shape)}")
            grids[name] = value.bool()
        number = (int, float, type(None))
        try:
            return cls(
                languages,
                grids["membership"],
                grids["selected"],
                grids.get("general"),
                method=manifest_field(manifest, "method", str, where=where),
                lam=manifest_field(manifest, "lam", number, where=where, default=None),
                bar=manifest_field(manifest, "bar", number, where=where, default=None),
                params=manifest_field(manifest, "params", (dict, type(None)), where=where, default=None),
                source=manifest_field(manifest, "source", (dict, type(None)), where=where, default=None),
                recipe=_recipe(manifest, manifest_field(manifest, "recipe", (dict, type(None)), where=where,
                                                        default=None)),
            )
        except IdentificationError as err:
            raise SaveError(f"{path}: the saved neurons are inconsistent: {err}") from err


def _recipe(manifest: Mapping[str, Any], saved: Mapping[str, Any] | None) -> dict[str, Any]:
    """The saved recipe; for files saved before recipes were kept, rebuilt from the
    method, the lambda and the parameters they did save."""
    if saved is not None:
        recipe = dict(saved)
        if "lam_range" in recipe:  # JSON has no tuples
            recipe["lam_range"] = tuple(recipe["lam_range"])
        return recipe
    method, params = manifest.get("method"), manifest.get("params") or {}
    if method not in ("ternary", "lape"):  # 0.1.0 files (no recipe) hold these two methods only
        return {}
    rate = params.get("filter_rate")
    recipe = {
        "method": method,
        "top_rate": params.get("top_rate", 0.01),
        "bar_ratio": params.get("bar_ratio", 0.95),
        "prefilter": rate is not None,
        "filter_rate": rate if rate is not None else 0.95,
    }
    if manifest.get("lam") is not None:  # a method with a lambda: repeat it, without a search
        search = params.get("lam_search") or {}
        recipe.update(lam=manifest["lam"], lam_range=tuple(search.get("range", (0.0, 0.2))),
                      tol=search.get("tol", 1e-3))
    return recipe
