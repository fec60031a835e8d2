"""The multilingual logit lens (Wendler et al., ACL 2024): [`language_lens()`][tl_multilingual.stages.lens.language_lens].

For prompts ending right before an answer, the residual stream after every layer, at
the last position, goes through the model's own final norm and unembedding (and its
logit soft-capping, for Gemma 2); the last layer therefore gives exactly the model's
next-token distribution. Per layer and prompt it reports, for every tracked language,
the probability of the answer word (summed over the tokens that can start it, see
[`wordtokens`][tl_multilingual.inputs.wordtokens]) and the rank of its best token, and the entropy of the whole
distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed, resample
from ..errors import CorpusError, SaveError
from ..hub import HubMixin
from ..inputs.prompts import LensPrompt
from ..inputs.wordtokens import word_tokens
from ..model.adapters import ModelAdapter, adapt
from ..model.readout import layer_logprobs
from ..model.tokens import Overflow, fit
from ..persist import manifest_field, read_result, write_result

__all__ = ["language_lens", "LensResult", "answer_sets", "measure"]

_KIND = "tl_multilingual.LensResult"


@dataclass
class LensResult(HubMixin):
    """Per prompt and layer: answer probabilities and ranks per language, and entropy.

    Attributes:
        languages: tracked languages (columns of ``probability`` and ``rank``).
        probability: ``[n_prompts, n_layers, n_languages]``; NaN where a prompt has no
            answer in that language.
        rank: ``[n_prompts, n_layers, n_languages]``, 1 = the most likely token.
        entropy: ``[n_prompts, n_layers]``, in nats.
        top_token: ``[n_prompts, n_layers]`` id of the most likely token.
    """

    languages: tuple[str, ...]
    probability: Float[Tensor, "prompt layer lang"]
    rank: Float[Tensor, "prompt layer lang"]
    entropy: Float[Tensor, "prompt layer"]
    top_token: Int[Tensor, "prompt layer"]
    prompts: tuple[LensPrompt, ...]

    def __repr__(self) -> str:
        return (f"LensResult({len(self.prompts)} prompts, {self.n_layers} layers, "
                f"languages={list(self.languages)})")

    @property
    def n_layers(self) -> int:
        return self.probability.shape[1]

    def to_frame(self) -> pd.DataFrame:
        """One row per (prompt, layer, language): ``probability``, ``rank``, ``entropy``."""
        n_prompts, n_layers, n_langs = self.probability.shape
        grid = np.stack(np.meshgrid(np.arange(n_prompts), np.arange(n_layers), np.arange(n_langs), indexing="ij"), -1)
        grid = grid.reshape(-1, 3)
        frame = pd.DataFrame(
            {
                "prompt": grid[:, 0],
                "layer": grid[:, 1],
                "language": [self.languages[k] for k in grid[:, 2]],
                "probability": self.probability.reshape(-1).numpy(),
                "rank": self.rank.reshape(-1).numpy(),
                "entropy": self.entropy[grid[:, 0], grid[:, 1]].numpy(),
            }
        )
        return frame.dropna(subset=["probability"]).reset_index(drop=True)

    def curves(self) -> pd.DataFrame:
        """Mean probability per layer (rows) and language (columns), plus ``entropy``."""
        mean = torch.nanmean(self.probability, dim=0).numpy()
        frame = pd.DataFrame(mean, columns=list(self.languages))
        frame["entropy"] = self.entropy.mean(0).numpy()
        frame.index.name = "layer"
        return frame

    def summary(self, *, ci: float = 0.95, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
        """Mean and bootstrap interval over prompts, per layer: ``layer``, ``quantity``
        (``probability`` per language, or ``entropy``), ``language``, ``mean``,
        ``ci_low``, ``ci_high``.

        Intervals are percentile bootstraps over prompts ([`tl_multilingual.resample`][tl_multilingual.resample],
        whose NaN policy applies: a prompt without an answer token in a language is left
        out of that language's mean); every quantity shares the same draws.
        """
        unit_draws = resample.draws(self.probability.shape[0], n_boot, seed)
        rows = []
        series = [("probability", lang, self.probability[:, :, k].numpy()) for k, lang in enumerate(self.languages)]
        series.append(("entropy", None, self.entropy.numpy()))
        for quantity, lang, values in series:
            mean, low, high = resample.mean_interval(values, ci=ci, unit_draws=unit_draws)
            for layer in range(values.shape[1]):
                rows.append((layer, quantity, lang, mean[layer], low[layer], high[layer]))
        return pd.DataFrame(rows, columns=["layer", "quantity", "language", "mean", "ci_low", "ci_high"])

    def save(self, path: str | Path) -> Path:
        """Save to the folder ``path`` (safetensors + manifest with the prompts)."""
        tensors = {"probability": self.probability, "rank": self.rank, "entropy": self.entropy,
                   "top_token": self.top_token}
        prompts = [{"text": p.text, "answers": p.answers} for p in self.prompts]
        return write_result(path, kind=_KIND, tensors=tensors,
                            manifest={"languages": list(self.languages), "prompts": prompts})

    @classmethod
    def load(cls, path: str | Path) -> LensResult:
        """Load a result saved with [`save()`][tl_multilingual.stages.lens.LensResult.save], checking every manifest field.

        Raises:
            SaveError: the folder is missing, damaged or edited, or its manifest is
                invalid or disagrees with the tensors.
        """
        tensors, manifest = read_result(path, kind=_KIND)
        where = Path(path) / "manifest.json"
        languages = manifest_field(manifest, "languages", list, where=where, expect="a list of language codes",
                                   check=lambda v: all(isinstance(x, str) for x in v))
        prompts = manifest_field(
            manifest, "prompts", list, where=where, expect="a list of {text, answers} records",
            check=lambda v: all(isinstance(p, dict) and isinstance(p.get("text"), str)
                                and isinstance(p.get("answers"), dict) for p in v),
        )
        missing = [k for k in ("probability", "rank", "entropy", "top_token") if k not in tensors]
        if missing:
            raise SaveError(f"{path}: the tensor file lacks {missing}")
        n = len(prompts)
        probability = tensors["probability"]
        if probability.ndim != 3 or probability.shape[0] != n or probability.shape[2] != len(languages) or any(
            tensors[k].shape[:2] != probability.shape[:2] for k in ("rank", "entropy", "top_token")
        ):
            raise SaveError(f"{path}: the tensors do not match the manifest's {n} prompts and "
                            f"{len(languages)} languages")
        return cls(tuple(languages), probability, tensors["rank"], tensors["entropy"], tensors["top_token"],
                   tuple(LensPrompt(p["text"], p["answers"]) for p in prompts))

    def select(self, prompts: Sequence[int]) -> LensResult:
        """The result on a subset (or resample) of prompts."""
        idx = torch.as_tensor(list(prompts), dtype=torch.long)
        return LensResult(
            self.languages, self.probability[idx], self.rank[idx], self.entropy[idx], self.top_token[idx],
            tuple(self.prompts[i] for i in idx.tolist()),
        )


def answer_sets(lm: ModelAdapter, prompts: Sequence[LensPrompt], languages: Sequence[str]) -> list[list[Tensor | None]]:
    sets = []
    for prompt in prompts:
        row = []
        for lang in languages:
            word = prompt.answers.get(lang)
            ids = word_tokens(lm.tokenizer, word) if word else []
            row.append(torch.tensor(ids, dtype=torch.long, device=lm.device) if ids else None)
        sets.append(row)
    return sets


def measure(logp: Tensor, sets: list[list[Tensor | None]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    probs = logp.exp()
    entropy = -(probs * logp).sum(-1)
    top = probs.argmax(-1)
    n_langs = len(sets[0]) if sets else 0
    p_out = torch.full((*probs.shape[:2], n_langs), float("nan"), device=probs.device)
    r_out = torch.full((*probs.shape[:2], n_langs), float("nan"), device=probs.device)
    for i, row in enumerate(sets):  # filled on the device: one transfer per batch, below
        for k, ids in enumerate(row):
            if ids is None:
                continue
            chosen = probs[i][:, ids.to(probs.device)]  # [layer, n_ids]
            p_out[i, :, k] = chosen.sum(-1)
            best = chosen.max(-1).values
            r_out[i, :, k] = ((probs[i] > best[:, None]).sum(-1) + 1).float()
    return p_out.cpu(), r_out.cpu(), entropy.cpu(), top.cpu()


def language_lens(
    model: Any,
    prompts: Sequence[LensPrompt],
    *,
    languages: Sequence[str] | None = None,
    batch_size: int = 8,
    progress: bool = False,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> LensResult:
    """Read every layer through the model's own output head, on prompts that end right
    before an answer.

    Args:
        model: a model or [`ModelAdapter`][tl_multilingual.model.adapters.ModelAdapter].
        prompts: [`LensPrompt`][tl_multilingual.inputs.prompts.LensPrompt] objects (see [`tl_multilingual.inputs.prompts`][tl_multilingual.inputs.prompts]).
        languages: languages to track (default: every language with an answer).
        batch_size: prompts per forward pass.
        max_length: longest prompt fed to the model (default: its context size).
        overflow: longer prompts lose their oldest tokens (``"truncate"``, with a
            warning) or are refused (``"error"``); see [`tl_multilingual.model.tokens`][tl_multilingual.model.tokens].
    """
    lm = adapt(model)
    prompts = list(prompts)
    if not prompts:
        raise CorpusError("the lens needs at least one prompt")
    if languages is None:
        languages = list(dict.fromkeys(lang for p in prompts for lang in p.answers))
    sets = answer_sets(lm, prompts, languages)
    ids, _ = fit(lm, lm.tokenize([p.text for p in prompts]), max_length=max_length, overflow=overflow)
    mine = distributed.shard(len(prompts))  # each rank reads its share; rows gathered below
    parts = [(torch.zeros(0, lm.n_layers, len(languages)),) * 2
             + (torch.zeros(0, lm.n_layers), torch.zeros(0, lm.n_layers, dtype=torch.long))]
    for lo in tqdm(range(0, len(mine), batch_size), disable=not distributed.show_progress(progress), desc="lens"):
        chunk = mine[lo : lo + batch_size]
        batch = lm.pad([ids[i] for i in chunk], side="left")
        parts.append(measure(layer_logprobs(lm, batch), [sets[i] for i in chunk]))
    prob, rank, entropy, top = (distributed.gather_rows(torch.cat(x), mine, len(prompts)) for x in zip(*parts))
    return LensResult(tuple(languages), prob, rank, entropy, top, tuple(prompts))
