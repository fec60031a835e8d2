"""Per-language activation statistics of every MLP neuron: [`ActivationStats`][tl_multilingual.neurons.stats.ActivationStats].

For layer ``l``, neuron ``j`` and language ``k`` the statistics are sufficient for
everything the identification methods need:

- ``token_counts[k]``: counted tokens of language ``k`` (padding never counted);
- ``active_counts[l, j, k]``: counted tokens on which the neuron's activation is
  above the threshold (0 by default), int64;
- ``sums`` and ``sum_squares``: the sum and the sum of squares of the activation
  over the counted tokens, float64.

``p[l, j, k] = active_counts[l, j, k] / token_counts[k]`` is the activation
probability (see the concepts page, "Vocabulary").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import SaveError, StatsError, warn
from ..hub import HubMixin
from ..inputs.languages import normalize_language
from ..model.tokens import POLICIES
from ..persist import manifest_field, read_result, read_torch_file, write_result
from ..provenance import check_compatible, model_record

__all__ = ["ActivationStats", "validate_stats"]

KIND = "tl_multilingual.ActivationStats"

# What must agree before two statistics may be combined (added, compared).
_SETTINGS = ("languages", "shape", "token_policy", "threshold", "include_bos")


class ActivationStats(HubMixin):
    """Activation statistics per layer, neuron and language.

    Build with [`tl_multilingual.collect_stats()`][tl_multilingual.neurons.collect.collect_stats], [`from_counts()`][tl_multilingual.neurons.stats.ActivationStats.from_counts],
    [`from_reference_files()`][tl_multilingual.neurons.stats.ActivationStats.from_reference_files] or [`load()`][tl_multilingual.neurons.stats.ActivationStats.load]. Statistics of the same model,
    languages and token policy add up with ``a + b``.

    Statistics that cannot be true are refused wherever they are built or loaded (see
    `validate_stats()`): counts that are negative or exceed the token count,
    non-finite sums, shapes that disagree. ``allow_counts_above_tokens=True`` accepts
    active counts above the token count, a known quirk of the reference
    implementations' response-only files ([`from_reference_files()`][tl_multilingual.neurons.stats.ActivationStats.from_reference_files] sets it).

    Raises:
        StatsError: the statistics are impossible or malformed.
    """

    def __init__(
        self,
        languages: Sequence[str],
        token_counts: Int[Tensor, " lang"],
        active_counts: Int[Tensor, "layer neuron lang"],
        *,
        sums: Float[Tensor, "layer neuron lang"] | None = None,
        sum_squares: Float[Tensor, "layer neuron lang"] | None = None,
        threshold: float = 0.0,
        token_policy: str = "all",
        include_bos: bool = False,
        model: Mapping[str, Any] | None = None,
        corpus: Mapping[str, Any] | None = None,
        notes: Mapping[str, Any] | None = None,
        allow_counts_above_tokens: bool = False,
    ) -> None:
        self.languages: tuple[str, ...] = tuple(languages) if not isinstance(languages, str) else (languages,)
        self.tokens = token_counts
        self.active_counts = active_counts
        self.sums = sums
        self.sum_squares = sum_squares
        self.threshold = threshold
        self.token_policy = token_policy
        self.include_bos = include_bos
        self.model = dict(model or {}) if isinstance(model, Mapping) or model is None else model
        self.corpus = dict(corpus or {}) if isinstance(corpus, Mapping) or corpus is None else corpus
        self.notes = dict(notes or {}) if isinstance(notes, Mapping) or notes is None else notes
        self.allow_counts_above_tokens = bool(allow_counts_above_tokens)
        validate_stats(self)

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_counts(
        cls,
        languages: Sequence[str],
        token_counts: Sequence[int] | Mapping[str, int] | Tensor,
        active_counts: Tensor,
        **kwargs: Any,
    ) -> ActivationStats:
        """From raw counts: ``token_counts`` per language, ``active_counts`` shaped
        ``[n_layers, d_mlp, n_languages]``. Other keyword arguments as in the constructor."""
        langs = [normalize_language(code, allow_unknown=True) for code in languages]
        if isinstance(token_counts, Mapping):
            given = {normalize_language(c, allow_unknown=True): v for c, v in token_counts.items()}
            if set(given) != set(langs):
                raise StatsError(f"token_counts covers {sorted(given)}, languages are {langs}")
            token_counts = [given[lang] for lang in langs]
        tokens = torch.as_tensor(token_counts)
        if tokens.is_floating_point():
            if not torch.equal(tokens, tokens.round()):
                raise StatsError("token_counts must be whole numbers")
        counts = torch.as_tensor(active_counts)
        for name, values in (("token_counts", tokens), ("active_counts", counts)):
            if values.is_meta:
                raise StatsError(f"{name} is on the meta device and holds no values")
            if values.is_floating_point() and not bool(torch.isfinite(values).all()):
                raise StatsError(f"{name} holds NaN or infinite values")
        if counts.is_floating_point():
            if not torch.equal(counts, counts.round()):
                raise StatsError("active_counts must be whole numbers")
        for name in ("sums", "sum_squares"):
            if isinstance(kwargs.get(name), Tensor) and not kwargs[name].is_floating_point() and not kwargs[name].is_meta:
                kwargs[name] = kwargs[name].to(torch.float64)
        return cls(langs, tokens.to(torch.long), counts.to(torch.long), **kwargs)

    @classmethod
    def from_reference_files(
        cls,
        full: Mapping[str, str | Path],
        prefix: Mapping[str, str | Path] | None = None,
        *,
        clip_to_tokens: bool = False,
    ) -> ActivationStats:
        """From the reference implementations' saved ``over_zero`` files.

        Each file is a ``torch.save`` of ``{"total_tokens" (or "n"): int, "over_zero":
        LongTensor[n_layers, d_mlp]}``. With ``prefix`` (Zhang et al.'s (AAAI-26) prompt-only runs),
        the statistics are response-only, computed as the reference code does:
        ``active = clamp(full - prefix, min=0)`` over ``tokens = full - prefix``.
        A few clamped entries and probabilities slightly above 1 are a known quirk of
        those files (tokenisation boundaries); ``clip_to_tokens`` caps counts at the
        token count instead. Both are recorded in `notes`.
        """
        langs = list(full)
        if not langs:
            raise StatsError("from_reference_files needs at least one language")
        if prefix is not None and set(prefix) != set(langs):
            raise StatsError(f"full covers {sorted(full)} but prefix covers {sorted(prefix)}")
        tokens, active = [], []
        clamped = above = 0
        for lang in langs:
            n_full, oz_full = _read_reference_file(full[lang])
            if prefix is None:
                n, oz = n_full, oz_full
            else:
                n_pre, oz_pre = _read_reference_file(prefix[lang])
                if oz_pre.shape != oz_full.shape:
                    raise StatsError(f"{lang}: full and prefix counts differ in shape")
                n = n_full - n_pre
                if n <= 0:
                    raise StatsError(f"{lang}: the prefix file counts as many tokens as the full file")
                diff = oz_full - oz_pre
                clamped += int((diff < 0).sum())
                oz = diff.clamp_min(0)
            above += int((oz > n).sum())
            if clip_to_tokens:
                oz = oz.clamp_max(n)
            tokens.append(n)
            active.append(oz)
        if active and any(a.shape != active[0].shape for a in active):
            raise StatsError("the reference files do not all have the same [n_layers, d_mlp] shape")
        notes = {
            "source": "reference files",
            "clamped_negative_differences": clamped,
            "counts_above_tokens": above,
            "clipped_to_tokens": clip_to_tokens,
        }
        return cls.from_counts(
            langs,
            tokens,
            torch.stack(active, dim=-1),
            token_policy="response" if prefix is not None else "all",
            include_bos=prefix is None,
            notes=notes,
            allow_counts_above_tokens=above > 0 and not clip_to_tokens,
        )

    # -- shape ----------------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        return self.active_counts.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.active_counts.shape[1]

    @property
    def provenance(self) -> dict[str, Any]:
        """The model these statistics come from (name, architecture, shape) and the
        settings that must agree before they are combined with other statistics."""
        return {
            **model_record(self.model, self.n_layers, self.d_mlp),
            "languages": self.languages,
            "token_policy": self.token_policy,
            "threshold": self.threshold,
            "include_bos": self.include_bos,
        }

    @property
    def token_counts(self) -> dict[str, int]:
        """Counted tokens per language."""
        return dict(zip(self.languages, self.tokens.tolist()))

    def language_index(self, language: str) -> int:
        """Position of ``language`` in `languages` (codes are normalised)."""
        lang = language if language in self.languages else normalize_language(language, allow_unknown=True)
        if lang not in self.languages:
            raise StatsError(f"no statistics for language {language!r}; have {self.languages}")
        return self.languages.index(lang)

    # -- derived quantities ---------------------------------------------------------

    def _per_token(self, values: Tensor, dtype: torch.dtype) -> Tensor:
        empty = [lang for lang, n in self.token_counts.items() if n == 0]
        if empty:
            raise StatsError(
                f"no counted tokens for {empty}: probabilities are undefined. Collect more text "
                "for these languages or drop them with .select()"
            )
        return values.to(dtype) / self.tokens.to(device=values.device, dtype=dtype)

    def probabilities(self, dtype: torch.dtype = torch.float64) -> Float[Tensor, "layer neuron lang"]:
        """Activation probabilities ``[n_layers, d_mlp, n_languages]``."""
        return self._per_token(self.active_counts, dtype)

    def means(self) -> Float[Tensor, "layer neuron lang"]:
        """Mean activation per neuron and language, float64."""
        return self._per_token(self._require("sums"), torch.float64)

    def variances(self) -> Float[Tensor, "layer neuron lang"]:
        """Population variance of the activation per neuron and language, float64."""
        mean = self.means()
        return (self._per_token(self._require("sum_squares"), torch.float64) - mean**2).clamp_min(0)

    def _require(self, name: str) -> Tensor:
        value = getattr(self, name)
        if value is None:
            raise StatsError(
                f"these statistics have no {name} (built from counts only); collect them with "
                "collect_stats to get means and variances"
            )
        return value

    def redraw(self, generator: torch.Generator | None = None) -> ActivationStats:
        """A parametric bootstrap replicate: every active count redrawn as
        ``Binomial(token_count, probability)`` (tokens treated as independent)."""
        probs = self.probabilities().clamp(0, 1)
        tokens = self.tokens.to(torch.float64).expand_as(probs).contiguous()
        counts = torch.binomial(tokens, probs, generator=generator).long()
        return ActivationStats(self.languages, self.tokens.clone(), counts, threshold=self.threshold,
                               token_policy=self.token_policy, include_bos=self.include_bos, model=self.model)

    def select(self, languages: Sequence[str]) -> ActivationStats:
        """The statistics of some languages, in the given order."""
        idx = [self.language_index(lang) for lang in languages]
        return ActivationStats(
            [self.languages[i] for i in idx],
            self.tokens[idx].clone(),
            self.active_counts[..., idx].clone(),
            sums=_pick(self.sums, idx),
            sum_squares=_pick(self.sum_squares, idx),
            **self._settings(),
        )

    def _settings(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "token_policy": self.token_policy,
            "include_bos": self.include_bos,
            "model": self.model,
            "corpus": self.corpus,
            "notes": self.notes,
            "allow_counts_above_tokens": self.allow_counts_above_tokens,
        }

    # -- merging --------------------------------------------------------------------

    def check_compatible(self, other: ActivationStats, *, same_model: bool = True) -> None:
        """Raise [`StatsError`][tl_multilingual.errors.StatsError] unless ``other`` has the same languages (in the same
        order), shape and counting settings, and comes from the same model (with
        ``same_model=False``: the same architecture and shape, e.g. a base model and its
        fine-tuned version). The one rule is `tl_multilingual.provenance.check_compatible()`."""
        if not isinstance(other, ActivationStats):
            raise StatsError(f"cannot combine ActivationStats with {type(other).__name__}")
        fields = (*_SETTINGS, "architecture", *(("name", "weights") if same_model else ()))
        check_compatible(self.provenance, other.provenance, fields=fields, error=StatsError,
                         labels=("the statistics", "the other statistics"))

    def __add__(self, other: ActivationStats) -> ActivationStats:
        self.check_compatible(other)
        corpora = [c for c in (self.corpus, other.corpus) if c]
        return ActivationStats(
            self.languages,
            self.tokens + other.tokens.to(self.tokens.device),
            self.active_counts + other.active_counts.to(self.active_counts.device),
            sums=_add(self.sums, other.sums),
            sum_squares=_add(self.sum_squares, other.sum_squares),
            threshold=self.threshold,
            token_policy=self.token_policy,
            include_bos=self.include_bos,
            model=self.model or other.model,
            corpus={"merged": corpora} if len(corpora) > 1 else (corpora[0] if corpora else {}),
            notes=self.notes,
            allow_counts_above_tokens=self.allow_counts_above_tokens or other.allow_counts_above_tokens,
        )

    @classmethod
    def merge(cls, shards: Sequence[ActivationStats]) -> ActivationStats:
        """Sum statistics collected by independent jobs (a job array, several machines)
        on disjoint parts of a corpus: equal to one collection over their union.

        Args:
            shards: statistics of the same model, languages, threshold, token policy
                and BOS setting.

        Returns:
            The summed [`ActivationStats`][tl_multilingual.neurons.stats.ActivationStats]; its ``corpus`` record lists the shards'.

        Raises:
            StatsError: when no shards are given or two of them are not compatible
                ([`check_compatible()`][tl_multilingual.neurons.stats.ActivationStats.check_compatible]).

        Warns when two shards were collected from the same corpus fingerprint: their
        texts would be counted twice.
        """
        shards = list(shards)
        if not shards:
            raise StatsError("merge needs at least one ActivationStats")
        for shard in shards[1:]:
            shards[0].check_compatible(shard)
        seen: dict[str, int] = {}
        for i, shard in enumerate(shards):
            for fingerprint in _fingerprints(shard.corpus):
                if fingerprint in seen:
                    warn(
                        f"shards {seen[fingerprint]} and {i} were collected from the same corpus "
                        f"(fingerprint {fingerprint[:12]}): its texts are counted twice"
                    )
                seen.setdefault(fingerprint, i)
        total = shards[0].select(shards[0].languages)  # a copy, also of a single shard
        for shard in shards[1:]:
            total = total + shard  # the rules of addition (compatibility, counts) apply
        if len(shards) > 1:
            total.corpus = {"merged": [s.corpus for s in shards]}
        return total

    # -- presentation ---------------------------------------------------------------

    def to_frame(self, *, per_neuron: bool = False) -> pd.DataFrame:
        """Tidy summary: one row per language (``tokens``, mean activation probability),
        or with ``per_neuron`` one row per (layer, neuron, language)."""
        probs = self.probabilities()
        if not per_neuron:
            return pd.DataFrame(
                {
                    "language": list(self.languages),
                    "tokens": self.tokens.tolist(),
                    "mean_probability": probs.mean(dim=(0, 1)).tolist(),
                }
            )
        n_layers, d_mlp, k = probs.shape
        grid = torch.cartesian_prod(torch.arange(n_layers), torch.arange(d_mlp), torch.arange(k))
        frame = pd.DataFrame(
            {
                "layer": grid[:, 0].numpy(),
                "neuron": grid[:, 1].numpy(),
                "language": pd.Categorical.from_codes(grid[:, 2].numpy(), categories=list(self.languages)),
                "active": self.active_counts.reshape(-1).cpu().numpy(),
                "probability": probs.reshape(-1).cpu().numpy(),
            }
        )
        if self.sums is not None:
            frame["mean"] = self.means().reshape(-1).cpu().numpy()
        return frame

    def __repr__(self) -> str:
        tokens = ", ".join(f"{lang}: {n}" for lang, n in self.token_counts.items())
        name = self.model.get("name")
        model = f"{name!r}, " if name else ""
        return (
            f"ActivationStats({model}{self.n_layers}x{self.d_mlp}, tokens {{{tokens}}}, "
            f"policy={self.token_policy!r}, threshold={self.threshold})"
        )

    # -- files ----------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Save to the folder ``path``: ``tensors.safetensors`` + ``manifest.json``."""
        tensors = {"token_counts": self.tokens, "active_counts": self.active_counts}
        if self.sums is not None:
            tensors["sums"] = self.sums
        if self.sum_squares is not None:
            tensors["sum_squares"] = self.sum_squares
        manifest = {
            "languages": list(self.languages),
            "token_counts": self.token_counts,
            "shape": list(self.active_counts.shape),
            "model": self.model,
            "corpus": self.corpus,
            "notes": self.notes,
            "threshold": self.threshold,
            "token_policy": self.token_policy,
            "include_bos": self.include_bos,
            "allow_counts_above_tokens": self.allow_counts_above_tokens,
        }
        return write_result(path, kind=KIND, tensors=tensors, manifest=manifest)

    @classmethod
    def load(cls, path: str | Path) -> ActivationStats:
        """Load statistics saved with [`save()`][tl_multilingual.neurons.stats.ActivationStats.save], checking the checksums, every
        manifest field and their agreement with the tensors.

        Raises:
            SaveError: the folder is missing, damaged or edited, or a manifest field is
                invalid or disagrees with the tensors.
            StatsError: the statistics themselves are impossible (see `validate_stats()`).
        """
        tensors, manifest = read_result(path, kind=KIND)
        where = Path(path) / "manifest.json"
        for name in ("token_counts", "active_counts"):
            if name not in tensors:
                raise SaveError(f"{path}: the tensor file lacks {name!r}")
        active, tokens = tensors["active_counts"], tensors["token_counts"]
        languages = manifest_field(
            manifest, "languages", list, where=where, expect="a list of distinct language codes",
            check=lambda v: v and all(isinstance(x, str) and x for x in v) and len(set(v)) == len(v),
        )
        shape = manifest_field(manifest, "shape", list, where=where, expect="[n_layers, d_mlp, n_languages]",
                               check=lambda v: len(v) == 3 and all(type(x) is int for x in v))
        if list(active.shape) != shape or shape[2] != len(languages):
            raise SaveError(f"{path}: the counts are {list(active.shape)} but the manifest states {shape} "
                            f"for {len(languages)} languages")
        counts = manifest_field(manifest, "token_counts", dict, where=where,
                                expect="a token count per language, in the order of 'languages'",
                                check=lambda v: list(v) == languages)
        if tokens.ndim != 1 or tokens.tolist() != list(counts.values()):
            raise SaveError(f"{path}: the token counts do not match the manifest")
        threshold = manifest_field(manifest, "threshold", (int, float), where=where, expect="a finite number",
                                   check=math.isfinite)
        policy = manifest_field(manifest, "token_policy", str, where=where, check=lambda v: v in POLICIES,
                                expect=f"one of {POLICIES}")
        record = {
            name: manifest_field(manifest, name, (dict, type(None)), where=where, default=None)
            for name in ("model", "corpus", "notes")
        }
        return cls(
            languages,
            tokens,
            active,
            sums=tensors.get("sums"),
            sum_squares=tensors.get("sum_squares"),
            threshold=threshold,
            token_policy=policy,
            include_bos=manifest_field(manifest, "include_bos", bool, where=where, default=False),
            allow_counts_above_tokens=manifest_field(manifest, "allow_counts_above_tokens", bool, where=where,
                                                     default=False),
            **record,
        )


def _pick(values: Tensor | None, idx: list[int]) -> Tensor | None:
    return None if values is None else values[..., idx].clone()


def _fingerprints(corpus: Mapping[str, Any]) -> list[str]:
    """Corpus fingerprints recorded in a statistics' corpus record (merged ones too)."""
    if "merged" in corpus:
        return [f for part in corpus["merged"] for f in _fingerprints(part or {})]
    return [corpus["fingerprint"]] if corpus.get("fingerprint") else []


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return None if a is None or b is None else a + b.to(a.device)


def _per_language(bad: Tensor, languages: Sequence[str]) -> str:
    """``"en: 3, fr: 1"`` from a boolean grid ``[..., n_languages]``."""
    counts = bad.reshape(-1, bad.shape[-1]).sum(0).tolist()
    return ", ".join(f"{lang}: {n}" for lang, n in zip(languages, counts) if n)


def validate_stats(stats: ActivationStats) -> None:
    """Check that statistics can be true: the one rule, run wherever
    [`ActivationStats`][tl_multilingual.neurons.stats.ActivationStats] are built (constructor, [`from_counts()`][tl_multilingual.neurons.stats.ActivationStats.from_counts],
    reference imports, ``a + b``, [`select()`][tl_multilingual.neurons.stats.ActivationStats.select]) or loaded.

    Checked: distinct language codes; ``token_counts`` one integer per language and
    ``active_counts`` integers ``[n_layers, d_mlp, n_languages]``, both non-negative,
    with active counts at most the token count (unless ``allow_counts_above_tokens``);
    ``sums`` and ``sum_squares`` floating point of the same shape, finite, sums of
    squares non-negative; a finite threshold, a known token policy; a model record that
    agrees with the shape; no tensor on the ``meta`` device.

    Raises:
        StatsError: naming the array, the languages and how many entries are wrong.
    """
    langs = stats.languages
    if not langs:
        raise StatsError("statistics need at least one language")
    if not all(isinstance(lang, str) and lang for lang in langs):
        raise StatsError(f"languages must be non-empty strings, got {langs}")
    if len(set(langs)) != len(langs):
        raise StatsError(f"languages repeat: {langs}")
    k = len(langs)
    arrays = {"token_counts": stats.tokens, "active_counts": stats.active_counts,
              "sums": stats.sums, "sum_squares": stats.sum_squares}
    for name, value in arrays.items():
        if value is None and name in ("sums", "sum_squares"):
            continue
        if not isinstance(value, Tensor):
            raise StatsError(f"{name} must be a tensor, got {type(value).__name__}")
        if value.is_meta:
            raise StatsError(f"{name} is on the meta device and holds no values; build statistics from real counts")
    a, tokens = stats.active_counts, stats.tokens
    if a.ndim != 3 or a.shape[2] != k:
        raise StatsError(f"active_counts must be [n_layers, d_mlp, {k}] for languages {langs}, got {tuple(a.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise StatsError(f"active_counts has no neurons: shape {tuple(a.shape)}")
    for name, value in (("token_counts", tokens), ("active_counts", a)):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise StatsError(f"{name} must hold integer counts, got {value.dtype}")
    if tokens.shape != (k,):
        raise StatsError(f"token_counts must be {k} integers (one per language), got shape {tuple(tokens.shape)}")
    if bool((tokens < 0).any()):
        raise StatsError(f"token_counts are negative for {_per_language(tokens[None] < 0, langs)}")
    if bool((a < 0).any()):
        raise StatsError(f"active_counts has negative entries ({_per_language(a < 0, langs)})")
    if not stats.allow_counts_above_tokens:
        above = a > tokens.to(a.device)
        if bool(above.any()):
            raise StatsError(
                f"active_counts exceed the token count (probabilities above 1) in "
                f"{_per_language(above, langs)} entries; token counts {stats.token_counts}"
            )
    for name in ("sums", "sum_squares"):
        value = arrays[name]
        if value is None:
            continue
        if value.shape != a.shape:
            raise StatsError(f"{name} must have the shape of active_counts {tuple(a.shape)}, got {tuple(value.shape)}")
        if not value.is_floating_point():
            raise StatsError(f"{name} must be floating point, got {value.dtype}")
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            raise StatsError(f"{name} holds NaN or infinite values ({_per_language(bad, langs)} entries)")
    if stats.sum_squares is not None and bool((stats.sum_squares < 0).any()):
        raise StatsError(f"sum_squares has negative entries ({_per_language(stats.sum_squares < 0, langs)})")
    if isinstance(stats.threshold, bool) or not isinstance(stats.threshold, (int, float)) or not math.isfinite(stats.threshold):
        raise StatsError(f"threshold must be a finite number, got {stats.threshold!r}")
    stats.threshold = float(stats.threshold)
    if stats.token_policy not in POLICIES:
        raise StatsError(f"token_policy must be one of {POLICIES}, got {stats.token_policy!r}")
    if not isinstance(stats.include_bos, (bool, int)) or stats.include_bos not in (True, False):
        raise StatsError(f"include_bos must be True or False, got {stats.include_bos!r}")
    stats.include_bos = bool(stats.include_bos)
    for name in ("model", "corpus", "notes"):
        if not isinstance(getattr(stats, name), dict):
            raise StatsError(f"{name} must be a mapping, got {type(getattr(stats, name)).__name__}")
    for field, size in (("n_layers", a.shape[0]), ("d_mlp", a.shape[1])):
        if stats.model.get(field) not in (None, size):
            raise StatsError(
                f"the model record says {field} = {stats.model.get(field)!r} but the counts are "
                f"{a.shape[0]}x{a.shape[1]}"
            )


def _read_reference_file(path: str | Path) -> tuple[int, Tensor]:
    data = read_torch_file(path, what="reference file", error=StatsError)
    if not isinstance(data, dict) or "over_zero" not in data:
        raise StatsError(f"{path} is not a reference activation file (no 'over_zero')")
    n = data.get("total_tokens", data.get("n"))
    if n is None:
        raise StatsError(f"{path} has no 'total_tokens' (or 'n') token count")
    try:
        over_zero = torch.as_tensor(data["over_zero"])
        count = torch.as_tensor(n)
    except (TypeError, ValueError, RuntimeError) as err:
        raise StatsError(f"{path}: 'over_zero' and the token count must be numbers: {err}") from err
    if over_zero.ndim != 2:
        raise StatsError(f"{path}: 'over_zero' must be [n_layers, d_mlp], got {tuple(over_zero.shape)}")
    if count.numel() != 1:
        raise StatsError(f"{path}: the token count must be one number")
    for name, value in (("over_zero", over_zero), ("the token count", count)):
        if value.is_floating_point() and not (bool(torch.isfinite(value).all()) and torch.equal(value, value.round())):
            raise StatsError(f"{path}: {name} must hold whole numbers")
        if value.dtype == torch.bool or value.is_complex():
            raise StatsError(f"{path}: {name} must hold whole numbers, got {value.dtype}")
    return int(count), over_zero.to(torch.long)
