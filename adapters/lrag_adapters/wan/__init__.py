"""Wan2.1-T2V-1.3B causal backbones: Self-Forcing, Causal-Forcing, CausVid, LongLive."""
