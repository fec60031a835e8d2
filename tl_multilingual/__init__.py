"""tl_multilingual: language neurons of TransformerLens models."""

from .corpus import Corpus, Text
from .errors import (
    CorpusError,
    IdentificationError,
    LanguageError,
    MaskError,
    SaveError,
    StatsError,
    TLMultilingualError,
    UnsupportedModelError,
)
from .identify import identify
from .languages import language_name, normalize_language
from .masks import NeuronMask
from .neurons import LanguageNeurons
from .stats import ActivationStats

__version__ = "0.1.0"
