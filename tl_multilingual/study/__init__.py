"""The study: its steps, figures and report."""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    """Names of the 0.1.0 module ``tl_multilingual.study``, now in ``tl_multilingual.study.pipeline``
    (kept, with a DeprecationWarning, until the next release)."""
    if name.startswith("__"):
        raise AttributeError(name)
    module = importlib.import_module(f"{__name__}.pipeline")
    if not hasattr(module, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"{__name__}.{name} is now {module.__name__}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(module, name)
