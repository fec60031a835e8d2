"""Experiments: deactivation, per-stage effects, paper B's sharing experiments, checkpoint comparison."""

from .. import _forward_old_names

__getattr__ = _forward_old_names(__name__, "deactivation")  # 0.1.0 names of tl_multilingual.experiments
