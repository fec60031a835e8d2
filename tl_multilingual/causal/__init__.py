"""Causal tools: interventions on neurons, evaluation, patching and attribution."""
