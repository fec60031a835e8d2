"""The library's exception family.

Every error the library raises on purpose derives from :class:`TLMultilingualError`,
so ``except tlm.TLMultilingualError`` catches them all. Errors about bad input also
derive from :class:`ValueError`.
"""

from __future__ import annotations


class TLMultilingualError(Exception):
    """Base class of every error raised by tl_multilingual."""


class UnsupportedModelError(TLMultilingualError, TypeError):
    """The model lacks something the library needs (an MLP, causal attention, a hook...)."""


class LanguageError(TLMultilingualError, ValueError):
    """A language code or name that cannot be resolved."""


class CorpusError(TLMultilingualError, ValueError):
    """A corpus that is empty, malformed or inconsistent."""


class StatsError(TLMultilingualError, ValueError):
    """Activation statistics that are corrupt, or incompatible with each other."""


class IdentificationError(TLMultilingualError, ValueError):
    """Neuron identification cannot run on the given statistics or parameters."""


class MaskError(TLMultilingualError, ValueError):
    """A neuron mask with the wrong shape, type or contents."""


class SaveError(TLMultilingualError, OSError):
    """A result could not be written or read back."""
