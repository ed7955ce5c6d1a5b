"""The training spec: everything a run needs, in one YAML file that is stored with the version.

Data sources: a CSV or Parquet path (relative to the spec file), or a built-in public data set:
``sklearn:breast_cancer``, ``sklearn:diabetes``, ``lifelines:rossi`` (see ``training/data.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medserve.core.errors import InvalidRequestError

Task = Literal["binary", "multiclass", "regression", "survival"]

CLASSIFIERS = (
    "logistic_regression",
    "random_forest",
    "hist_gradient_boosting",
    "xgboost",
    "lightgbm",
    "svm",
    "mlp",
)
REGRESSORS = (
    "linear_regression",
    "random_forest",
    "hist_gradient_boosting",
    "xgboost",
    "lightgbm",
    "svm",
    "mlp",
)
SURVIVAL = ("cox_ph", "survival_forest")
LOWER_IS_BETTER = frozenset({"mae", "rmse", "brier"})
DEFAULT_METRIC = {
    "binary": "auroc",
    "multiclass": "auroc_macro_ovr",
    "regression": "rmse",
    "survival": "concordance",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Features(_Strict):
    numeric: list[str] | None = Field(
        default=None, description="Numeric inputs; default: every column not named elsewhere."
    )
    categorical: list[str] = Field(default_factory=list)
    drop: list[str] = Field(default_factory=list)
    include: list[str] = Field(
        default_factory=list,
        description="Numeric inputs added to the default list although named elsewhere: a "
        "subgroup column that is also a model input (a subgroup named under numeric or "
        "categorical is an input too).",
    )


class Threshold(_Strict):
    """How the operating threshold of a binary model is chosen, on out-of-fold training
    predictions (never on the test set, which would flatter it)."""

    method: Literal["youden", "fixed", "min_sensitivity"] = "youden"
    value: float = 0.5


class AgeBands(_Strict):
    column: str
    edges: list[float] = Field(default_factory=lambda: [40.0, 60.0])
    name: str = "age_band"


class EvaluationSettings(_Strict):
    bootstrap: int = Field(default=500, ge=0)
    min_n: int = Field(default=30, ge=1)
    min_events: int = Field(
        default=10,
        ge=0,
        description="Survival and binary subgroups: fewest events (binary: outcomes of the "
        "rarer class) for a subgroup to be reported.",
    )
    horizons: list[float] = Field(default_factory=list, description="Survival horizons.")
    decision_thresholds: list[float] = Field(
        default_factory=lambda: [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5]
    )


class TrainingSpec(_Strict):
    name: str
    description: str = ""
    data: str = Field(description="CSV/Parquet path, or sklearn:NAME / lifelines:NAME.")
    task: Task
    target: str | None = Field(default=None, description="Label column (not for survival).")
    positive_label: str | int | float | bool | None = Field(
        default=None, description="Binary: the class whose risk the model outputs."
    )
    time: str | None = None
    event: str | None = None
    horizon: float | None = Field(
        default=None,
        gt=0,
        description="Binary from time-to-event data: the label is 'event by horizon', derived "
        "from the time and event columns; patients censored before it are excluded.",
    )
    patient_id: str | None = Field(
        default=None, description="Rows of one patient never straddle the train/test split."
    )
    features: Features = Field(default_factory=Features)
    subgroups: list[str] = Field(default_factory=list, description="Evaluation only, not inputs.")
    age_bands: AgeBands | None = None
    synthetic_subgroups: list[Literal["sex", "age_band"]] = Field(
        default_factory=list,
        description="Demo only: randomly assigned, clearly labelled subgroup columns.",
    )
    missing: Literal["impute", "drop_rows", "reject"] = "impute"
    algorithms: list[str] = Field(default_factory=lambda: ["logistic_regression"])
    class_weight: Literal["balanced", "none"] = "none"
    cv_folds: int = Field(default=5, ge=2, le=20)
    test_size: float = Field(default=0.2, gt=0.05, lt=0.6)
    seed: int = 42
    selection_metric: str | None = None
    threshold: Threshold = Field(default_factory=Threshold)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    final_fit: Literal["train", "all"] = Field(
        default="train",
        description="'train': the registered model is the one evaluated on the test split. "
        "'all': refit on every row after internal validation (the card says so).",
    )
    range_margin: float = 0.5
    acceptance: list[dict[str, Any]] = Field(default_factory=list)
    card: dict[str, Any] = Field(default_factory=dict, description="Author card statements.")
    card_file: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TrainingSpec:
        if self.horizon is not None:
            if self.task != "binary":
                raise ValueError(
                    "horizon: only for task 'binary' (a survival spec takes evaluation.horizons)"
                )
            if not self.time or not self.event:
                raise ValueError("horizon: needs the 'time' and 'event' columns it is built from")
            if self.target:
                raise ValueError("target: give a target column or a horizon, not both")
        if self.task == "survival":
            if not self.time or not self.event:
                raise ValueError("a survival spec needs 'time' and 'event' columns")
            if self.features.categorical:
                raise ValueError(
                    "features.categorical: survival models take numeric inputs only; "
                    "encode the categories as 0/1 columns"
                )
            allowed: tuple[str, ...] = SURVIVAL
        else:
            if not self.target and self.horizon is None:
                raise ValueError(f"a {self.task} spec needs a 'target' column (or a horizon)")
            allowed = REGRESSORS if self.task == "regression" else CLASSIFIERS
        unknown = [a for a in self.algorithms if a not in allowed]
        if unknown or not self.algorithms:
            raise ValueError(
                f"algorithms {unknown} are not available for {self.task}; choose from {allowed}"
            )
        return self

    @property
    def label_column(self) -> str | None:
        """The label column: the target, or the one derived from time and event at horizon."""
        if self.horizon is not None:
            return f"{self.event}_by_{self.horizon:g}"
        return self.target

    @property
    def metric(self) -> str:
        return self.selection_metric or DEFAULT_METRIC[self.task]

    @property
    def subgroup_columns(self) -> list[str]:
        columns = list(self.subgroups)
        if self.age_bands and self.age_bands.name not in columns:
            columns.append(self.age_bands.name)
        columns += [f"synthetic_{s}" for s in self.synthetic_subgroups]
        return columns


def load_spec(path: Path) -> tuple[TrainingSpec, str, Path]:
    """(spec, its text as stored, the folder relative paths resolve against)."""
    try:
        text = path.read_text()
        raw = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidRequestError(f"cannot read the spec {path}: {exc}") from exc
    spec = parse_spec(raw)
    if spec.card_file:
        card_path = (path.parent / spec.card_file).resolve()
        try:
            statements = yaml.safe_load(card_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidRequestError(f"cannot read the card file {card_path}: {exc}") from exc
        spec = spec.model_copy(update={"card": {**statements, **spec.card}})
    return spec, text, path.parent


def invalid_spec(what: str, exc: ValidationError) -> InvalidRequestError:
    """The error of a spec pydantic refused: each problem by field and rule (pydantic's error
    type), never the value given. Shared by every kind of spec ``medserve train`` reads."""
    problems = [
        {"field": ".".join(map(str, e["loc"])), "rule": e["type"], "message": e["msg"]}
        for e in exc.errors()
    ]
    return InvalidRequestError(
        f"the {what} is invalid: " + "; ".join(f"{p['field']}: {p['message']}" for p in problems),
        details=problems,
    )


def parse_spec(raw: Any) -> TrainingSpec:
    try:
        return TrainingSpec.model_validate(raw)
    except ValidationError as exc:
        raise invalid_spec("training spec", exc) from exc
