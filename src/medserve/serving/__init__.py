"""Serving: a transport-free data plane, a model manager, batching, and the HTTP app."""
