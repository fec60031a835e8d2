"""The multilingual logit lens (Wendler et al., ACL 2024): [`language_lens()`][tl_multilingual.stages.lens.language_lens].

For prompts ending right before an answer, the residual stream after every layer, at
the last position, goes through the model's own final norm and unembedding (and its
logit soft-capping, for Gemma 2); the last layer therefore gives exactly the model's
next-token distribution. Per layer and prompt it reports, for every tracked language,
the probability of the answer word (summed over the tokens that can start it, see
[`wordtokens`][tl_multilingual.inputs.wordtokens]) and the rank of its best token, and the entropy of the whole
distribution.

**Which lens.** The logit lens reads early layers badly: their residual stream is not
yet in the basis the output head reads (Belrose et al., 2023, the tuned lens). The
Jacobian lens of TransformerLens (``transformer_lens.tools.analysis.JacobianLens``;
Gurnee et al., 2026, "Verbalizable Representations Form a Global Workspace in Language
Models") first carries layer ``l``'s residual stream to the last layer with one fitted
matrix, ``J_l h``, the average Jacobian of the last block's output with respect to
layer ``l``'s over a corpus; the logit lens is the case ``J_l = I``. Pass one as
``language_lens(..., lens=...)``: fitted with TransformerLens's own estimator by
[`fit_jacobian_lens()`][tl_multilingual.stages.lens.fit_jacobian_lens] on a
[`Corpus`][tl_multilingual.inputs.corpus.Corpus], or loaded with ``JacobianLens.load`` /
``JacobianLens.from_pretrained``. Its readings use the same word
tokens, probabilities, ranks and entropies, and the last layer is still the model's own
distribution. A lens fitted on text of other languages transports another
distribution of residual streams, so (as the tuned-lens authors warn) every result
records the languages its lens was fitted on, and warns when a language it reads was
not among them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed, resample
from ..errors import CorpusError, SaveError, TLMultilingualError, UnsupportedModelError, warn
from ..hub import HubMixin
from ..inputs.corpus import Corpus
from ..inputs.languages import normalize_language
from ..inputs.prompts import LensPrompt
from ..inputs.wordtokens import word_tokens
from ..model.adapters import ModelAdapter, adapt
from ..model.readout import Transport, jacobian_lens_class, layer_logprobs
from ..model.tokens import Overflow, fit
from ..persist import manifest_field, read_result, write_result

__all__ = [
    "language_lens", "LensResult", "fit_jacobian_lens", "lens_record", "answer_sets", "measure",
]

_KIND = "tl_multilingual.LensResult"
_META = "tl_multilingual"  # our entry in a JacobianLens's metadata
LOGIT_LENS: dict[str, Any] = {"kind": "logit"}
"""The lens record of a result read with the logit lens."""


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
        prompts: the prompts, in order.
        lens: which lens read the layers (see
            [`lens_record()`][tl_multilingual.stages.lens.lens_record]): ``{"kind": "logit"}``,
            or for a Jacobian lens ``{"kind": "jacobian", "languages": [...] or None,
            "corpus": ..., "n_prompts": ..., ...}``, where ``languages`` are the languages of
            the text it was fitted on (None: unknown).
    """

    languages: tuple[str, ...]
    probability: Float[Tensor, "prompt layer lang"]
    rank: Float[Tensor, "prompt layer lang"]
    entropy: Float[Tensor, "prompt layer"]
    top_token: Int[Tensor, "prompt layer"]
    prompts: tuple[LensPrompt, ...]
    lens: dict[str, Any] = field(default_factory=lambda: dict(LOGIT_LENS))

    def __repr__(self) -> str:
        return (f"LensResult({len(self.prompts)} prompts, {self.n_layers} layers, "
                f"languages={list(self.languages)}, lens={self.lens.get('kind')!r})")

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
                            manifest={"languages": list(self.languages), "prompts": prompts,
                                      "lens": self.lens})

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
        # Results saved before the lens was a choice were read by the logit lens.
        lens = manifest_field(
            manifest, "lens", dict, where=where, default=dict(LOGIT_LENS),
            expect="a lens record with a 'kind'",
            check=lambda v: v.get("kind") in ("logit", "jacobian")
            and (v.get("languages") is None or all(isinstance(x, str) for x in v["languages"])),
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
                   tuple(LensPrompt(p["text"], p["answers"]) for p in prompts), lens)

    def select(self, prompts: Sequence[int]) -> LensResult:
        """The result on a subset (or resample) of prompts."""
        idx = torch.as_tensor(list(prompts), dtype=torch.long)
        return LensResult(
            self.languages, self.probability[idx], self.rank[idx], self.entropy[idx], self.top_token[idx],
            tuple(self.prompts[i] for i in idx.tolist()), dict(self.lens),
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


def _jacobian_class(lens: Any) -> type | None:
    """TransformerLens's JacobianLens when ``lens`` is one (the library's refusal when the
    installed TransformerLens has none); None for the logit lens."""
    if lens is None or (isinstance(lens, str) and lens == "logit"):
        return None
    if isinstance(lens, str):
        raise TLMultilingualError(
            f"lens={lens!r}: pass 'logit' (the default) or a TransformerLens JacobianLens "
            "object, fitted with tl_multilingual.stages.lens.fit_jacobian_lens(model, corpus) "
            "or loaded with JacobianLens.load(path)"
        )
    cls = jacobian_lens_class()
    if not isinstance(lens, cls):
        raise TLMultilingualError(
            "lens must be 'logit' or a transformer_lens.tools.analysis.JacobianLens, "
            f"got {type(lens).__name__}"
        )
    return cls


def _tl_refusal(err: Exception, lm: ModelAdapter, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{lm.name}: TransformerLens refuses {what}: {err}")


def _recorded_languages(lens: Any) -> list[str] | None:
    entry = lens.metadata.get(_META)
    languages = entry.get("languages") if isinstance(entry, dict) else None
    if isinstance(languages, (list, tuple)) and all(isinstance(x, str) for x in languages):
        return list(languages)
    return None


def lens_record(lens: Any = None, *, languages: Sequence[str] | None = None) -> dict[str, Any]:
    """What a result records about the lens that read it.

    Args:
        lens: None or ``"logit"`` (the logit lens), or a TransformerLens ``JacobianLens``.
        languages: for a Jacobian lens, the languages of the text it was fitted on, when
            the lens does not record them itself (a lens fitted by
            [`fit_jacobian_lens()`][tl_multilingual.stages.lens.fit_jacobian_lens] does; a
            published one does not).

    Returns:
        ``{"kind": "logit"}``, or ``{"kind": "jacobian", "languages", "corpus",
        "n_prompts", "source_layers", "estimator", "model_name", "fitted_with"}``
        (``fitted_with``: the TransformerLens version that fitted it; ``languages``
        None when unknown).

    Raises:
        TLMultilingualError: ``languages`` disagree with those the lens records, or
            ``languages`` given for the logit lens.
        UnsupportedModelError: a Jacobian lens with a TransformerLens that has none.
    """
    if _jacobian_class(lens) is None:
        if languages is not None:
            raise TLMultilingualError(
                "lens_languages describe a fitted lens; the logit lens has none"
            )
        return dict(LOGIT_LENS)
    recorded = _recorded_languages(lens)
    given = None
    if languages is not None:
        given = [normalize_language(x, allow_unknown=True) for x in languages]
    if given is not None and recorded is not None and set(given) != set(recorded):
        raise TLMultilingualError(
            f"the Jacobian lens records that it was fitted on {recorded}, but "
            f"lens_languages={given}; leave lens_languages out to use the lens's own record"
        )
    meta = lens.metadata
    return {
        "kind": "jacobian",
        "languages": given if given is not None else recorded,
        "corpus": meta.get("corpus"),
        "n_prompts": int(lens.n_prompts),
        "source_layers": [int(x) for x in lens.source_layers],
        "estimator": meta.get("estimator", "jacobian_lens"),
        "model_name": meta.get("model_name"),
        "fitted_with": meta.get("transformer_lens_version"),
    }


def _jacobian_transport(lm: ModelAdapter, lens: Any) -> Transport:
    """The lens's own transport (TransformerLens's ``JacobianLens.transport``), after
    TransformerLens's checks that the lens belongs to the model."""
    try:
        lens.validate_model(lm.model)
    except (TypeError, ValueError) as err:
        raise _tl_refusal(err, lm, "this Jacobian lens on this model") from err
    missing = [layer for layer in range(lm.n_layers - 1) if layer not in lens.source_layers]
    if missing:
        raise TLMultilingualError(
            f"the Jacobian lens has no transport for layers {missing} of {lm.name}: the lens "
            "reads every layer, so fit it on every layer below the last (source_layers=None)"
        )
    return lens.transport


def _check_lens_languages(record: dict[str, Any], languages: Sequence[str]) -> None:
    if record["kind"] != "jacobian":
        return
    fitted = record["languages"]
    if fitted is None:
        warn(
            "the languages of the text this Jacobian lens was fitted on are unknown, so its "
            f"readings of {list(languages)} cannot be vouched for: pass lens_languages=[...] "
            "(a published lens records its corpus in lens.metadata), or fit one on your "
            "languages with fit_jacobian_lens"
        )
        return
    unseen = [lang for lang in languages if lang not in fitted]
    if unseen:
        warn(
            f"the Jacobian lens was fitted on text in {fitted}, not in {unseen}: it transports "
            f"residual streams of other text than it reads for {unseen}; fit it on a corpus "
            "that includes them (fit_jacobian_lens) before trusting those curves"
        )


def language_lens(
    model: Any,
    prompts: Sequence[LensPrompt],
    *,
    languages: Sequence[str] | None = None,
    lens: Any = "logit",
    lens_languages: Sequence[str] | None = None,
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
        lens: ``"logit"`` (the default: Wendler et al., 2024), or a TransformerLens
            ``JacobianLens`` (Gurnee et al., 2026) for this model, fitted with
            [`fit_jacobian_lens()`][tl_multilingual.stages.lens.fit_jacobian_lens] or loaded
            with ``JacobianLens.load`` / ``from_pretrained``: layer ``l < n_layers - 1`` is
            read as ``head(J_l h_l)``.
        lens_languages: the languages of the text a loaded Jacobian lens was fitted on,
            when it does not record them (a lens from
            [`fit_jacobian_lens()`][tl_multilingual.stages.lens.fit_jacobian_lens] does).
        batch_size: prompts per forward pass.
        max_length: longest prompt fed to the model (default: its context size).
        overflow: longer prompts lose their oldest tokens (``"truncate"``, with a
            warning) or are refused (``"error"``); see [`tl_multilingual.model.tokens`][tl_multilingual.model.tokens].

    Returns:
        A [`LensResult`][tl_multilingual.stages.lens.LensResult] whose ``lens`` records which
        lens read it.

    Warns:
        TLMultilingualWarning: a Jacobian lens fitted on text that holds none of a
            tracked language, or whose languages are unknown.

    Raises:
        CorpusError: no prompts.
        TLMultilingualError: ``lens`` is neither ``"logit"`` nor a ``JacobianLens``, the
            lens lacks a layer, or ``lens_languages`` contradict the lens's record.
        UnsupportedModelError: a Jacobian lens with a TransformerLens that does not
            ship it (it needs 3.9 or later), or one TransformerLens refuses for this
            model (another model, a legacy ``HookedTransformer``, processed weights).
    """
    lm = adapt(model)
    prompts = list(prompts)
    if not prompts:
        raise CorpusError("the lens needs at least one prompt")
    if languages is None:
        languages = list(dict.fromkeys(lang for p in prompts for lang in p.answers))
    record = lens_record(lens, languages=lens_languages)
    transport = _jacobian_transport(lm, lens) if record["kind"] == "jacobian" else None
    _check_lens_languages(record, languages)
    sets = answer_sets(lm, prompts, languages)
    ids, _ = fit(
        lm, lm.tokenize([p.text for p in prompts]), max_length=max_length, overflow=overflow
    )
    mine = distributed.shard(len(prompts))  # each rank reads its share; rows gathered below
    parts = [
        (torch.zeros(0, lm.n_layers, len(languages)),) * 2
        + (torch.zeros(0, lm.n_layers), torch.zeros(0, lm.n_layers, dtype=torch.long))
    ]
    for lo in tqdm(
        range(0, len(mine), batch_size),
        disable=not distributed.show_progress(progress),
        desc="lens",
    ):
        chunk = mine[lo : lo + batch_size]
        batch = lm.pad([ids[i] for i in chunk], side="left")
        parts.append(
            measure(layer_logprobs(lm, batch, transport=transport), [sets[i] for i in chunk])
        )
    prob, rank, entropy, top = (
        distributed.gather_rows(torch.cat(x), mine, len(prompts)) for x in zip(*parts)
    )
    return LensResult(tuple(languages), prob, rank, entropy, top, tuple(prompts), record)


def _fit_text(text: Any) -> str:
    return text.text if text.response is None else text.text + text.response


def fit_jacobian_lens(
    model: Any,
    corpus: Corpus,
    *,
    source_layers: Sequence[int] | None = None,
    max_length: int = 128,
    skip_first_positions: int = 16,
    dim_batch: int = 8,
    progress: bool = False,
) -> Any:
    """Fit TransformerLens's Jacobian lens on the texts of a corpus, recording its
    languages.

    The fit is TransformerLens's own (``JacobianLens.fit``, Gurnee et al., 2026): per
    text, the Jacobian of the last block's output with respect to each layer's,
    averaged over the text's positions after the first ``skip_first_positions`` (and
    before the last), then over texts. Every language's texts are used, in corpus order;
    a text too short to have such a position is left out (with one warning per
    language), and a language left with none is refused. The lens's ``metadata`` gets
    ``{"tl_multilingual": {"languages", "texts", "corpus_fingerprint"}}`` (``texts``:
    texts fitted on per language), which ``JacobianLens.save``/``load`` keep and
    [`language_lens()`][tl_multilingual.stages.lens.language_lens] reads. Under
    ``torch.distributed`` each rank fits its share of the texts and the shares are combined
    with ``JacobianLens.merge`` (a mean weighted by texts, as one process would compute it
    up to summation order).

    Cost: per text, one forward pass of ``dim_batch`` copies and ``d_model / dim_batch``
    backward passes; TransformerLens reports that about 100 texts of 128 tokens give a
    usable lens.

    Args:
        model: a ``TransformerBridge`` with raw weights (as booted) or its adapter.
        corpus: texts per language (the response of a prompt/response text is appended
            to its prompt).
        source_layers: layers to fit (default: every layer below the last, which
            [`language_lens()`][tl_multilingual.stages.lens.language_lens] needs).
        max_length: texts are cut to this many tokens (TransformerLens's ``max_seq_len``).
        skip_first_positions: leading positions left out of each text's average
            (attention sinks; TransformerLens's default 16).
        dim_batch: output dimensions per backward pass (memory against speed).
        progress: show TransformerLens's progress bar.

    Returns:
        A TransformerLens ``JacobianLens``.

    Raises:
        CorpusError: not a [`Corpus`][tl_multilingual.inputs.corpus.Corpus], or a language
            whose texts are all too short.
        UnsupportedModelError: the installed TransformerLens has no Jacobian lens (3.9 or
            later has it), or TransformerLens refuses the model (a legacy
            ``HookedTransformer``, compatibility mode, processed weights, an encoder).
    """
    lm = adapt(model)
    cls = jacobian_lens_class()
    if not isinstance(corpus, Corpus):
        raise CorpusError(
            f"fit_jacobian_lens needs a Corpus, got {type(corpus).__name__}: build one with "
            "tl_multilingual.Corpus.from_dict({language: [texts]})"
        )
    # TransformerLens needs a position after the skipped ones and before the last.
    need = skip_first_positions + 2
    texts, used = [], {}
    for lang in corpus.languages:
        strings = [_fit_text(t) for t in corpus[lang]]
        lengths = [min(len(ids), max_length) for ids in lm.tokenize(strings)] if strings else []
        kept = [text for text, n in zip(strings, lengths) if n >= need]
        if not kept:
            raise CorpusError(
                f"no text of {lang!r} has the {need} tokens the Jacobian lens fit needs "
                f"(skip_first_positions={skip_first_positions}, max_length={max_length}): "
                "give it longer texts or lower skip_first_positions"
            )
        if len(kept) < len(strings):
            warn(
                f"{len(strings) - len(kept)} of {len(strings)} texts of {lang!r} are shorter "
                f"than {need} tokens and were left out of the Jacobian lens fit"
            )
        texts += kept
        used[lang] = len(kept)
    fingerprint = corpus.fingerprint()
    metadata = {_META: {"languages": list(used), "texts": used, "corpus_fingerprint": fingerprint}}
    name = f"tl_multilingual corpus {fingerprint[:16]} ({', '.join(used)})"
    mine = distributed.shard(len(texts), [len(t) for t in texts])

    def fit_share() -> Any:
        if not mine:
            return None
        try:
            return cls.fit(
                lm.model,
                [texts[i] for i in mine],
                corpus=name,
                source_layers=source_layers,
                dim_batch=dim_batch,
                max_seq_len=max_length,
                skip_first_positions=skip_first_positions,
                show_progress=distributed.show_progress(progress),
                metadata=metadata,
            )
        except (TypeError, ValueError) as err:
            raise _tl_refusal(err, lm, "to fit a Jacobian lens") from err

    if not distributed.active():
        return fit_share()
    rank, world = distributed.rank(), distributed.world_size()
    shares = distributed.gather_in_order([fit_share()], [rank], world)
    return cls.merge([share for share in shares if share is not None])
