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
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Any

from .errors import (
    ContextLengthError,
    CorpusError,
    DistributedError,
    GradientError,
    IdentificationError,
    LanguageError,
    MaskError,
    SaveError,
    StatsError,
    TLMultilingualError,
    TLMultilingualWarning,
    TruncationWarning,
    UnsupportedModelError,
)

# Names are imported on first use (PEP 562), so that ``import tl_multilingual`` and the
# command's ``--help`` do not load torch and TransformerLens.
_SUBMODULES = {"data": "data", "evaluate": "causal.evaluate", "models": "model.models", "prompts": "inputs.prompts",
               "attribution": "causal.attribution", "sharing_classes": "neurons.sharing_classes",
               "sharing_experiments": "experiments.sharing_experiments", "plot": "study.plot"}
_EXPORTS = {
    "model.adapters": ("ModelAdapter", "adapt"),
    "causal.attribution": ("Attribution", "attribute"),
    "neurons.collect": ("collect_stats",),
    "experiments.comparison": ("Comparison", "Series", "compare", "compare_series"),
    "inputs.corpus": ("Corpus", "Text"),
    "causal.evaluate": ("MultipleChoice", "answer_accuracy", "choice_accuracy", "generate", "perplexity"),
    "experiments.deactivation": ("DeactivationResult", "deactivation_matrix"),
    "neurons.identification": ("identify",),
    "causal.interventions": ("Edit", "Interventions", "ablate", "ablation_hooks", "boost", "intervene", "patch", "record",
                      "steer"),
    "inputs.items": ("ParallelItem", "ParallelItems"),
    "inputs.languages": ("language_name", "normalize_language"),
    "stages.lens": ("LensResult", "language_lens"),
    "neurons.masks": ("NeuronMask",),
    "neurons.classes": ("LanguageNeurons",),
    "causal.patching": ("PatchResult", "patch_neurons"),
    "inputs.prompts": ("LensPrompt",),
    "neurons.sharing_classes": ("Sharing", "sharing"),
    "experiments.stage_deactivation": ("StageEffects", "stage_effects"),
    "stages.segmentation": ("STAGES", "StageMap", "map_stages"),
    "neurons.stats": ("ActivationStats",),
    "inputs.wordtokens": ("word_tokens",),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
# Renamed, or moved one level down (Wang et al.'s extras live in their modules): the
# old top-level names still work, with a DeprecationWarning, until the next release.
_MOVED = {
    "ablation_matrix": ("experiments.deactivation", "deactivation_matrix"),
    "AblationResult": ("experiments.deactivation", "DeactivationResult"),
    "class_attribution": ("causal.attribution", "class_attribution"),
    "item_correctness": ("experiments.sharing_experiments", "item_correctness"),
    "correct_vs_incorrect": ("experiments.sharing_experiments", "correct_vs_incorrect"),
    "boost_experiment": ("experiments.sharing_experiments", "boost_experiment"),
    "SHARING_CLASSES": ("neurons.sharing_classes", "SHARING_CLASSES"),
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    elif name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    elif name in _RENAMED:  # a 0.1.0 module, now in a subpackage
        warnings.warn(f"tl_multilingual.{name} is now tl_multilingual.{_RENAMED[name]}", DeprecationWarning,
                      stacklevel=2)
        return importlib.import_module(f".{_RENAMED[name]}", __name__)
    elif name in _MOVED:
        module, new = _MOVED[name]
        warnings.warn(f"tl_multilingual.{name} is now tl_multilingual.{module}.{new}", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(f".{module}", __name__), new)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def _forward_old_names(package: str, module: str) -> Any:
    """The ``__getattr__`` of a subpackage that was a 0.1.0 module: its old names, now in
    ``package.module``, with a DeprecationWarning until the next release."""

    def forward(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        home = importlib.import_module(f"{package}.{module}")
        if not hasattr(home, name):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        warnings.warn(f"{package}.{name} is now {home.__name__}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(home, name)

    return forward


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps a top-level function (``sharing``, ``identify``, ``compare``) from being
    replaced by a module of the same name when the import system binds submodules."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _HOME and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

# Modules renamed (so that ``import tl_multilingual.<module> as m`` never binds a function)
# or grouped into subpackages: the old paths still import, with a DeprecationWarning,
# until the next release. ``stages``, ``experiments``, ``neurons`` and ``study`` are
# subpackages now; their old contents are forwarded by the subpackages themselves.
_RENAMED = {
    "identify": "neurons.identification", "compare": "experiments.comparison", "sharing": "neurons.sharing_classes",
    "languages": "inputs.languages",
    "corpus": "inputs.corpus",
    "items": "inputs.items",
    "prompts": "inputs.prompts",
    "wordtokens": "inputs.wordtokens",
    "adapters": "model.adapters",
    "tokens": "model.tokens",
    "readout": "model.readout",
    "models": "model.models",
    "gguf": "model.gguf",
    "stats": "neurons.stats",
    "collect": "neurons.collect",
    "masks": "neurons.masks",
    "sharing_classes": "neurons.sharing_classes",
    "identification": "neurons.identification",
    "lens": "stages.lens",
    "interventions": "causal.interventions",
    "evaluate": "causal.evaluate",
    "patching": "causal.patching",
    "attribution": "causal.attribution",
    "stage_deactivation": "experiments.stage_deactivation",
    "sharing_experiments": "experiments.sharing_experiments",
    "comparison": "experiments.comparison",
    "report": "study.report",
    "plot": "study.plot",
}


_OWN_SPECS: dict[str, Any] = {}


class _RenamedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        package, _, old = fullname.rpartition(".")
        if package == __name__ and old in _RENAMED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        old = spec.name.rpartition(".")[2]
        new = f"{__name__}.{_RENAMED[old]}"
        warnings.warn(f"the module {spec.name} is renamed {new}", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        _OWN_SPECS[new] = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """The module is the renamed one, already executed: give it back its own spec,
        which the import system replaced with the alias's."""
        module.__spec__ = _OWN_SPECS[module.__name__]


sys.meta_path.append(_RenamedModules())


__version__ = "0.1.0"

__all__ = [
    "adapt",
    "ModelAdapter",
    "models",
    "evaluate",
    "attribution",
    "sharing_experiments",
    "data",
    "Corpus",
    "Text",
    "collect_stats",
    "ActivationStats",
    "identify",
    "ablate",
    "ablation_hooks",
    "boost",
    "steer",
    "patch",
    "record",
    "intervene",
    "Edit",
    "Interventions",
    "perplexity",
    "choice_accuracy",
    "answer_accuracy",
    "generate",
    "MultipleChoice",
    "deactivation_matrix",
    "DeactivationResult",
    "language_lens",
    "LensResult",
    "LensPrompt",
    "prompts",
    "word_tokens",
    "map_stages",
    "StageMap",
    "STAGES",
    "stage_effects",
    "StageEffects",
    "patch_neurons",
    "PatchResult",
    "ParallelItems",
    "ParallelItem",
    "sharing",
    "Sharing",
    "attribute",
    "Attribution",
    "compare",
    "compare_series",
    "Comparison",
    "Series",
    "LanguageNeurons",
    "NeuronMask",
    "normalize_language",
    "language_name",
    "TLMultilingualError",
    "TLMultilingualWarning",
    "UnsupportedModelError",
    "LanguageError",
    "CorpusError",
    "StatsError",
    "IdentificationError",
    "MaskError",
    "SaveError",
    "ContextLengthError",
    "GradientError",
    "TruncationWarning",
    "DistributedError",
]
