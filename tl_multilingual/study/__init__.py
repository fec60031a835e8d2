"""The study: its steps, figures and report."""

from ..errors import moved

# The names of the 0.1.0 module tl_multilingual.study, with a DeprecationWarning.
__getattr__ = moved(__name__, {
    "StudySettings": ("study.steps", "StudySettings"),
    "Study": ("study.pipeline", "Study"),
    "DEMO_SETTINGS": ("study.pipeline", "DEMO_SETTINGS"),
    "check_output_folder": ("study.pipeline", "check_output_folder"),
})
