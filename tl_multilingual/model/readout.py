"""The model's output head and the reads of its residual stream, in one place.

Everything that turns a residual-stream vector into logits, or reads a weight
matrix of the model, lives here (hook names live on [`ModelAdapter`][tl_multilingual.model.adapters.ModelAdapter]).
The rest of the library asks this module for:

- [`head()`][tl_multilingual.model.readout.head]: residual stream -> logits through the model's own final norm,
  unembedding and final-logit transform (Gemma-2/3 soft-capping, Cohere's
  ``logit_scale``, Granite's ``logits_scaling``, Falcon-H1's ``lm_head_multiplier``);
- [`last_logits()`][tl_multilingual.model.readout.last_logits]: the logits at each row's last real position;
- [`layer_logprobs()`][tl_multilingual.model.readout.layer_logprobs]: the logit lens (Wendler et al., 2024): every layer's
  residual stream at the last position read through [`head()`][tl_multilingual.model.readout.head],
  or first carried to the last layer by a transport such as TransformerLens's Jacobian lens;
- [`jacobian_lens_class()`][tl_multilingual.model.readout.jacobian_lens_class]: TransformerLens's
  ``JacobianLens``, or the library's refusal naming the TransformerLens release that ships it;
- [`sequence_nll()`][tl_multilingual.model.readout.sequence_nll]: summed negative log-likelihood of the counted positions of
  tokenised sequences, for perplexity and log-likelihood scoring ([`sequence_scores()`][tl_multilingual.model.readout.sequence_scores]
  also says whether greedy decoding would produce them);
- [`output_weights()`][tl_multilingual.model.readout.output_weights], [`unembedding()`][tl_multilingual.model.readout.unembedding], [`centred_writes()`][tl_multilingual.model.readout.centred_writes]: the weights
  that direct logit attribution (Wang et al., 2024) multiplies.

**The readout invariant.** Read at the last layer, [`head()`][tl_multilingual.model.readout.head] gives exactly the
model's own final logits. This is checked, not assumed: the first time a model's head
is built, a two-token forward pass compares [`head()`][tl_multilingual.model.readout.head] on the final residual stream
with the model's own logits, and a model whose head the library cannot reproduce is
refused with [`UnsupportedModelError`][tl_multilingual.errors.UnsupportedModelError] before any number is returned.
Statistics collection never needs the head, so such a model can still be studied
there.

The head is applied to the rows that need it only (last positions, counted
positions), in chunks, so a full ``[batch, pos, vocab]`` tensor is never built; scoring
also splits the vocabulary ([`VOCAB_CHUNK`][tl_multilingual.model.readout.VOCAB_CHUNK]),
so its peak memory does not grow with the vocabulary.

**Half precision.** ``compute_dtype`` runs the matrix multiplications of the model body
in bfloat16 or float16, and ``head_dtype`` those of the unembedding. Both use copies of
the weights cast once per call and dropped after it (the model's own weights are never
changed); on a GPU the body runs under ``torch.autocast`` instead. A CPU without native
half-precision arithmetic (oneDNN reports none: no AVX512-BF16 or AMX) emulates it,
which is several times slower than float32: the library says so with a warning.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from ..errors import TLMultilingualError, UnsupportedModelError, warn

if TYPE_CHECKING:
    from .adapters import Batch, ModelAdapter
    from .tokens import Encoded

__all__ = [
    "head",
    "last_logits",
    "layer_logprobs",
    "Transport",
    "jacobian_lens_class",
    "sequence_nll",
    "sequence_scores",
    "HEAD_ROWS",
    "VOCAB_CHUNK",
    "HALF_DTYPES",
    "output_weights",
    "unembedding",
    "centred_writes",
]

HEAD_ROWS = 256
"""Positions sent through the output head at once."""

VOCAB_CHUNK = 32768
"""Vocabulary entries whose logits scoring computes at once: with
[`HEAD_ROWS`][tl_multilingual.model.readout.HEAD_ROWS] rows, at most 32 MiB of float32
logits whatever the vocabulary (a 262k vocabulary would take 256 MiB in one piece)."""

HALF_DTYPES = (torch.bfloat16, torch.float16)
"""The dtypes accepted by ``compute_dtype`` and ``head_dtype``."""

Head = Callable[[Tensor], Tensor]
Transport = Callable[[Tensor, int], Tensor]
"""``transport(resid [rows, d_model], layer) -> [rows, d_model]``: carries a layer's residual
stream into the basis of the last layer's before the output head reads it."""

JACOBIAN_LENS_SINCE = "3.9"
"""The oldest TransformerLens release known to ship ``tools.analysis.JacobianLens``
(3.9 and 4.3 both have it)."""


def _hf_config(model: Any) -> Any:
    return getattr(getattr(model, "original_model", None), "config", None)


def _config_transform(model: Any) -> Callable[[Tensor], Tensor]:
    """Final-logit transform read from the configuration, for models whose
    TransformerLens wrapper does not declare one (TransformerLens 3.x)."""
    hf = _hf_config(model)
    sources = [s for s in (hf, getattr(model, "cfg", None)) if s is not None]

    def first(*names: str) -> float | None:
        for source in sources:
            for name in names:
                value = getattr(source, name, None)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    return float(value)
        return None

    cap = first("final_logit_softcapping", "output_logits_soft_cap")
    cap = cap if cap is not None and cap > 0 else None
    architecture = type(getattr(model, "original_model", None)).__name__
    scale = first("logit_scale") if architecture.startswith("Cohere") else None
    divide = first("logits_scaling")
    multiply = first("lm_head_multiplier")

    def transform(logits: Tensor) -> Tensor:
        if scale is not None:
            logits = logits * scale
        if divide is not None:
            logits = logits / divide
        if multiply is not None:
            logits = logits * multiply
        if cap is not None:
            logits = cap * torch.tanh(logits / cap)
        return logits

    return transform


def _final_transform(model: Any) -> Callable[[Tensor], Tensor]:
    """The final-logit transform: the one TransformerLens declares for the
    architecture when it does (TransformerLens 4.x bridges), else read from the
    configuration."""
    declared = getattr(getattr(model, "adapter", None), "apply_output_logits_transform", None)
    return declared if callable(declared) else _config_transform(model)


def _build_head(lm: ModelAdapter) -> Head:
    model = lm.model
    transform = _final_transform(model)

    def apply(resid: Float[Tensor, "rows d_model"]) -> Float[Tensor, "rows vocab"]:
        logits = model.unembed(model.ln_final(resid[:, None, :]))[:, 0]
        return transform(logits)

    return apply


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


def _verify(lm: ModelAdapter, apply: Head) -> None:
    """Check the readout invariant on a two-token probe (see the module docstring)."""
    token = lm.bos_token_id if lm.bos_token_id is not None else lm.pad_token_id
    batch = lm.pad([[token, token]])
    final: dict[str, Tensor] = {}

    def keep(tensor: Tensor, hook: Any) -> None:
        final["resid"] = tensor[0]

    own = lm.forward(batch, fwd_hooks=[(lm.final_hook, keep)], logits=True)
    if own is None or "resid" not in final:
        raise UnsupportedModelError(f"{lm.name}: the final residual stream hook {lm.final_hook} never fired")
    with torch.no_grad():
        ours = apply(final["resid"]).float()
    own = own[0].float()
    if ours.shape != own.shape:
        raise UnsupportedModelError(
            f"{lm.name}: the output head gives {tuple(ours.shape)} logits where the model gives "
            f"{tuple(own.shape)}; its output head cannot be reproduced"
        )
    gap = float((ours - own).abs().max())
    scale = float(own.abs().max()) + 1.0
    if not gap <= _tolerance(lm.dtype) * scale:
        raise UnsupportedModelError(
            f"{lm.name} ({lm.architecture}): the library's readout (final norm, unembedding, "
            f"final-logit transform) differs from the model's own logits by up to {gap:.3g}; "
            "this family's output head is not supported, so lens readings, perplexity and "
            "answer scores would be wrong"
        )


_HEADS: dict[int, Head] = {}  # the checked head of each live adapter, by identity


def head(lm: ModelAdapter) -> Head:
    """The model's output head: ``resid [rows, d_model] -> logits [rows, d_vocab]``.

    Final norm, unembedding and the family's final-logit transform, checked once per
    adapter against the model's own logits (the readout invariant).

    Args:
        lm: the model's adapter.

    Returns:
        A function of residual-stream rows giving logits in the model's dtype.

    Raises:
        UnsupportedModelError: the model's own logits differ from the library's
            readout (a family whose head the library cannot reproduce).
    """
    built = _HEADS.get(id(lm))
    if built is None:
        built = _build_head(lm)
        _verify(lm, built)
        _HEADS[id(lm)] = built
        weakref.finalize(lm, _HEADS.pop, id(lm), None)  # forgotten with its adapter
    return built


def last_logits(lm: ModelAdapter, batch: Batch, fwd_hooks: Sequence = ()) -> Float[Tensor, "batch vocab"]:
    """The model's logits at each row's last real position, computing the output head
    for those positions only.

    Args:
        lm: the model's adapter.
        batch: a padded batch (either padding side).
        fwd_hooks: extra hooks (interventions) for the pass.

    Returns:
        Logits ``[batch, d_vocab]``.
    """
    apply = head(lm)
    last = batch.last
    rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)
    final: dict[str, Tensor] = {}

    def store(tensor: Tensor, hook: Any) -> None:
        final["resid"] = tensor[rows.to(tensor.device), last.to(tensor.device)]

    lm.forward(batch, fwd_hooks=[*fwd_hooks, (lm.final_hook, store)], logits=False, stop_at=lm.final_hook)
    with torch.no_grad():
        return apply(final["resid"])


def layer_logprobs(
    lm: ModelAdapter, batch: Batch, fwd_hooks: Sequence = (), transport: Transport | None = None
) -> Float[Tensor, "batch layer vocab"]:
    """Log-probabilities of the next token read at every layer's last real position
    (the logit lens, Wendler et al., 2024).

    The forward pass stops after the last block: only the ``n_layers`` residual vectors
    per row go through the output head. The last layer equals the model's own
    next-token distribution (the readout invariant).

    Args:
        lm: the model's adapter.
        batch: a padded batch (either padding side).
        fwd_hooks: extra hooks (interventions, patches) for the pass.
        transport: applied to every layer but the last before the head (the last layer
            is read as it is): e.g. TransformerLens's Jacobian lens (Gurnee et al., 2026),
            whose ``J[layer] @ resid`` carries a layer's residual stream into the last
            layer's basis. Its output is cast back to the residual stream's dtype.
            None: the logit lens.

    Returns:
        Float32 log-probabilities ``[batch, n_layers, d_vocab]``.
    """
    apply = head(lm)
    last = batch.last
    rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)
    resid: dict[int, Tensor] = {}

    def keep(layer: int) -> Callable[..., None]:
        def store(tensor: Tensor, hook: Any) -> None:
            resid[layer] = tensor[rows.to(tensor.device), last.to(tensor.device)].detach()

        return store

    hooks = list(fwd_hooks) + [(lm.resid_hook(layer), keep(layer)) for layer in range(lm.n_layers)]
    lm.forward(batch, fwd_hooks=hooks, logits=False, stop_at=lm.final_hook)
    device = resid[lm.n_layers - 1].device
    with torch.no_grad():
        if transport is not None:
            for layer in range(lm.n_layers - 1):
                resid[layer] = transport(resid[layer], layer).to(resid[layer].dtype)
        rows_by_layer = torch.stack([resid[layer].to(device) for layer in range(lm.n_layers)])
        logits = apply(rearrange(rows_by_layer, "layer batch d_model -> (batch layer) d_model")).float()
    return rearrange(torch.log_softmax(logits, -1), "(batch layer) vocab -> batch layer vocab", layer=lm.n_layers)


def jacobian_lens_class() -> type:
    """TransformerLens's ``JacobianLens`` (``transformer_lens.tools.analysis``; Gurnee et
    al., 2026): fitting, loading and the per-layer transport the Jacobian lens is made of.

    Returns:
        The class.

    Raises:
        UnsupportedModelError: the installed TransformerLens does not ship it (the
            message names the release that does, and the installed one).
    """
    try:
        from transformer_lens.tools.analysis import JacobianLens
    except ImportError as err:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("transformer-lens")
        except PackageNotFoundError:  # pragma: no cover - installed from source
            installed = "unknown"
        raise UnsupportedModelError(
            f"the Jacobian lens needs TransformerLens {JACOBIAN_LENS_SINCE} or later "
            "(transformer_lens.tools.analysis.JacobianLens); the installed transformer-lens "
            f"{installed} does not ship it: pip install -U "
            f"'transformer-lens>={JACOBIAN_LENS_SINCE}', or use the logit lens"
        ) from err
    return JacobianLens


@dataclass(frozen=True)
class _Pieces:
    """The output head taken apart for scoring: final norm, unembedding rows
    ``weight [d_vocab, d_model]`` and bias, final-logit transform."""

    norm: Callable[[Tensor], Tensor]
    weight: Tensor
    bias: Tensor | None
    transform: Callable[[Tensor], Tensor]

    def cast(self, dtype: torch.dtype | None) -> _Pieces:
        """These pieces with the unembedding cast once to ``dtype`` (None: as they are)."""
        if dtype is None or dtype == self.weight.dtype:
            return self
        bias = None if self.bias is None else self.bias.to(dtype)
        return _Pieces(self.norm, self.weight.to(dtype), bias, self.transform)


def _pieces_of(lm: ModelAdapter) -> _Pieces:
    """The head's pieces, read afresh (a weight replaced since the last call is seen)."""
    model = lm.model
    weight = model.W_U.detach().T  # a view of the unembedding's own [d_vocab, d_model] rows
    bias = getattr(model, "b_U", None)
    bias = None if bias is None else bias.detach()

    def norm(resid: Tensor) -> Tensor:
        return model.ln_final(resid[:, None, :])[:, 0]

    return _Pieces(norm, weight, bias, _final_transform(model))


_PIECES_CHECKED: dict[int, bool] = {}  # per live adapter: whether the pieces reproduce head()


def _chunkable(lm: ModelAdapter, apply: Head) -> bool:
    """Whether final norm, ``W_U``, ``b_U`` and the transform taken apart reproduce
    [`head()`][tl_multilingual.model.readout.head] (checked once per adapter on random rows); when
    they do not, scoring uses the whole head, a row chunk at a time."""
    known = _PIECES_CHECKED.get(id(lm))
    if known is None:
        generator = torch.Generator().manual_seed(0)
        rows = torch.randn(4, lm.model.cfg.d_model, generator=generator).to(lm.device, lm.dtype)
        with torch.no_grad():
            whole = apply(rows).float()
            try:
                pieces = _pieces_of(lm)
                unembedded = F.linear(pieces.norm(rows), pieces.weight, pieces.bias)
                parts = pieces.transform(unembedded).float()
                same = parts.shape == whole.shape
                gap = float((parts - whole).abs().max()) if same else float("inf")
            except (AttributeError, RuntimeError, TypeError):
                gap = float("inf")
        known = gap <= _tolerance(lm.dtype) * (float(whole.abs().max()) + 1.0)
        _PIECES_CHECKED[id(lm)] = known
        weakref.finalize(lm, _PIECES_CHECKED.pop, id(lm), None)
    return known


def _head_nll(
    apply: Head | _Pieces, resid: Tensor, gold: Tensor, *, greedy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """``-log softmax(head(resid))[gold]`` row by row, in chunks of
    [`HEAD_ROWS`][tl_multilingual.model.readout.HEAD_ROWS] rows, and with ``greedy`` whether
    ``gold`` is each row's most probable token (ties to the lowest token id).

    Given the head's pieces, the vocabulary is also taken
    [`VOCAB_CHUNK`][tl_multilingual.model.readout.VOCAB_CHUNK] entries at a time: the
    log-sum-exp of the chunks' log-sum-exps, equal to the whole one up to float32
    rounding. The final norm runs in the residual stream's dtype, the unembedding in the
    dtype of the pieces' weight (its input is cast to it), the final-logit transform in
    the residual stream's dtype and the loss in float32.
    """
    parts, hits = [], []
    for rows, target in zip(resid.split(HEAD_ROWS), gold.split(HEAD_ROWS)):
        with torch.no_grad():
            if isinstance(apply, _Pieces):
                nll, hit = _chunked_nll(apply, rows, target, greedy)
            else:
                logits = apply(rows).float()
                nll = torch.logsumexp(logits, -1) - logits.gather(-1, target[:, None]).squeeze(-1)
                hit = logits.argmax(-1) == target if greedy else None
        parts.append(nll)
        if greedy:
            hits.append(hit)
    if not parts:
        empty = resid.new_zeros(0, dtype=torch.float32)
        return empty, (empty.bool() if greedy else None)
    return torch.cat(parts), (torch.cat(hits) if greedy else None)


def _chunked_nll(
    pieces: _Pieces, rows: Tensor, target: Tensor, greedy: bool
) -> tuple[Tensor, Tensor | None]:
    normed = pieces.norm(rows)
    x = normed.to(pieces.weight.dtype)
    vocab = pieces.weight.shape[0]
    lse = gold = best = best_id = None
    for lo in range(0, vocab, VOCAB_CHUNK):
        hi = min(lo + VOCAB_CHUNK, vocab)
        bias = None if pieces.bias is None else pieces.bias[lo:hi]
        logits = pieces.transform(F.linear(x, pieces.weight[lo:hi], bias).to(normed.dtype)).float()
        chunk = torch.logsumexp(logits, -1)
        lse = chunk if lse is None else torch.logaddexp(lse, chunk)
        inside = (target >= lo) & (target < hi)
        at = logits.gather(-1, (target - lo).clamp(0, hi - lo - 1)[:, None]).squeeze(-1)
        gold = torch.where(inside, at, at.new_zeros(()) if gold is None else gold)
        if greedy:
            index = logits.argmax(-1)
            top = logits.gather(-1, index[:, None]).squeeze(-1)
            if best is None:
                best, best_id = top, index
            else:  # strictly greater: a tie keeps the earlier, lower token id
                better = top > best
                best = torch.where(better, top, best)
                best_id = torch.where(better, index + lo, best_id)
    assert lse is not None and gold is not None
    return lse - gold, (best_id == target if greedy else None)


def sequence_nll(
    lm: ModelAdapter, sequences: Sequence[Encoded], batch_size: int, *,
    compute_dtype: torch.dtype | None = None, head_dtype: torch.dtype | None = None,
) -> tuple[list[float], list[int]]:
    """Summed negative log-likelihood (nats) and count of the counted positions of each
    sequence: [`sequence_scores()`][tl_multilingual.model.readout.sequence_scores] without the greedy check.
    """
    sums, counts, _ = _scores(lm, sequences, batch_size, compute_dtype=compute_dtype,
                              head_dtype=head_dtype, greedy=False)
    return sums, counts


def sequence_scores(
    lm: ModelAdapter, sequences: Sequence[Encoded], batch_size: int, *,
    compute_dtype: torch.dtype | None = None, head_dtype: torch.dtype | None = None,
) -> tuple[list[float], list[int], list[bool]]:
    """Summed negative log-likelihood (nats) and count of the counted positions of each
    sequence, and whether every counted token is the model's most probable next token
    (greedy decoding would produce the span: lm-evaluation-harness's ``is_greedy``).

    Position ``p`` of a sequence is scored by the model's prediction at ``p - 1``, so a
    sequence's first position is never scored, and padding never is. Only the
    positions that predict a counted token go through the final norm and the
    unembedding, [`HEAD_ROWS`][tl_multilingual.model.readout.HEAD_ROWS] positions by
    [`VOCAB_CHUNK`][tl_multilingual.model.readout.VOCAB_CHUNK] vocabulary entries at a
    time: the full ``[batch, pos, vocab]`` logits are never built, nor a row's whole
    vocabulary (the log-sum-exp of the chunks' log-sum-exps equals the whole one up to
    float32 rounding; a family whose head cannot be taken apart this way is scored
    with the whole [`head()`][tl_multilingual.model.readout.head]). Which positions
    those are is worked out on the host from the sequences, and the per-sequence sums
    stay on the device until one transfer at the end: nothing waits for the device
    per batch. Under ``torch.distributed`` each rank scores its share of the sequences
    and the values are gathered in input order ([`distributed`][tl_multilingual.distributed]).

    Args:
        lm: the model's adapter.
        sequences: encoded sequences with their counted span (see [`tokens`][tl_multilingual.model.tokens]).
        batch_size: sequences per forward pass.
        compute_dtype: ``torch.bfloat16`` or ``torch.float16``: the matrix
            multiplications of the model body in that dtype. On a CPU with weights
            cast once for the call (each linear layer's input is cast to the dtype and
            its output back, so the residual stream, the norms and attention stay in
            the model's dtype); elsewhere under ``torch.autocast``. The head and the
            loss stay in the model's dtype and float32. None: the model's dtype.
        head_dtype: ``torch.bfloat16`` or ``torch.float16``: the unembedding's matrix
            multiplication in that dtype, with its weights cast once for the call; the
            final norm, the final-logit transform and the loss stay in the model's
            dtype and float32. None: the model's dtype. See docs/scaling.md for the
            measured effect of both on the mean NLL and on speed.

    Returns:
        ``(sums, counts, greedy)``: per sequence, in input order, the summed NLL in nats
        (float64 accumulation), the number of scored tokens, and whether each scored
        token is the argmax of its prediction (ties go to the lowest token id, as
        ``torch.argmax`` breaks them).

    Raises:
        TLMultilingualError: ``compute_dtype`` or ``head_dtype`` is not one of
            [`HALF_DTYPES`][tl_multilingual.model.readout.HALF_DTYPES].
        UnsupportedModelError: ``compute_dtype`` on a CPU for a model with no linear
            layer to cast (a HookedTransformer, whose weights enter ``einsum``).
    """
    return _scores(lm, sequences, batch_size, compute_dtype=compute_dtype, head_dtype=head_dtype,
                   greedy=True)


def _scores(
    lm: ModelAdapter, sequences: Sequence[Encoded], batch_size: int, *, compute_dtype: torch.dtype | None,
    greedy: bool, head_dtype: torch.dtype | None = None,
) -> tuple[list[float], list[int], list[bool]]:
    from .. import distributed
    from .tokens import batches

    _check_half(lm, compute_dtype, "compute_dtype")
    _check_half(lm, head_dtype, "head_dtype")
    apply: Head | _Pieces = head(lm)
    if _chunkable(lm, apply):
        apply = _pieces_of(lm).cast(head_dtype)  # cast once for the whole call
    elif head_dtype is not None:
        raise UnsupportedModelError(
            f"{lm.name}: head_dtype needs the output head as final norm, W_U and b_U, which do "
            "not reproduce this model's logits; leave head_dtype=None"
        )
    mine = distributed.shard(len(sequences), [len(s.ids) for s in sequences])
    local = [sequences[i] for i in mine]
    sums = torch.zeros(len(local), dtype=torch.float64)
    counts = torch.zeros(len(local), dtype=torch.long)
    missed = torch.zeros(len(local), dtype=torch.long)  # counted tokens that are not the argmax
    parts: list[tuple[list[int], Tensor, Tensor | None]] = []
    resid: dict[str, Tensor] = {}

    def keep(tensor: Tensor, hook: Any) -> None:
        resid["final"] = tensor

    with _half_body(lm, compute_dtype) as body:
        for indices, batch in batches(lm, local, batch_size):
            with body():
                lm.forward(batch, fwd_hooks=[(lm.final_hook, keep)], logits=False,
                           stop_at=lm.final_hook)
            final = resid.pop("final")
            if compute_dtype is not None:
                final = final.to(lm.dtype)
            where, owner = _predicting_positions([local[i] for i in indices], batch)
            ids = batch.input_ids.reshape(-1)
            after = (where + 1).to(ids.device, non_blocking=True)
            gold = ids.index_select(0, after).to(final.device)
            picked = final.reshape(-1, final.shape[-1]).index_select(
                0, where.to(final.device, non_blocking=True))
            nll, hits = _head_nll(apply, picked, gold, greedy=greedy)
            rows = owner.to(nll.device, non_blocking=True)
            per_row = torch.zeros(len(indices), dtype=torch.float64, device=nll.device)
            per_row.index_add_(0, rows, nll.double())
            misses = None
            if hits is not None:
                misses = torch.zeros(len(indices), dtype=torch.long, device=nll.device)
                misses.index_add_(0, rows, (~hits).long())
            parts.append((indices, per_row, misses))
            counts[indices] = torch.bincount(owner, minlength=len(indices))
    if parts:  # one device-to-host transfer
        index = torch.as_tensor([i for indices, _, _ in parts for i in indices])
        device = parts[0][1].device
        sums[index] = torch.cat([values.to(device) for _, values, _ in parts]).cpu()
        if greedy:
            missed[index] = torch.cat([m.to(device) for _, _, m in parts if m is not None]).cpu()
    sums = distributed.gather_rows(sums, mine, len(sequences))
    counts = distributed.gather_rows(counts, mine, len(sequences))
    if greedy:
        missed = distributed.gather_rows(missed, mine, len(sequences))
    return sums.tolist(), counts.tolist(), (missed == 0).tolist()


def _predicting_positions(sequences: Sequence[Encoded], batch: Batch) -> tuple[Tensor, Tensor]:
    """Flat indices (into ``[batch * pos]``) of the positions that predict a counted
    token (the token at ``p`` is predicted from ``p - 1``, padded position 0 predicts
    nothing), and the row of each: from the sequences alone, on the host."""
    width = batch.input_ids.shape[1]
    where, owner = [], []
    for row, seq in enumerate(sequences):
        shift = width - len(seq.ids) if batch.padding_side == "left" else 0
        lo = max(seq.start + shift, 1)
        hi = seq.start + shift + seq.n_counted
        if hi > lo:
            where.append(torch.arange(row * width + lo - 1, row * width + hi - 1))
            owner.append(torch.full((hi - lo,), row, dtype=torch.long))
    if not where:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(where), torch.cat(owner)


def _native_half(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies ``dtype`` matrices natively (oneDNN's own check)."""
    check = {torch.bfloat16: "_is_mkldnn_bf16_supported",
             torch.float16: "_is_mkldnn_fp16_supported"}[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch without oneDNN
        return False


_SLOW_WARNED: set[torch.dtype] = set()


def _check_half(lm: ModelAdapter, dtype: torch.dtype | None, name: str) -> None:
    """Refuse a ``dtype`` other than the half-precision ones, and say once per dtype when
    this CPU would emulate it (slower than float32, not faster)."""
    if dtype is None:
        return
    if dtype not in HALF_DTYPES:
        raise TLMultilingualError(
            f"{name} must be torch.bfloat16, torch.float16 or None, got {dtype!r:.40}")
    if lm.device.type == "cpu" and not _native_half(dtype) and dtype not in _SLOW_WARNED:
        _SLOW_WARNED.add(dtype)
        warn(f"this CPU has no native {dtype} matrix multiplication (no AVX512-BF16/FP16 or AMX): "
             f"{name}={dtype} is emulated and runs several times slower than float32 here "
             "(see docs/scaling.md); it changes the precision, not the speed, on this machine")


def _linear_layers(lm: ModelAdapter) -> list[torch.nn.Module]:
    """The model's linear layers (``nn.Linear`` and Hugging Face's ``Conv1D``) that run
    through their own ``forward``, without the unembedding (the head has its own cast)."""
    head_weight = lm.model.W_U.detach().T.data_ptr()
    found: dict[int, torch.nn.Module] = {}
    roots = [lm.model, getattr(lm.model, "original_model", None)]
    for root in (r for r in roots if isinstance(r, torch.nn.Module)):
        for module in root.modules():
            linear = type(module) is torch.nn.Linear or type(module).__name__ == "Conv1D"
            weight = getattr(module, "weight", None)
            if (linear and isinstance(weight, Tensor) and weight.is_floating_point()
                    and "forward" not in vars(module) and weight.data_ptr() != head_weight):
                found[id(module)] = module
    return list(found.values())


def _cast_forward(module: torch.nn.Module, dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    """``module``'s linear map with its weights cast to ``dtype`` now, once: each call
    casts its input to ``dtype`` and its output back to the input's dtype."""
    weight = module.weight.detach()
    bias = module.bias.detach().to(dtype) if module.bias is not None else None
    weight = (weight.T if type(module) is not torch.nn.Linear else weight).contiguous().to(dtype)

    def forward(x: Tensor) -> Tensor:
        return F.linear(x.to(dtype), weight, bias).to(x.dtype)

    return forward


@contextlib.contextmanager
def _half_body(lm: ModelAdapter, dtype: torch.dtype | None) -> Iterator[Callable[[], Any]]:
    """The body's matrix multiplications in ``dtype`` for the block: yields the context
    to enter around each forward pass.

    On a CPU every linear layer gets, for the block only, a ``forward`` with its weights
    cast once (an instance attribute shadowing the class's, deleted on exit, also when
    the block raises: no weight of the model is changed and no hook is attached).
    ``torch.autocast`` on a CPU would cast every weight again on every call. On other
    devices the passes run under ``torch.autocast``, the fast path of bf16 tensor cores.
    """
    if dtype is None:
        yield contextlib.nullcontext
        return
    if lm.device.type != "cpu":
        yield lambda: torch.autocast(device_type=lm.device.type, dtype=dtype)
        return
    layers = _linear_layers(lm)
    if not layers:
        raise UnsupportedModelError(
            f"{lm.name}: compute_dtype on a CPU casts the weights of the model's linear layers "
            "once, and this model has none (a HookedTransformer's weights enter einsum, which "
            "autocast would re-cast on every call, slower than float32); load the model in "
            f"{dtype} instead, or leave compute_dtype=None"
        )
    with torch.no_grad():
        forwards = [_cast_forward(module, dtype) for module in layers]
    try:
        for module, forward in zip(layers, forwards):
            module.forward = forward
        yield contextlib.nullcontext
    finally:
        for module in layers:
            vars(module).pop("forward", None)


def output_weights(lm: ModelAdapter, layer: int) -> Float[Tensor, "d_mlp d_model"]:
    """``W_out`` of ``layer``: row ``j`` is what neuron ``j`` writes into the residual
    stream per unit of its write-hook value (detached)."""
    return lm.model.blocks[layer].mlp.W_out.detach()


def unembedding(lm: ModelAdapter) -> Float[Tensor, "d_model d_vocab"]:
    """The unembedding matrix ``W_U`` (detached; without the final-logit transform)."""
    return lm.model.W_U.detach()


def centred_writes(lm: ModelAdapter) -> bool:
    """Whether the final norm is a LayerNorm, which removes the mean of what each
    neuron writes (RMSNorm does not)."""
    return str(getattr(lm.model.cfg, "normalization_type", "")).startswith("LN")
