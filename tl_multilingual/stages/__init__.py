"""Layers: the multilingual logit lens and the four-stage map."""

from .. import _forward_old_names

__getattr__ = _forward_old_names(__name__, "segmentation")  # 0.1.0 names of tl_multilingual.stages
