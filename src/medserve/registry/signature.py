"""Input signatures: what a model accepts, and a validator that says precisely what is wrong.

A signature is stored as JSON with each version and is editable after registration (ranges,
categories, missing-value policy, identifier flags). The validator is used on the serving hot
path, so it is compiled once per signature and converts rows straight to the runtime's matrix.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

FeatureType = Literal["float", "integer", "boolean", "string"]
MissingPolicy = Literal["reject", "impute"]


class FeatureSpec(BaseModel):
    name: str
    type: FeatureType = "float"
    required: bool = True
    missing: MissingPolicy = Field(
        default="reject",
        description="What happens to an absent, null or NaN value: reject the row, or impute.",
    )
    impute_value: float | int | str | bool | None = None
    minimum: float | None = None
    maximum: float | None = None
    categories: list[str | int | float | bool] | None = None
    identifier: bool = Field(
        default=False,
        description="A patient identifier (PHI): de-identified before anything is stored.",
    )
    unit: str | None = None
    description: str = ""


class OutputSpec(BaseModel):
    name: str
    datatype: str  # Open Inference Protocol v2 datatype
    shape: list[int]
    description: str = ""


class Signature(BaseModel):
    inputs: list[FeatureSpec]
    outputs: list[OutputSpec] = Field(default_factory=list)
    task: Literal["classification", "regression"] | None = None
    class_labels: list[Any] | None = None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.inputs]
