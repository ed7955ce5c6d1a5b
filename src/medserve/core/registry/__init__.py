"""Registered models, immutable versions, aliases with history, signatures."""
