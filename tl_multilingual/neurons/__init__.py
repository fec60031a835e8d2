"""From activations to neurons: statistics, identification, neuron classes, masks, per-input sharing."""

from .. import _forward_old_names

__getattr__ = _forward_old_names(__name__, "classes")  # 0.1.0 names of tl_multilingual.neurons
