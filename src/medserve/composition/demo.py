"""The demo ensemble: the two breast-cancer demo models averaged, served as one model."""

from __future__ import annotations

from medserve.composition.register import register_ensemble
from medserve.errors import AliasNotFoundError, ModelNotFoundError
from medserve.registry.entities import ModelVersion
from medserve.registry.service import Registry

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
