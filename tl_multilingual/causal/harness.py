"""lm-evaluation-harness over the library's scoring, so any harness task runs with an
intervention active.

[`TLMEvalLM`][tl_multilingual.causal.harness.TLMEvalLM] is an ``lm_eval.api.model.LM`` (EleutherAI's
lm-evaluation-harness, Gao et al., 2024) whose three request types are answered by
the library's own functions, on the model the adapter wraps, with whatever hooks are
attached to it:

- ``loglikelihood``: ``(log-likelihood, is_greedy)`` from
  [`continuation_logprobs()`][tl_multilingual.causal.evaluate.continuation_logprobs], the
  scoring of `choice_accuracy()`;
- ``loglikelihood_rolling``: a whole text's log-likelihood from
  [`rolling_logprobs()`][tl_multilingual.causal.evaluate.rolling_logprobs], the sums
  `perplexity()` pools;
- ``generate_until``: greedy continuations cut at ``until``, from
  [`generate()`][tl_multilingual.causal.evaluate.generate].

So padding, the length policy (``max_length``, ``overflow``), batching and data
parallelism are the library's: under ``torchrun`` each rank scores its share of a
request list and every rank gets every answer (the harness itself sees one process,
so every rank computes the same metrics). A task's numbers are therefore the
library's scores of the same items::

    import lm_eval
    import tl_multilingual as tlm
    from tl_multilingual.causal.harness import TLMEvalLM

    lm = tlm.adapt(model)
    harness = TLMEvalLM(lm, batch_size=16)
    with tlm.ablate(lm, neurons.mask("specific", language="fr")):
        ablated = lm_eval.simple_evaluate(model=harness, tasks=["xnli_fr"], bootstrap_iters=0)
    baseline = lm_eval.simple_evaluate(model=harness, tasks=["xnli_fr"], bootstrap_iters=0)

Differences from the harness's Hugging Face backend, by design: a context too long for
the model loses its oldest tokens (the harness's ``HFLM`` does the same), a rolling
log-likelihood of a text longer than the context is summed over pieces that each
start with BOS (``overflow="split"``) rather than over the harness's overlapping
windows, and decoding is always greedy (a task that samples is refused).

Do not pass ``use_cache=`` to ``simple_evaluate`` across interventions: the harness's
response cache keys a request by its text only, so an answer cached without an edit
would be returned under one. The LM warns when it is wrapped in such a cache.

Needs the ``lmeval`` extra (``pip install "tl-multilingual[lmeval]"``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..errors import CorpusError, TLMultilingualError, warn
from ..model.adapters import ModelAdapter, adapt
from ..model.tokens import Overflow
from .evaluate import continuation_logprobs, generate, rolling_logprobs

__all__ = ["TLMEvalLM"]

try:  # the harness is an optional extra: the class exists without it, and says so when used
    from lm_eval.api.model import LM as _HarnessLM
except ImportError:  # pragma: no cover - exercised only without the extra
    _HarnessLM = object

_INSTALL = 'lm-evaluation-harness is not installed: pip install "tl-multilingual[lmeval]"'
_LENGTH_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


def _arguments(request: Any) -> tuple:
    """A harness ``Instance``'s arguments (or a plain tuple, for direct calls)."""
    args = getattr(request, "args", request)
    return tuple(args) if isinstance(args, (tuple, list)) else (args,)


class TLMEvalLM(_HarnessLM):  # type: ignore[misc, valid-type]
    """An lm-evaluation-harness language model answered by the library's scoring (see
    the module docstring).

    Args:
        model: a TransformerLens model or its
            [`ModelAdapter`][tl_multilingual.model.adapters.ModelAdapter]; interventions
            entered on it (``with tlm.ablate(lm, mask):``) apply to every request.
        batch_size: sequences per forward pass.
        max_length: the longest sequence fed to the model (default: its context).
        overflow: what a too long context does: ``"truncate"`` (its oldest tokens go,
            with a [`TruncationWarning`][tl_multilingual.errors.TruncationWarning]) or
            ``"error"``.
        rolling_overflow: the same for ``loglikelihood_rolling``: ``"split"``
            (default), ``"truncate"`` or ``"error"``.
        max_gen_toks: new tokens generated when a task does not say.

    Raises:
        TLMultilingualError: lm-evaluation-harness is not installed.
    """

    def __init__(
        self,
        model: Any,
        *,
        batch_size: int = 8,
        max_length: int | None = None,
        overflow: Overflow = "truncate",
        rolling_overflow: Overflow = "split",
        max_gen_toks: int = 256,
    ) -> None:
        if _HarnessLM is object:
            raise TLMultilingualError(_INSTALL)
        super().__init__()
        self.lm: ModelAdapter = adapt(model)
        self.batch_size = int(batch_size)
        self.max_length = max_length
        self.overflow = overflow
        self.rolling_overflow = rolling_overflow
        self.max_gen_toks = int(max_gen_toks)

    # -- what the harness asks of a model -------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer's name (the harness keys chat-templated request caches by it)."""
        return str(getattr(self.lm.tokenizer, "name_or_path", self.lm.name)).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The tokenizer's chat template (None when it has none)."""
        if chat_template is False or chat_template is None:
            return None
        if isinstance(chat_template, str):
            return chat_template
        return getattr(self.lm.tokenizer, "chat_template", None)

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """A conversation as the text the tokenizer's chat template makes of it.

        Raises:
            CorpusError: the tokenizer has no chat template.
        """
        if not getattr(self.lm.tokenizer, "chat_template", None):
            raise CorpusError(
                f"the tokenizer of {self.lm.name} has no chat template; run the task without "
                "apply_chat_template"
            )
        return self.lm.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def get_model_info(self) -> dict[str, Any]:
        """What the harness records of the model in its results' ``config``."""
        return {"model_name": self.lm.name, "tl_multilingual_model": self.lm.describe()}

    def set_cache_hook(self, cache_hook: Any) -> None:
        if getattr(cache_hook, "dbdict", None) is not None:
            warn(
                "lm-evaluation-harness caches responses by request text only: a response "
                "cached without an intervention is returned under one, and the other way "
                "round. Use no cache (use_cache=None) or a separate cache file for each "
                "intervention"
            )
        super().set_cache_hook(cache_hook)

    # -- the three request types ----------------------------------------------------------

    def loglikelihood(
        self, requests: Sequence[Any], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        """``(log-likelihood of the continuation given the context, is_greedy)`` per
        request ``(context, continuation)``.

        Raises:
            CorpusError: a continuation adds no token, or a request has an empty
                context on a model that reads no BOS token (nothing would predict the
                continuation's first token).
        """
        pairs = [(str(a[0]), str(a[1])) for a in map(_arguments, requests)]
        if not (self.lm.prepend_bos and self.lm.bos_token_id is not None):
            empty = [i for i, (context, _) in enumerate(pairs) if context == ""]
            if empty:
                raise CorpusError(
                    f"request {empty[0]} has an empty context, and {self.lm.name} reads no BOS "
                    "token, so nothing predicts the continuation's first token: adapt the model "
                    "with prepend_bos=True"
                )
        scored = continuation_logprobs(
            self.lm,
            pairs,
            batch_size=self.batch_size,
            max_length=self.max_length,
            overflow=self.overflow,
        )
        out = [(logprob, greedy) for logprob, _, greedy in scored]
        for args, answer in zip(pairs, out):
            self.cache_hook.add_partial("loglikelihood", args, answer)
        return out

    def loglikelihood_rolling(
        self, requests: Sequence[Any], disable_tqdm: bool = False
    ) -> list[float]:
        """The log-likelihood of each request's whole text (see
        [`rolling_logprobs()`][tl_multilingual.causal.evaluate.rolling_logprobs])."""
        texts = [str(_arguments(r)[0]) for r in requests]
        if not (self.lm.prepend_bos and self.lm.bos_token_id is not None) and texts:
            warn(
                f"{self.lm.name} reads no BOS token: nothing predicts a text's first token, so "
                "rolling log-likelihoods leave it out; adapt the model with prepend_bos=True to "
                "score every token"
            )
        scored = rolling_logprobs(
            self.lm,
            texts,
            batch_size=self.batch_size,
            max_length=self.max_length,
            overflow=self.rolling_overflow,
        )
        out = [logprob for logprob, _ in scored]
        for text, answer in zip(texts, out):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), answer)
        return out

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations of each request's context, cut at its ``until``
        strings, at most ``max_gen_toks`` tokens (see
        [`generate()`][tl_multilingual.causal.evaluate.generate]).

        Raises:
            TLMultilingualError: a request asks for sampling (``do_sample=True`` or a
                temperature above 0): the library decodes greedily.
        """
        calls = [_arguments(r) for r in requests]
        groups: dict[str, list[int]] = {}
        for i, args in enumerate(calls):
            kwargs = dict(args[1]) if len(args) > 1 and args[1] else {}
            groups.setdefault(json.dumps(kwargs, sort_keys=True, default=str), []).append(i)
        out: list[str] = [""] * len(calls)
        for key, members in groups.items():
            kwargs = json.loads(key)
            if kwargs.get("do_sample") or (kwargs.get("temperature") or 0) > 0:
                raise TLMultilingualError(
                    "a task asks for sampled generations (do_sample="
                    f"{kwargs.get('do_sample')!r}, temperature={kwargs.get('temperature')!r}); "
                    "the library decodes greedily: set do_sample: false and temperature: 0 in "
                    "the task's generation_kwargs (or gen_kwargs of simple_evaluate)"
                )
            until = kwargs.get("until") or []
            stop = [until] if isinstance(until, str) else list(until)
            eos = getattr(self.lm.tokenizer, "eos_token", None)
            stop = [s for s in stop if s and s != eos]  # generation stops at the EOS token anyway
            length = next(
                (int(kwargs[k]) for k in _LENGTH_KEYS if kwargs.get(k) is not None),
                self.max_gen_toks,
            )
            texts = generate(
                self.lm,
                [str(calls[i][0]) for i in members],
                max_new_tokens=length,
                stop=stop,
                batch_size=self.batch_size,
                max_length=self.max_length,
                overflow=self.overflow,
            )
            for i, text in zip(members, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", calls[i], text)
        return out
