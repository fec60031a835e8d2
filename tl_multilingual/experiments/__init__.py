"""Experiments: the engine, deactivation, per-stage effects, Wang et al.'s sharing
experiments, checkpoint comparison."""

from ..errors import moved

# The names of the 0.1.0 module tl_multilingual.experiments, with a DeprecationWarning.
__getattr__ = moved(__name__, {
    "ablation_matrix": ("experiments.deactivation", "deactivation_matrix"),
    "AblationResult": ("experiments.deactivation", "DeactivationResult"),
    "variant_mask": ("experiments.deactivation", "variant_mask"),
})
