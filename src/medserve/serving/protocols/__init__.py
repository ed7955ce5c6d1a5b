"""Wire protocols: Open Inference Protocol v2 and the records (v1 JSON) API."""
