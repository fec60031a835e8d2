"""tl_multilingual: language neurons of TransformerLens models.

Find the language neurons of a model (LAPE; Zhang et al.'s (AAAI-26) ternary classes), collect the
statistics they rest on in one streaming pass, and save everything with a manifest.

>>> import tl_multilingual as tlm
>>> lm = tlm.adapt(model)
>>> stats = tlm.collect_stats(lm, tlm.Corpus.from_dict({"en": [...], "fr": [...]}))
>>> neurons = tlm.identify(stats, method="ternary")
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import moved

# Every public name, declared once with the module it lives in. ``__all__`` and the lazy
# lookup below both come from these two tables; names are imported on first use (PEP 562),
# so that ``import tl_multilingual`` and the command's ``--help`` do not load torch.
_PUBLIC: dict[str, tuple[str, ...]] = {
    "model.adapters": ("adapt", "ModelAdapter"),
    "inputs.corpus": ("Corpus", "Text"),
    "neurons.collect": ("collect_stats",),
    "neurons.stats": ("ActivationStats",),
    "neurons.identification": ("identify",),
    "causal.interventions": ("ablate", "ablation_hooks", "boost", "steer", "patch", "record",
                             "intervene", "Edit", "Interventions"),
    "causal.evaluate": ("perplexity", "choice_accuracy", "answer_accuracy", "generate",
                        "MultipleChoice"),
    "experiments.deactivation": ("deactivation_matrix", "DeactivationResult"),
    "experiments.benchmarks": ("benchmark_effects", "BenchmarkEffects"),
    "experiments.generation_language": ("generation_language", "GenerationLanguage"),
    "stages.lens": ("language_lens", "LensResult", "fit_jacobian_lens"),
    "stages.similarity": ("representation_similarity", "SimilarityResult"),
    "inputs.prompts": ("LensPrompt",),
    "inputs.wordtokens": ("word_tokens",),
    "stages.mapping": ("map_stages",),
    "stages.stage_map": ("StageMap", "STAGES"),
    "experiments.stage_deactivation": ("stage_effects", "StageEffects"),
    "causal.patching": ("patch_neurons", "PatchResult"),
    "inputs.items": ("ParallelItems", "ParallelItem"),
    "neurons.sharing_classes": ("sharing", "Sharing"),
    "causal.attribution": ("attribute", "Attribution"),
    "experiments.comparison": ("compare", "compare_series", "Comparison", "Series"),
    "neurons.classes": ("LanguageNeurons",),
    "neurons.masks": ("NeuronMask",),
    "inputs.languages": ("normalize_language", "language_name"),
    "inputs.language_id": ("language_of", "purity_filter"),
    "causal.harness": ("TLMEvalLM",),
    "study.folder": ("StudyFolder",),
    "errors": ("TLMultilingualError", "TLMultilingualWarning", "UnsupportedModelError",
               "LanguageError", "CorpusError", "StatsError", "IdentificationError", "MaskError",
               "SaveError", "ContextLengthError", "GradientError", "TruncationWarning",
               "DistributedError", "HubError"),
}
# Modules reached as attributes (``tlm.models.tiny()``, ``tlm.plot.save()``).
_MODULES: dict[str, str] = {
    "models": "model.models", "evaluate": "causal.evaluate", "attribution": "causal.attribution",
    "sharing_experiments": "experiments.sharing_experiments",
    "sharing_classes": "neurons.sharing_classes", "data": "data", "prompts": "inputs.prompts",
    "plot": "study.plot", "hub": "hub",
}
_NOT_STARRED = ("plot",)  # needs matplotlib (an extra): ``import *`` leaves it out

_HOME = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = [*_HOME, *(name for name in _MODULES if name not in _NOT_STARRED)]

# What 0.1.0 had at the top level and has moved since: it resolves, with one
# DeprecationWarning naming the new home, until the next release.
_moved = moved(__name__, {
    "ablation_matrix": ("experiments.deactivation", "deactivation_matrix"),
    "AblationResult": ("experiments.deactivation", "DeactivationResult"),
    "class_attribution": ("causal.attribution", "class_attribution"),
    "item_correctness": ("experiments.sharing_experiments", "item_correctness"),
    "correct_vs_incorrect": ("experiments.sharing_experiments", "correct_vs_incorrect"),
    "boost_experiment": ("experiments.sharing_experiments", "boost_experiment"),
    "SHARING_CLASSES": ("neurons.sharing_classes", "SHARING_CLASSES"),
    **{old: (new, None) for old, new in {
        "adapters": "model.adapters", "collect": "neurons.collect", "corpus": "inputs.corpus",
        "gguf": "model.gguf", "interventions": "causal.interventions", "items": "inputs.items",
        "languages": "inputs.languages", "lens": "stages.lens", "masks": "neurons.masks",
        "patching": "causal.patching", "report": "study.report", "stats": "neurons.stats",
        "tokens": "model.tokens", "wordtokens": "inputs.wordtokens",
    }.items()},
})


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{_MODULES[name]}", __name__)
    else:
        return _moved(name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_MODULES))


__version__ = "0.1.0"
