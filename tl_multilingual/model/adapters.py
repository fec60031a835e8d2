"""One view over the models the library supports: [`adapt()`][tl_multilingual.model.adapters.adapt].

A [`ModelAdapter`][tl_multilingual.model.adapters.ModelAdapter] wraps a TransformerLens ``TransformerBridge`` (TL 3.8+ and
4.x) or a legacy ``HookedTransformer`` (TL 3.x) and answers what every other
module needs to know: layer count, the true MLP width, which hook reads neuron
activations and which hook interventions write, how texts become padded batches,
and how to run a forward pass that stops before the unembedding.

Neurons: for a gated MLP the neuron is ``act_fn(x W_gate)_j``,
read at ``blocks.{l}.mlp.hook_pre`` and passed through the model's own activation
function; for a plain MLP it is ``act_fn(x W_in + b)_j``, read directly at
``blocks.{l}.mlp.hook_post``. Interventions write at ``blocks.{l}.mlp.hook_post``,
the vector that multiplies ``W_out``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ..errors import CorpusError, GradientError, TLMultilingualError, UnsupportedModelError, warn
from ..provenance import weight_fingerprint

__all__ = ["ModelAdapter", "adapt", "Batch", "running_batch", "whole_number"]

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def whole_number(item: Any, what: str, error: type[TLMultilingualError] = TLMultilingualError) -> int:
    """``item`` as an ``int``: the one check of an index a user gives (a layer, a position).

    Args:
        item: a Python or NumPy integer, or a 0-d integer tensor.
        what: what the numbers are, for the message (``"layers"``, ``"positions"``).
        error: the exception raised (a subclass of the library's error).

    Raises:
        error: a boolean, a float (``0.5``, NaN), a string, or a tensor on the ``meta``
            device or of another dtype.
    """
    if isinstance(item, Tensor) and item.ndim == 0:
        if item.is_meta:
            raise error(f"the {what} are on the meta device and hold no values")
        if item.dtype in _INTEGER_DTYPES:
            return int(item)
    if isinstance(item, bool) or not isinstance(item, numbers.Integral):
        raise error(f"{what} must be whole numbers, got {item!r:.60}")
    return int(item)

HookFn = Callable[..., Any]
PaddingSide = Literal["left", "right"]


def _untokenizable(tokenizer: Any, texts: Sequence[Any], err: Exception) -> CorpusError:
    """The library's error for a batch the tokenizer refused, naming the first bad text."""
    def refused(text: Any) -> bool:
        try:
            tokenizer([text], add_special_tokens=False)
        except Exception:  # noqa: BLE001 - any failure marks the culprit
            return True
        return False

    index = next((i for i, text in enumerate(texts) if refused(text)), 0)
    shown = repr(texts[index])
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    error = CorpusError(f"text {index} cannot be tokenised ({type(err).__name__}: {first}): {shown}")
    error.index = index
    return error


class _StopForward(Exception):
    """Raised by a hook to end a forward pass whose remaining layers are not needed."""


@dataclass
class Batch:
    """Padded token ids with the attention mask (1 = real token, 0 = padding)."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    padding_side: PaddingSide = "right"

    @property
    def real(self) -> Bool[Tensor, "batch pos"]:
        return self.attention_mask.bool()

    @property
    def last(self) -> Int[Tensor, " batch"]:
        """Position of each row's last real token (either padding side)."""
        return self.attention_mask.shape[1] - 1 - self.attention_mask.flip(-1).argmax(-1)


def _hooked_transformer_class() -> type | None:
    # TL 4 removed HookedTransformer and raises ImportError even for attribute access.
    try:
        from transformer_lens import HookedTransformer
    except ImportError:
        return None
    return HookedTransformer


def _bridge_class() -> type | None:
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return None
    return TransformerBridge


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover - installed from source
        return "unknown"


@dataclass
class ModelAdapter:
    """What the library knows about one model. Build it with [`adapt()`][tl_multilingual.model.adapters.adapt].

    Attributes:
        model: the wrapped TransformerLens model.
        kind: ``"bridge"`` or ``"hooked"`` (legacy ``HookedTransformer``).
        name: the model's name (``cfg.model_name``).
        architecture: the Hugging Face architecture class name, e.g. ``LlamaForCausalLM``.
        n_layers: number of transformer blocks.
        d_mlp: neurons per MLP, measured from the hooks (never read from the config).
        d_model: residual stream width.
        gated: whether the MLP is gated (neuron = ``act_fn(gate)``).
        padding_side: side on which batches are padded (``"right"`` by default).
        prepend_bos: whether texts start with the BOS token.
    """

    model: Any
    kind: Literal["bridge", "hooked"]
    name: str
    architecture: str
    n_layers: int
    d_mlp: int
    d_model: int
    gated: bool
    tokenizer: Any
    padding_side: PaddingSide
    prepend_bos: bool
    n_ctx: int
    _act_fns: list[Callable[[Tensor], Tensor]] = field(repr=False, default_factory=list)

    # -- hooks ----------------------------------------------------------------------

    def read_hook(self, layer: int) -> str:
        """Hook whose output gives the neuron activations of ``layer`` (see [`neuron_values()`][tl_multilingual.model.adapters.ModelAdapter.neuron_values])."""
        return f"blocks.{layer}.mlp.{'hook_pre' if self.gated else 'hook_post'}"

    def write_hook(self, layer: int) -> str:
        """Hook where interventions write: the MLP hidden vector that multiplies ``W_out``.

        For a gated MLP this is ``act_fn(gate) * up``; scaling or zeroing a neuron here
        scales or zeroes ``act_fn(gate)`` of that neuron.
        """
        return f"blocks.{layer}.mlp.hook_post"

    def resid_hook(self, layer: int) -> str:
        """The residual stream after block ``layer`` (what the logit lens reads)."""
        return f"blocks.{layer}.hook_resid_post"

    @property
    def final_hook(self) -> str:
        """The residual stream after the last block, which the final norm reads."""
        return self.resid_hook(self.n_layers - 1)

    @property
    def final_scale_hook(self) -> str:
        """The final norm's per-position scale (``1 / rms`` or ``1 / std``)."""
        return "ln_final.hook_scale"

    def layer_range(self, layers: Iterable[int] | slice | None) -> list[int]:
        """Layer indices from a range (e.g. ``stage_map.layers("shared_reasoning")``), a
        slice or None (every layer).

        Raises:
            TLMultilingualError: for a string (a stage name needs its stage map: pass
                ``layers=stage_map.layers(name)``), a single number, layers that are not
                whole numbers (see [`whole_number()`][tl_multilingual.model.adapters.whole_number])
                or layers outside the model.
        """
        every = range(self.n_layers)
        if layers is None:
            return list(every)
        if isinstance(layers, str):
            raise TLMultilingualError(
                f"layers={layers!r} is a name, not layers: pass layer indices, a range or a slice, or for a "
                f"stage layers=stage_map.layers({layers!r}) with a StageMap from tl_multilingual.map_stages "
                "(its stages: understanding, shared_reasoning, output_transformation, vocabulary_output)"
            )
        if isinstance(layers, slice):
            bounds = (layers.start, layers.stop, layers.step)
            parts = [None if b is None else whole_number(b, "layers") for b in bounds]
            if parts[2] == 0:
                raise TLMultilingualError("a layers slice cannot have step 0")
            return list(every[slice(*parts)])
        if isinstance(layers, numbers.Number) or (isinstance(layers, Tensor) and layers.ndim == 0):
            raise TLMultilingualError(
                f"layers={layers!r:.40} is one number: pass a list (layers=[{layers!r:.20}]), a range or a slice")
        try:
            items = list(layers)
        except TypeError:
            raise TLMultilingualError(
                f"layers must be layer indices, a range or a slice, got {layers!r:.60}") from None
        chosen = sorted({whole_number(layer, "layers") for layer in items})
        if any(layer not in every for layer in chosen):
            raise TLMultilingualError(f"layers {chosen} fall outside [0, {self.n_layers})")
        return chosen

    def up_hook(self, layer: int) -> str:
        """Hook of the linear ``up`` projection of a gated MLP (``x W_in``)."""
        if not self.gated:
            raise UnsupportedModelError(f"{self.name} has a plain MLP: there is no up projection")
        return f"blocks.{layer}.mlp.hook_pre_linear"

    def neuron_values(self, layer: int, read: Tensor) -> Tensor:
        """Neuron activation values from the output of [`read_hook()`][tl_multilingual.model.adapters.ModelAdapter.read_hook] (``act_fn`` for
        gated MLPs), same shape as ``read``: ``[..., d_mlp]``."""
        return self._act_fns[layer](read) if self.gated else read

    def neurons(self, layer: int, read: Tensor) -> Tensor:
        """Deprecated alias of [`neuron_values()`][tl_multilingual.model.adapters.ModelAdapter.neuron_values] (``neurons`` elsewhere names a
        [`LanguageNeurons`][tl_multilingual.neurons.classes.LanguageNeurons])."""
        warn("ModelAdapter.neurons is renamed neuron_values", DeprecationWarning)
        return self.neuron_values(layer, read)

    # -- model facts ------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p.dtype for p in self.model.parameters() if p.is_floating_point())

    @property
    def bos_token_id(self) -> int | None:
        return getattr(self.tokenizer, "bos_token_id", None)

    @property
    def pad_token_id(self) -> int:
        for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
            value = getattr(self.tokenizer, attr, None)
            if value is not None:
                return int(value)
        return 0

    def describe(self) -> dict[str, Any]:
        """The facts recorded in manifests of results computed on this model."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "kind": self.kind,
            "n_layers": self.n_layers,
            "d_mlp": self.d_mlp,
            "d_model": self.d_model,
            "gated": self.gated,
            "prepend_bos": self.prepend_bos,
            "dtype": str(self.dtype).removeprefix("torch."),
            "weights": weight_fingerprint(self.model),
            "transformer_lens": _package_version("transformer-lens"),
            "transformers": _package_version("transformers"),
        }

    # -- tokens -----------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str], *, bos: bool | None = None) -> list[list[int]]:
        """Token ids of each text, with the BOS token first when ``bos`` (default:
        `prepend_bos`). No other special tokens are added.

        Raises:
            CorpusError: a text the tokenizer cannot take (a lone surrogate, a non-string);
                its ``index`` attribute is the text's position in ``texts``.
        """
        if not texts:
            return []
        try:
            ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        except Exception as err:  # the tokenizer's own error: find the text and say which
            raise _untokenizable(self.tokenizer, texts, err) from err
        bos = self.prepend_bos if bos is None else bos
        if bos and self.bos_token_id is not None:
            return [[self.bos_token_id, *row] for row in ids]
        return [list(row) for row in ids]

    def pad(self, sequences: Sequence[Sequence[int]], *, side: PaddingSide | None = None) -> Batch:
        """Pad token id sequences into a `Batch` on the model's device."""
        side = side or self.padding_side
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            n = len(seq)
            cols = slice(0, n) if side == "right" else slice(width - n, width)
            ids[row, cols] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, cols] = 1
        return Batch(ids.to(self.device), mask.to(self.device), side)

    # -- running ----------------------------------------------------------------------

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
        """Attach forward hooks for the duration of the block; they are removed on exit,
        also when the block raises."""
        with self.model.hooks(fwd_hooks=list(fwd_hooks)):
            yield

    def forward(
        self,
        batch: Batch,
        *,
        fwd_hooks: Sequence[tuple[str, HookFn]] = (),
        logits: bool = True,
        stop_at: str | None = None,
    ) -> Tensor | None:
        """Run the model on a batch with hooks attached.

        With ``logits=False`` the pass stops right after the hook ``stop_at`` (default:
        the last layer's [`write_hook()`][tl_multilingual.model.adapters.ModelAdapter.write_hook], so the last ``W_out``, the final norm and the
        unembedding are never computed), and ``None`` is returned.
        """
        hooks = list(fwd_hooks)
        if not logits:
            hooks.append((stop_at or self.write_hook(self.n_layers - 1), _raise_stop))
        try:
            with torch.no_grad(), self.hooks(hooks):
                return self.call(batch)
        except _StopForward:
            return None

    @contextmanager
    def gradients(self) -> Iterator[None]:
        """A block in which gradients can be taken through the model, whatever the
        caller's mode: it leaves ``torch.inference_mode`` and ``torch.no_grad`` for its
        duration. Tensors made before the block under ``inference_mode`` (batches,
        indices) are inference tensors that autograd cannot save: make them inside
        the block, or ``clone()`` them there.

        Raises:
            GradientError: the model's own weights are inference tensors (it was
                created or loaded under ``torch.inference_mode``), or autograd met
                another inference tensor.
        """
        if any(torch.is_inference(p) for p in self.model.parameters()):
            raise GradientError(
                f"gradients through {self.name} are impossible: its weights are inference tensors "
                "(the model was created or loaded under torch.inference_mode()). Load it outside "
                "inference mode; the gradient methods may then run inside it."
            )
        try:
            with torch.inference_mode(False), torch.enable_grad():
                yield
        except RuntimeError as err:
            if "nference tensor" not in str(err):
                raise
            raise GradientError(
                f"autograd met an inference tensor made under torch.inference_mode() ({err}); "
                "gradient computations need tensors made outside inference mode"
            ) from err

    def call(self, batch: Batch) -> Tensor:
        """The model's logits on a batch, with whatever hooks are attached (no
        ``no_grad``: gradients flow; see [`gradients()`][tl_multilingual.model.adapters.ModelAdapter.gradients] to take them under
        ``inference_mode``).

        Every forward pass of the library goes through this method, which runs it
        under [`running()`][tl_multilingual.model.adapters.ModelAdapter.running]: in eval mode, with the batch
        known to the hooks."""
        kwargs: dict[str, Any] = {"attention_mask": batch.attention_mask}
        if self.kind == "bridge":
            kwargs["use_cache"] = False
        with self.running(batch):
            return self.model(batch.input_ids, **kwargs)

    @contextmanager
    def running(self, batch: Batch) -> Iterator[None]:
        """The conditions of every forward pass of the library on ``batch``.

        - **Eval mode.** Every module of the model (and of the Hugging Face model a
          bridge wraps) that is in training mode is put in eval mode for the block,
          and put back in training mode after it, also when the block raises. A model
          switched to ``model.train()`` after it was adapted (a fine-tuning step, then
          measuring the next checkpoint with the same object) is measured without
          dropout, and the caller's modes, module by module, are left as they were.
        - **The batch.** [`running_batch()`][tl_multilingual.model.adapters.running_batch] gives hooks the batch being run
          (its attention mask and padding side), so that an intervention's
          ``positions=`` count each text's real tokens.
        """
        token = _RUNNING.set((*_RUNNING.get(), (self.model, batch)))
        training = [module for module in _modules(self.model) if module.training]
        try:
            for module in training:
                module.training = False
            yield
        finally:
            for module in training:
                module.training = True
            _RUNNING.reset(token)

    def __repr__(self) -> str:
        return (
            f"ModelAdapter({self.name!r}, {self.architecture}, kind={self.kind}, "
            f"n_layers={self.n_layers}, d_mlp={self.d_mlp}, gated={self.gated})"
        )


def _raise_stop(tensor: Tensor, hook: Any) -> None:
    raise _StopForward


# (model, batch) of the passes running now, innermost last
_RUNNING: ContextVar[tuple[tuple[Any, Batch], ...]] = ContextVar(
    "tl_multilingual_running", default=()
)


def running_batch(model: Any) -> Batch | None:
    """The batch that the library is running through ``model`` at this moment (inside
    [`ModelAdapter.call()`][tl_multilingual.model.adapters.ModelAdapter.call]), for hooks that need its attention mask; ``None``
    outside the library's passes (e.g. in TransformerLens's own ``run_with_hooks``).

    Args:
        model: the TransformerLens model, or its adapter.
    """
    model = model.model if isinstance(model, ModelAdapter) else model
    for owner, batch in reversed(_RUNNING.get()):
        if owner is model:
            return batch
    return None


def _modules(model: Any) -> list[torch.nn.Module]:
    """Every module of the model, and of the Hugging Face model a bridge wraps (kept
    outside the bridge's module tree), once each."""
    found: dict[int, torch.nn.Module] = {}
    for root in (model, getattr(model, "original_model", None)):
        if isinstance(root, torch.nn.Module):
            for module in root.modules():
                found.setdefault(id(module), module)
    return list(found.values())


def _activation_fns(model: Any, kind: str, n_layers: int) -> list[Callable[[Tensor], Tensor]]:
    """The model's own activation function of each gated MLP."""
    fns = []
    for layer in range(n_layers):
        mlp = model.blocks[layer].mlp
        module = mlp if kind == "hooked" else getattr(mlp, "original_component", None)
        fn = None
        for attr in ("act_fn", "act", "activation_fn", "activation"):
            candidate = getattr(module, attr, None)
            if callable(candidate):
                fn = candidate
                break
        if fn is None:
            fn = _config_activation(model)
        fns.append(fn)
    return fns


def _config_activation(model: Any) -> Callable[[Tensor], Tensor]:
    from transformers.activations import ACT2FN

    hf_config = getattr(getattr(model, "original_model", None), "config", None)
    for source in (hf_config, model.cfg):
        for attr in ("hidden_activation", "hidden_act", "activation_function", "act_fn"):
            name = getattr(source, attr, None)
            if isinstance(name, str) and name in ACT2FN:
                return ACT2FN[name]
    raise UnsupportedModelError(
        "cannot find the activation function of the gated MLP: the MLP module has no "
        "'act_fn' and the config names none"
    )


def _architecture(model: Any, kind: str) -> str:
    cfg = model.cfg
    for attr in ("architecture", "original_architecture"):
        value = getattr(cfg, attr, None)
        if value:
            return str(value)
    original = getattr(model, "original_model", None)
    return type(original).__name__ if original is not None else type(model).__name__


def _check_supported(model: Any, kind: str) -> None:
    cfg = model.cfg
    what = getattr(cfg, "model_name", type(model).__name__)
    if getattr(cfg, "attn_only", False):
        raise UnsupportedModelError(f"{what} is attention-only: it has no MLP neurons")
    if getattr(cfg, "num_experts", None):
        raise UnsupportedModelError(
            f"{what} has a mixture-of-experts MLP, which is not supported yet: its neurons "
            "belong to experts that not every token visits"
        )
    if getattr(cfg, "attention_dir", "causal") != "causal":
        raise UnsupportedModelError(
            f"{what} is an encoder (bidirectional attention); only decoder language models "
            "are supported"
        )
    original = getattr(model, "original_model", None)
    if getattr(getattr(original, "config", None), "is_encoder_decoder", False):
        raise UnsupportedModelError(f"{what} is an encoder-decoder model; only decoders are supported")
    if kind == "bridge" and not _is_causal_lm(original):
        raise UnsupportedModelError(
            f"{what} wraps {type(original).__name__}, an encoder or other non-causal model; only "
            "decoder (causal) language models are supported"
        )
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise UnsupportedModelError(f"{what} has no 'blocks' stack of transformer layers")
    for layer, block in enumerate(blocks):
        mlp = getattr(block, "mlp", None)
        if mlp is None:
            raise UnsupportedModelError(f"layer {layer} of {what} has no MLP")
        if "moe" in type(mlp).__name__.lower() or "expert" in type(mlp).__name__.lower():
            raise UnsupportedModelError(
                f"{what} has a mixture-of-experts MLP ({type(mlp).__name__}), which is not "
                "supported yet"
            )


def _is_causal_lm(hf_model: Any) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = type(hf_model).__name__
    return name in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()) or name.endswith("ForCausalLM")


def _probe_widths(adapter: ModelAdapter) -> dict[str, int]:
    """Run two tokens through the model and record the width of every hook we rely on."""
    names = [adapter.read_hook(layer) for layer in range(adapter.n_layers)]
    names += [adapter.write_hook(layer) for layer in range(adapter.n_layers)]
    widths: dict[str, int] = {}

    def recorder(name: str) -> HookFn:
        def record(tensor: Tensor, hook: Any) -> None:
            widths[name] = tensor.shape[-1]

        return record

    token = adapter.bos_token_id if adapter.bos_token_id is not None else adapter.pad_token_id
    batch = adapter.pad([[token, token]])
    hooks = [(name, recorder(name)) for name in dict.fromkeys(names)]
    try:
        adapter.forward(batch, fwd_hooks=hooks, logits=False)
    except (KeyError, AttributeError, ValueError) as err:
        raise UnsupportedModelError(
            f"{adapter.name} does not expose the MLP hooks this library reads "
            f"({names[0]}, {names[-1]}): {err}"
        ) from err
    missing = [name for name in dict.fromkeys(names) if name not in widths]
    if missing:
        raise UnsupportedModelError(
            f"these hooks of {adapter.name} never fired during a forward pass: {missing[:4]}"
            + (" ..." if len(missing) > 4 else "")
        )
    return widths


_CACHE = "_tl_multilingual_adapters"  # per-model adapters, kept in the model's __dict__


def adapt(
    model: Any,
    *,
    padding_side: PaddingSide = "right",
    prepend_bos: bool | None = None,
) -> ModelAdapter:
    """Wrap a TransformerLens model for the library (puts the model in eval mode).

    Every pass the library runs is in eval mode whatever mode the model is in at the
    time (the caller's mode is restored after each pass; see
    [`ModelAdapter.running()`][tl_multilingual.model.adapters.ModelAdapter.running]), so switching the model to ``train()``
    after adapting it never lets dropout into a measurement.

    The adapter of a model is made once per setting and reused: what it measured (the
    MLP width, the activation functions) and the output head checked against the model
    ([`tl_multilingual.model.readout.head()`][tl_multilingual.model.readout.head]) are worked out once. Nothing else is
    attached to the model: stage maps and results are passed to the functions that use
    them.

    Args:
        model: a ``TransformerBridge`` (TL 3.8+ / 4.x) or a ``HookedTransformer``
            (TL 3.x). An existing [`ModelAdapter`][tl_multilingual.model.adapters.ModelAdapter] is returned unchanged.
        padding_side: side on which batches are padded. Right padding is exact for
            causal models; left padding is used for generation.
        prepend_bos: start every text with the BOS token (default: the model's
            ``cfg.default_prepend_bos``).

    Raises:
        UnsupportedModelError: not a TransformerLens decoder with MLP neurons
            (encoder-only, encoder-decoder, mixture-of-experts, attention-only...).
    """
    if isinstance(model, ModelAdapter):
        return model
    key = (padding_side, prepend_bos)
    cache = vars(model).get(_CACHE) if hasattr(model, "__dict__") else None
    if cache is not None and key in cache:
        return cache[key]
    adapter = _build(model, padding_side, prepend_bos)
    if cache is None and hasattr(model, "__dict__"):
        cache = {}
        object.__setattr__(model, _CACHE, cache)  # bypasses nn.Module's attribute handling
    if cache is not None:
        cache[key] = adapter
    return adapter


def _build(model: Any, padding_side: PaddingSide, prepend_bos: bool | None) -> ModelAdapter:
    bridge, hooked = _bridge_class(), _hooked_transformer_class()
    if bridge is not None and isinstance(model, bridge):
        kind: Literal["bridge", "hooked"] = "bridge"
    elif hooked is not None and isinstance(model, hooked):
        kind = "hooked"
    else:
        raise UnsupportedModelError(
            f"expected a TransformerLens TransformerBridge or HookedTransformer, got "
            f"{type(model).__name__}. Wrap a Hugging Face model with "
            "TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tokenizer)."
        )
    if padding_side not in ("left", "right"):
        raise TLMultilingualError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    _check_supported(model, kind)
    if any(p.is_meta for p in model.parameters()):
        raise UnsupportedModelError(
            f"{getattr(model.cfg, 'model_name', type(model).__name__)} has weights on the meta device (not "
            "loaded): load the weights, e.g. with from_pretrained, or move the model with to_empty and load a "
            "state dict"
        )
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UnsupportedModelError("the model has no tokenizer; boot it with one")
    model.eval()
    cfg = model.cfg
    n_layers = len(model.blocks)
    gated = bool(getattr(cfg, "gated_mlp", False))
    adapter = ModelAdapter(
        model=model,
        kind=kind,
        name=str(getattr(cfg, "model_name", None) or type(model).__name__),
        architecture=_architecture(model, kind),
        n_layers=n_layers,
        d_mlp=-1,
        d_model=int(cfg.d_model),
        gated=gated,
        tokenizer=tokenizer,
        padding_side=padding_side,
        prepend_bos=bool(getattr(cfg, "default_prepend_bos", True) if prepend_bos is None else prepend_bos),
        n_ctx=int(getattr(cfg, "n_ctx", 0) or 2048),
    )
    if gated:
        adapter._act_fns = _activation_fns(model, kind, n_layers)
    widths = _probe_widths(adapter)
    distinct = set(widths.values())
    if len(distinct) != 1:
        raise UnsupportedModelError(
            f"{adapter.name} has MLPs of different widths across layers or hooks {sorted(distinct)}; "
            "a single neuron grid [n_layers, d_mlp] cannot describe it"
        )
    adapter.d_mlp = distinct.pop()
    return adapter
