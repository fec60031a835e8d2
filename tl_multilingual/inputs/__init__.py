"""Inputs: language codes, corpora, parallel items, lens prompts and word tokens."""
