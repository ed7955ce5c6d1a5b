"""The demo ensemble: the two breast-cancer demo models averaged, served as one model."""

from __future__ import annotations

from medserve.core.errors import AliasNotFoundError, ModelNotFoundError
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry
from medserve.features.composition.register import register_ensemble

ENSEMBLE_MODEL = "breast-cancer-ensemble"
MEMBERS = ("breast-cancer", "breast-cancer-rf")


def register_demo_ensemble(registry: Registry) -> ModelVersion:
    """Register (once) the production ensemble of the two breast-cancer demo models.

    Its members are pinned to the numbers their ``production`` aliases point at now.
    """
    try:
        number = registry.store.get_alias(ENSEMBLE_MODEL, "production")
        return registry.store.get_version(ENSEMBLE_MODEL, number)
    except (ModelNotFoundError, AliasNotFoundError):
        pass
    return register_ensemble(
        registry,
        ENSEMBLE_MODEL,
        {
            "members": [{"model": name, "version": "production"} for name in MEMBERS],
            "combiner": "weighted_mean",
        },
        alias="production",
        description=(
            "DEMO: mean of the breast-cancer logistic regression and random forest "
            "probabilities; each member's output and contribution is in every response. "
            "Demo data, not clinically validated; the ensemble itself was not evaluated."
        ),
        tags={"demo": "true", "dataset": "scikit-learn bundled"},
        created_by="medserve-demo",
    )
