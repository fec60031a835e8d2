"""tl_multilingual: language neurons of TransformerLens models.

Find the language neurons of a model (LAPE; paper A's ternary classes), collect the
statistics they rest on in one streaming pass, and save everything with a manifest.

>>> import tl_multilingual as tlm
>>> lm = tlm.adapt(model)
>>> stats = tlm.collect_stats(lm, tlm.Corpus.from_dict({"en": [...], "fr": [...]}))
>>> neurons = tlm.identify(stats, method="ternary")
"""

from . import data, evaluate, models, prompts
from .adapters import ModelAdapter, adapt
from .attribution import Attribution, attribute, class_attribution
from .collect import collect_stats
from .compare import Comparison, Series, compare, compare_series
from .corpus import Corpus, Text
from .errors import (
    CorpusError,
    IdentificationError,
    LanguageError,
    MaskError,
    SaveError,
    StatsError,
    TLMultilingualError,
    TLMultilingualWarning,
    UnsupportedModelError,
)
from .evaluate import MultipleChoice, answer_accuracy, choice_accuracy, generate, perplexity
from .experiments import AblationResult, ablation_matrix
from .identify import identify
from .interventions import (
    Edit,
    Interventions,
    ablate,
    ablation_hooks,
    boost,
    intervene,
    patch,
    record,
    steer,
)
from .items import ParallelItem, ParallelItems
from .languages import language_name, normalize_language
from .lens import LensResult, language_lens
from .masks import NeuronMask
from .neurons import LanguageNeurons
from .patching import PatchResult, patch_neurons
from .prompts import LensPrompt
from .sharing import SHARING_CLASSES, Sharing, sharing
from .sharing_experiments import boost_experiment, correct_vs_incorrect, item_correctness
from .stage_effects import StageEffects, stage_effects
from .stages import STAGES, StageMap, map_stages
from .stats import ActivationStats
from .wordtokens import word_tokens

__version__ = "0.1.0"

__all__ = [
    "adapt",
    "ModelAdapter",
    "models",
    "evaluate",
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
    "ablation_matrix",
    "AblationResult",
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
    "SHARING_CLASSES",
    "attribute",
    "Attribution",
    "class_attribution",
    "item_correctness",
    "correct_vs_incorrect",
    "boost_experiment",
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
]
