"""Model composition: ensembles of registered versions served as one model."""

from medserve.features.composition.ensemble import EnsembleMember, EnsembleSpec

__all__ = ["EnsembleMember", "EnsembleSpec"]
