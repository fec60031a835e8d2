"""Per-language activation statistics of every MLP neuron: :class:`ActivationStats`.

For layer ``l``, neuron ``j`` and language ``k`` the statistics are sufficient for
everything the identification methods need:

- ``token_counts[k]``: counted tokens of language ``k`` (padding never counted);
- ``active_counts[l, j, k]``: counted tokens on which the neuron's activation is
  above the threshold (0 by default), int64;
- ``sums`` and ``sum_squares``: the sum and the sum of squares of the activation
  over the counted tokens, float64.

``p[l, j, k] = active_counts[l, j, k] / token_counts[k]`` is the activation
probability of DESIGN "Vocabulary".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .errors import StatsError
from .languages import normalize_language
from .persist import read_result, write_result

__all__ = ["ActivationStats"]

KIND = "tl_multilingual.ActivationStats"

# Manifest fields that must agree before two statistics may be added.
_COMPATIBLE = ("threshold", "token_policy", "include_bos")
_MODEL_FIELDS = ("name", "architecture", "n_layers", "d_mlp")


class ActivationStats:
    """Activation statistics per layer, neuron and language.

    Build with :func:`tl_multilingual.collect_stats`, :meth:`from_counts`,
    :meth:`from_reference_files` or :meth:`load`. Statistics of the same model,
    languages and token policy add up with ``a + b``.
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
    ) -> None:
        self.languages: tuple[str, ...] = tuple(languages)
        self.tokens = token_counts
        self.active_counts = active_counts
        self.sums = sums
        self.sum_squares = sum_squares
        self.threshold = float(threshold)
        self.token_policy = token_policy
        self.include_bos = bool(include_bos)
        self.model = dict(model or {})
        self.corpus = dict(corpus or {})
        self.notes = dict(notes or {})
        self._validate()

    def _validate(self) -> None:
        if len(set(self.languages)) != len(self.languages):
            raise StatsError(f"languages repeat: {self.languages}")
        k = len(self.languages)
        if k == 0:
            raise StatsError("statistics need at least one language")
        a = self.active_counts
        if not isinstance(a, Tensor) or a.ndim != 3 or a.shape[2] != k:
            raise StatsError(
                f"active_counts must be [n_layers, d_mlp, {k}] for languages {self.languages}, "
                f"got {tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__}"
            )
        if a.is_floating_point() or a.dtype == torch.bool:
            raise StatsError(f"active_counts must hold integer counts, got {a.dtype}")
        if self.tokens.shape != (k,) or self.tokens.is_floating_point():
            raise StatsError(f"token_counts must be {k} integers, got {tuple(self.tokens.shape)}")
        if (a < 0).any() or (self.tokens < 0).any():
            raise StatsError("counts cannot be negative")
        for name in ("sums", "sum_squares"):
            value = getattr(self, name)
            if value is not None and value.shape != a.shape:
                raise StatsError(f"{name} must have the shape of active_counts {tuple(a.shape)}")
        if self.model.get("d_mlp") not in (None, a.shape[1]) or self.model.get("n_layers") not in (None, a.shape[0]):
            raise StatsError(
                f"the model record says {self.model.get('n_layers')}x{self.model.get('d_mlp')} but the "
                f"counts are {a.shape[0]}x{a.shape[1]}"
            )

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
        if counts.is_floating_point():
            if not torch.equal(counts, counts.round()):
                raise StatsError("active_counts must be whole numbers")
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
        LongTensor[n_layers, d_mlp]}``. With ``prefix`` (paper A's prompt-only runs),
        the statistics are response-only, computed as the reference code does:
        ``active = clamp(full - prefix, min=0)`` over ``tokens = full - prefix``.
        A few clamped entries and probabilities slightly above 1 are a known quirk of
        those files (tokenisation boundaries); ``clip_to_tokens`` caps counts at the
        token count instead. Both are recorded in :attr:`notes`.
        """
        langs = list(full)
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
        )

    # -- shape ----------------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        return self.active_counts.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.active_counts.shape[1]

    @property
    def token_counts(self) -> dict[str, int]:
        """Counted tokens per language."""
        return dict(zip(self.languages, self.tokens.tolist()))

    def language_index(self, language: str) -> int:
        """Position of ``language`` in :attr:`languages` (codes are normalised)."""
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
                               token_policy=self.token_policy, include_bos=self.include_bos)

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
        }

    # -- merging --------------------------------------------------------------------

    def check_compatible(self, other: ActivationStats) -> None:
        """Raise :class:`StatsError` unless ``other`` comes from the same model, languages
        and counting settings."""
        if not isinstance(other, ActivationStats):
            raise StatsError(f"cannot combine ActivationStats with {type(other).__name__}")
        if other.languages != self.languages:
            raise StatsError(f"languages differ: {self.languages} vs {other.languages}")
        if other.active_counts.shape != self.active_counts.shape:
            raise StatsError(
                f"shapes differ: {tuple(self.active_counts.shape)} vs {tuple(other.active_counts.shape)}"
            )
        for name in _COMPATIBLE:
            if getattr(self, name) != getattr(other, name):
                raise StatsError(f"{name} differs: {getattr(self, name)!r} vs {getattr(other, name)!r}")
        for name in _MODEL_FIELDS:
            mine, theirs = self.model.get(name), other.model.get(name)
            if mine is not None and theirs is not None and mine != theirs:
                raise StatsError(f"the statistics come from different models ({name}: {mine!r} vs {theirs!r})")

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
        )

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
        }
        return write_result(path, kind=KIND, tensors=tensors, manifest=manifest)

    @classmethod
    def load(cls, path: str | Path) -> ActivationStats:
        """Load statistics saved with :meth:`save`, checking them against the manifest."""
        tensors, manifest = read_result(path, kind=KIND)
        for name in ("token_counts", "active_counts"):
            if name not in tensors:
                raise StatsError(f"{path} lacks {name}")
        if list(tensors["active_counts"].shape) != manifest.get("shape"):
            raise StatsError(f"{path}: the counts do not have the shape the manifest states")
        if tensors["token_counts"].tolist() != list(manifest.get("token_counts", {}).values()):
            raise StatsError(f"{path}: the token counts do not match the manifest")
        try:
            return cls(
                manifest["languages"],
                tensors["token_counts"],
                tensors["active_counts"],
                sums=tensors.get("sums"),
                sum_squares=tensors.get("sum_squares"),
                threshold=manifest["threshold"],
                token_policy=manifest["token_policy"],
                include_bos=manifest.get("include_bos", False),
                model=manifest.get("model"),
                corpus=manifest.get("corpus"),
                notes=manifest.get("notes"),
            )
        except KeyError as err:
            raise StatsError(f"{path}: the manifest lacks {err}") from None


def _pick(values: Tensor | None, idx: list[int]) -> Tensor | None:
    return None if values is None else values[..., idx].clone()


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return None if a is None or b is None else a + b.to(a.device)


def _read_reference_file(path: str | Path) -> tuple[int, Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise StatsError(f"cannot read reference file {path}: {err}") from None
    if not isinstance(data, dict) or "over_zero" not in data:
        raise StatsError(f"{path} is not a reference activation file (no 'over_zero')")
    n = data.get("total_tokens", data.get("n"))
    if n is None:
        raise StatsError(f"{path} has no 'total_tokens' (or 'n') token count")
    over_zero = torch.as_tensor(data["over_zero"]).to(torch.long)
    if over_zero.ndim != 2:
        raise StatsError(f"{path}: 'over_zero' must be [n_layers, d_mlp], got {tuple(over_zero.shape)}")
    if torch.as_tensor(n).numel() != 1:
        raise StatsError(f"{path}: the token count must be one number")
    return int(torch.as_tensor(n)), over_zero
