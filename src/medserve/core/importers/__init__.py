"""Bringing models in: format detection, safety checks, and imports from other tools (MLflow)."""

from medserve.core.importers.formats import FORMATS, SAFE_FORMATS, detect_format, ensure_safe

__all__ = ["FORMATS", "SAFE_FORMATS", "detect_format", "ensure_safe"]
