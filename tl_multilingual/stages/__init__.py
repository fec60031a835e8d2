"""Layers: the multilingual logit lens and the four-stage map.

Modules in the order data flows: `lens` (the logit lens), `stage_map` (the stages and
the result types), `features` (what a map is fitted to), `segmentation` (the exact
fit and its null tests), `signatures` (Zhang et al.'s signatures and the cautions),
`mapping` (`map_stages`).
"""

from ..errors import moved

# The names of the 0.1.0 module tl_multilingual.stages, with a DeprecationWarning.
__getattr__ = moved(__name__, {
    "STAGES": ("stages.stage_map", "STAGES"),
    "StageMap": ("stages.stage_map", "StageMap"),
    "map_stages": ("stages.mapping", "map_stages"),
    "segment": ("stages.segmentation", "segment"),
    "neuron_features": ("stages.features", "neuron_features"),
    "lens_features": ("stages.features", "lens_features"),
})
