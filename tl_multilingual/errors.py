"""How the library speaks to its user: its exception family, its warnings, its logger.

Every error the library raises on purpose derives from [`TLMultilingualError`][tl_multilingual.errors.TLMultilingualError],
so ``except tlm.TLMultilingualError`` catches them all. Errors about bad input also
derive from `ValueError`.

Every caution (data that contradict a method's assumption, a search that ended at its
bound, truncated texts) is a [`TLMultilingualWarning`][tl_multilingual.errors.TLMultilingualWarning] raised through
[`warn()`][tl_multilingual.errors.warn], which points the warning at the caller's own line, outside the library.
Progress and information go to the ``tl_multilingual`` [`logger`][tl_multilingual.errors.logger] (silent unless
the application configures logging, e.g. ``logging.basicConfig(level="INFO")``).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger("tl_multilingual")
"""The library's logger: progress (``INFO``) and details (``DEBUG``)."""

_PACKAGE = str(Path(__file__).resolve().parent) + os.sep


class TLMultilingualWarning(UserWarning):
    """Base class of every warning raised by tl_multilingual."""


def warn(message: str, category: type[Warning] = TLMultilingualWarning) -> None:
    """Raise a warning attributed to the first caller outside the library.

    Args:
        message: one or more plain sentences saying what is wrong and what to do.
        category: the warning class (default [`TLMultilingualWarning`][tl_multilingual.errors.TLMultilingualWarning]).
    """
    level, frame = 2, sys._getframe(1)
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)  # which skips the import system's own frames


def moved(package: str, table: Mapping[str, tuple[str, str | None]]) -> Callable[[str], Any]:
    """The module ``__getattr__`` (PEP 562) of a package whose released names moved.

    Args:
        package: the package's ``__name__``.
        table: per old name, its new home: ``(module, name)`` with the module relative
            to ``tl_multilingual`` (``("experiments.deactivation", "deactivation_matrix")``),
            or ``(module, None)`` for a module that moved.

    Returns:
        A ``__getattr__`` that resolves an old name to its new home with one
        `DeprecationWarning` naming the new home, and keeps the value in the package
        so that later uses do not warn again. Any other name raises `AttributeError`.
    """
    root = __name__.rpartition(".")[0]

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        home, attribute = table[name]
        module = importlib.import_module(f"{root}.{home}")
        value = module if attribute is None else getattr(module, attribute)
        new = f"{root}.{home}" + ("" if attribute is None else f".{attribute}")
        warn(f"{package}.{name} is now {new}; the old name will be removed in the next release",
             DeprecationWarning)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


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


class HubError(TLMultilingualError, OSError):
    """The Hugging Face Hub could not be reached, or refused a push or a download (no
    network and not cached, no such repository or revision, no permission)."""


class ContextLengthError(CorpusError):
    """A text longer than the model's context (or the ``max_length`` asked for), under
    ``overflow="error"``, or one that no truncation can fit."""


class GradientError(TLMultilingualError, RuntimeError):
    """A computation that needs gradients cannot get them (e.g. inference tensors)."""


class TruncationWarning(TLMultilingualWarning):
    """Texts were truncated or split to fit the model's context (``overflow=``)."""


class DistributedError(TLMultilingualError, RuntimeError):
    """A collective operation across processes failed: another process stopped, or
    nothing arrived within the process group's timeout (see [`distributed`][tl_multilingual.distributed])."""
