"""Serving backends: uvicorn (``serving/server.py``, the embedded default) and Ray Serve
(``ray.py``, for replicas across nodes), both running the same app and data plane."""
