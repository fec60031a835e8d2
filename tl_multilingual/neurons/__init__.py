"""From activations to neurons: statistics, identification, neuron classes, masks, per-input sharing."""

from ..errors import moved

# The names of the 0.1.0 module tl_multilingual.neurons, with a DeprecationWarning.
__getattr__ = moved(__name__, {
    "LanguageNeurons": ("neurons.classes", "LanguageNeurons"),
    "CLASSES": ("neurons.classes", "CLASSES"),
})
