"""The model layer: the adapter (hooks, batches), tokens, the output head and readout, model builders."""
