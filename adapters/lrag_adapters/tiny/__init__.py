"""Tiny causal video transformer: the built-in default backbone."""
