"""features/governance layer."""
