"""The study: its steps, figures and report."""

from .. import _forward_old_names

__getattr__ = _forward_old_names(__name__, "pipeline")  # 0.1.0 names of tl_multilingual.study
