"""Runtimes: ONNX Runtime, scikit-learn via skops, XGBoost, LightGBM behind one protocol."""

from medserve.core.runtimes.base import Runtime, RuntimeMetadata, TensorSpec

__all__ = ["Runtime", "RuntimeMetadata", "TensorSpec"]
