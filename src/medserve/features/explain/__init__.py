"""Explanations: per-prediction attributions and global importance."""
