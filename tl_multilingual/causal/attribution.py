"""Neuron attribution (Wang et al., 2024): which neurons drive the answer, and their classes.

With ``m`` a neuron's write-hook value at the last prompt position (``hook_post``:
``act_fn(gate) * up`` for gated MLPs), ``W_out[l][j]`` its output row and ``u_t`` the
unembedding column of the gold answer's first token:

- ``"contribution"``: ``|m| * ||W_out[l][j]||`` (Wang et al.'s (2024) contribution score);
- ``"effective"``: ``m * (W_out[l][j] . u_t)``, the neuron's direct logit attribution.
  With ``through_norm=True`` the final norm's linear part is applied as
  TransformerLens's direct logit attribution does: the row is centred for LayerNorm
  models and divided by the final norm's scale at that position (the norm's weight
  is not applied, as in TransformerLens without weight processing);
- ``"grad_x_act"``: ``m * d metric / d m`` for any scalar metric of the last
  position's logits (default: the log-probability of the answer's first token).

Raw (unprocessed) weights are used. TransformerLens's weight processing would change
the effective score: ``fold_ln`` multiplies ``u_t`` by the final norm's weight, and
``center_writing_weights`` centres ``W_out`` rows (LayerNorm models); contributions
change only through the centring.

The gold token is the answer's first token *in context*: ``prompt + answer`` is
tokenised as one text and the answer's tokens are those after the prompt's (see
[`tokens`][tl_multilingual.model.tokens]); give the answer a leading space where one separates it from the
prompt. Gradients (``"grad_x_act"``) are taken outside ``torch.inference_mode``, so
the method also runs inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed
from ..errors import TLMultilingualError
from ..inputs.items import ParallelItems
from ..model.adapters import ModelAdapter, adapt
from ..model.readout import centred_writes, output_weights, unembedding
from ..model.tokens import Overflow, check_overflow, fit, in_context
from ..neurons.sharing_classes import SHARING_CLASSES, Sharing

__all__ = ["attribute", "Attribution", "class_attribution", "answer_token"]

Method = Literal["effective", "contribution", "grad_x_act"]
Metric = Callable[[Tensor, Tensor], Tensor]


def answer_token(lm: ModelAdapter, prompt: str, answer: str) -> int:
    """The first token of ``answer`` after ``prompt``, tokenised in context (see
    `tl_multilingual.model.tokens.in_context()`)."""
    return _gold(lm, [prompt], [answer])[1][0]


def _gold(lm: ModelAdapter, prompts: list[str], answers: list[str]) -> tuple[list[list[int]], list[int]]:
    """The prompts as the model reads them before their answers, and each answer's
    first token."""
    contexts, golds = [], []
    for answer, (ids, start) in zip(answers, in_context(lm, prompts, answers)):
        if start >= len(ids):
            raise TLMultilingualError(f"the answer {answer!r} adds no token after its prompt")
        contexts.append(ids[:start])
        golds.append(ids[start])
    return contexts, golds


def logprob_metric(logits: Tensor, gold: Tensor) -> Tensor:
    """Log-probability of the gold token, per row."""
    return torch.log_softmax(logits.float(), -1).gather(-1, gold[:, None]).squeeze(-1)


@dataclass
class Attribution:
    """Scores per item, language, layer and neuron.

    Attributes:
        method: ``"effective"``, ``"contribution"`` or ``"grad_x_act"``.
        languages, item_ids: the axes.
        scores: ``[n_items, n_languages, n_layers, d_mlp]``.
    """

    method: str
    languages: tuple[str, ...]
    item_ids: list[str]
    scores: Float[Tensor, "item lang layer neuron"]

    def top(self, k: int) -> Tensor:
        """Indices of the ``k`` highest-scoring neurons per item, language and layer."""
        return self.scores.topk(min(k, self.scores.shape[-1]), dim=-1).indices

    def to_frame(self, top_k: int | None = None) -> pd.DataFrame:
        """One row per (item, language, layer, neuron) with its score (only the top
        ``top_k`` per layer when given)."""
        rows = []
        picks = self.top(top_k) if top_k else None
        for i, item in enumerate(self.item_ids):
            for p, lang in enumerate(self.languages):
                for layer in range(self.scores.shape[2]):
                    neurons = picks[i, p, layer] if picks is not None else torch.arange(self.scores.shape[3])
                    for j, score in zip(neurons.tolist(), self.scores[i, p, layer, neurons].tolist()):
                        rows.append((item, lang, layer, j, score))
        return pd.DataFrame(rows, columns=["item", "language", "layer", "neuron", "score"])


def _gold_tokens(lm: ModelAdapter, items: ParallelItems, language: str) -> tuple[list[list[int]], Tensor]:
    answers = []
    for item in items:
        answer = item.answer(language)
        if answer is None:
            raise TLMultilingualError(f"item {item.id} has no gold answer in {language!r}")
        answers.append(answer)
    contexts, golds = _gold(lm, items.texts(language), answers)
    return contexts, torch.tensor(golds, device=lm.device)


def attribute(
    model: Any,
    items: ParallelItems,
    method: Method = "effective",
    *,
    through_norm: bool = False,
    metric: Metric | None = None,
    batch_size: int = 8,
    progress: bool = True,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> Attribution:
    """Score every neuron of every item in every language (see the module docstring).

    Args:
        model: a model or [`ModelAdapter`][tl_multilingual.model.adapters.ModelAdapter].
        items: parallel items with gold answers (``effective`` and ``grad_x_act``).
        method: ``"effective"``, ``"contribution"`` or ``"grad_x_act"``.
        through_norm: effective scores through the final norm's scale.
        metric: for ``grad_x_act``, ``metric(logits [batch, vocab], gold [batch]) ->
            [batch]`` on the last position (default: log-probability of the gold token).
        max_length: longest prompt fed to the model (default: its context size).
        overflow: longer prompts lose their oldest tokens (``"truncate"``, with a
            warning) or are refused (``"error"``); see [`tl_multilingual.model.tokens`][tl_multilingual.model.tokens].

    Raises:
        GradientError: ``grad_x_act`` on a model whose weights are inference tensors.
    """
    lm = adapt(model)
    if method not in ("effective", "contribution", "grad_x_act"):
        raise TLMultilingualError(f"unknown attribution method {method!r}")
    check_overflow(overflow, split=False)
    w_out = [output_weights(lm, layer) for layer in range(lm.n_layers)]
    mine = distributed.shard(len(items))  # each rank scores its share of the items
    scores = torch.zeros(len(mine), len(items.languages), lm.n_layers, lm.d_mlp)
    show = distributed.show_progress(progress)
    for p, lang in enumerate(tqdm(items.languages, disable=not show, desc=f"attribution ({method})")):
        if method == "contribution":
            ids, gold = lm.tokenize(items.texts(lang)), None
        else:
            ids, gold = _gold_tokens(lm, items, lang)
        ids, _ = fit(lm, ids, max_length=max_length, overflow=overflow)
        for lo in range(0, len(mine), batch_size):
            picked = mine[lo : lo + batch_size]
            chunk = [ids[i] for i in picked]
            rows = slice(lo, lo + len(chunk))
            g = gold[torch.as_tensor(picked, device=gold.device)] if gold is not None else None
            if method == "grad_x_act":
                scores[rows, p] = _grad_x_act(lm, chunk, g, metric or logprob_metric)
            else:
                scores[rows, p] = _direct(lm, lm.pad(chunk), g, w_out, method, through_norm)
    scores = distributed.gather_rows(scores, mine, len(items))
    return Attribution(method, items.languages, [item.id for item in items], scores)


def _direct(lm: ModelAdapter, batch: Any, gold: Tensor | None, w_out: list[Tensor], method: str, through_norm: bool) -> Tensor:
    last = batch.last
    rows = torch.arange(len(last), device=last.device)
    acts: dict[int, Tensor] = {}
    scale: dict[str, Tensor] = {}

    def keep(layer: int):
        def store(tensor: Tensor, hook: Any) -> None:
            acts[layer] = tensor[rows, last].detach().float()

        return store

    def keep_scale(tensor: Tensor, hook: Any) -> None:
        scale["s"] = tensor[rows, last].detach().float()

    hooks = [(lm.write_hook(layer), keep(layer)) for layer in range(lm.n_layers)]
    need_scale = method == "effective" and through_norm
    if need_scale:
        hooks.append((lm.final_scale_hook, keep_scale))
    lm.forward(batch, fwd_hooks=hooks, logits=need_scale)
    out = []  # per layer, on that layer's device; one transfer at the end
    if method == "effective":
        unembed = unembedding(lm)
        directions = unembed[:, gold.to(unembed.device)].T.float()  # [batch, d_model]
    for layer in range(lm.n_layers):
        m = acts[layer]  # [batch, d_mlp]
        rows_w = w_out[layer].float().to(m.device)  # [d_mlp, d_model]
        if method == "contribution":
            out.append(m.abs() * rows_w.norm(dim=-1))
            continue
        if through_norm and centred_writes(lm):
            rows_w = rows_w - rows_w.mean(-1, keepdim=True)
        per_token = directions.to(m.device) @ rows_w.T  # [batch, d_mlp]: W_out[j] . u_t
        value = m * per_token
        if need_scale:
            value = value / scale["s"].reshape(-1, 1).to(m.device)
        out.append(value)
    device = out[-1].device
    return torch.stack([o.to(device) for o in out], dim=1).cpu()


def _grad_x_act(lm: ModelAdapter, ids: list[list[int]], gold: Tensor, metric: Metric) -> Tensor:
    with lm.gradients():  # also under torch.inference_mode: the batch and gold are made anew
        return _grad_x_act_batch(lm, lm.pad(ids), gold.clone(), metric)


def _grad_x_act_batch(lm: ModelAdapter, batch: Any, gold: Tensor, metric: Metric) -> Tensor:
    last = batch.last
    rows = torch.arange(len(last), device=last.device)
    acts: dict[int, Tensor] = {}
    probes: dict[int, Tensor] = {}

    def keep(layer: int):
        # Adding a zero that requires grad makes d metric / d probe = d metric / d value
        # along every path, whether or not the model's weights require grad.
        def store(tensor: Tensor, hook: Any) -> Tensor:
            acts[layer] = tensor.detach()
            probes[layer] = torch.zeros_like(tensor, requires_grad=True)
            return tensor + probes[layer]

        return store

    hooks = [(lm.write_hook(layer), keep(layer)) for layer in range(lm.n_layers)]
    with lm.hooks(hooks):
        logits = lm.call(batch)
        value = metric(logits[rows, last], gold).sum()
        grads = torch.autograd.grad(value, [probes[layer] for layer in range(lm.n_layers)])
    device = grads[-1].device
    out = [(g * acts[layer])[rows.to(g.device), last.to(g.device)].float().to(device) for layer, g in enumerate(grads)]
    return torch.stack(out, dim=1).cpu()


def class_attribution(sharing: Sharing, attribution: Attribution, *, top_k: int = 800) -> pd.DataFrame:
    """Which sharing classes the most attributed neurons belong to.

    For every item, language and layer the ``top_k`` highest-scoring neurons are
    classified with the item's sharing classes. Returns, per language, layer and class,
    the mean ``share`` of the top neurons in that class, the class's ``base`` share
    among all neurons, and ``enrichment = share / base``. Layer ``"all"`` pools layers.
    """
    if attribution.item_ids != sharing.item_ids or attribution.languages != sharing.languages:
        raise TLMultilingualError("the attribution and the sharing classes must cover the same items and languages")
    classes = sharing.classes().long()  # [item, layer, neuron]
    top = attribution.top(top_k)  # [item, lang, layer, k]
    k = top.shape[-1]
    picked = torch.gather(classes[:, None].expand(-1, top.shape[1], -1, -1), -1, top)  # [item, lang, layer, k]
    n_classes = len(SHARING_CLASSES)
    share = torch.nn.functional.one_hot(picked, n_classes).double().mean(-2)  # [item, lang, layer, class]
    base = torch.nn.functional.one_hot(classes, n_classes).double().mean(-2)  # [item, layer, class]
    rows = []
    for p, lang in enumerate(attribution.languages):
        for layer in [*range(classes.shape[1]), "all"]:
            sl = slice(None) if layer == "all" else layer
            s = share[:, p, sl].reshape(-1, n_classes).mean(0) if layer == "all" else share[:, p, sl].mean(0)
            b = base[:, sl].reshape(-1, n_classes).mean(0) if layer == "all" else base[:, sl].mean(0)
            for c, cls in enumerate(SHARING_CLASSES):
                rows.append((lang, layer, cls, float(s[c]), float(b[c]), float(s[c] / b[c]) if b[c] > 0 else float("nan")))
    frame = pd.DataFrame(rows, columns=["language", "layer", "class", "share", "base", "enrichment"])
    frame.attrs["top_k"] = k
    return frame
