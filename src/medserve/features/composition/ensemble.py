"""Ensembles: one served version made of other registered versions and a combiner.

An ensemble version's artifact is a small JSON document that pins each member (model, version
number, artifact sha256, flavor, signature). Versions are immutable, so the snapshot is exact:
serving an ensemble loads exactly the bytes its members were registered with, each checked
against its sha256 like any load.

Combiners (the maths is in :func:`combine_weighted_mean` and :func:`combine_logistic`):

* ``weighted_mean``: the weighted average of the members' class probabilities (classifiers) or
  values (regressors). Member *i* contributes ``w_i * p_i / sum(w)``; contributions sum to the
  ensemble's output.
* ``logistic`` (stacking, binary classifiers): ``p = sigmoid(b + sum_i c_i * logit(p_i))`` where
  ``p_i`` is member *i*'s probability of the positive class, clipped to ``[1e-6, 1 - 1e-6]`` so a
  member that says exactly 0 or 1 stays finite. Member *i* contributes ``c_i * logit(p_i)``;
  ``b`` plus the contributions is ``logit(p)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medserve.core.errors import InvalidRequestError, MedserveError, ModelLoadError
from medserve.core.registry.signature import Signature
from medserve.core.runtimes._common import classifier_outputs, plain_labels, regressor_outputs
from medserve.core.runtimes.base import Runtime, RuntimeMetadata, Task, TensorSpec
from medserve.core.runtimes.loader import load_runtime

if TYPE_CHECKING:
    from medserve.core.artifacts import ArtifactStore

Combiner = Literal["weighted_mean", "logistic"]
Label = str | int | float | bool
ARTIFACT_FORMAT: Final = "medserve-ensemble"
RUNTIME_NAME: Final = "medserve-ensemble"
LOGIT_EPS: Final = 1e-6


class EnsembleMember(BaseModel):
    """One member as an author declares it; ``version`` may be an alias, pinned at registration."""

    model_config = ConfigDict(extra="forbid")

    model: str
    version: int | str = Field(
        default="production",
        description="A version number, or an alias resolved to its number at registration.",
    )
    weight: float = Field(
        default=1.0,
        allow_inf_nan=False,
        description="weighted_mean: the member's (positive) weight; logistic: its coefficient.",
    )


class EnsembleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    members: list[EnsembleMember] = Field(min_length=2)
    combiner: Combiner = "weighted_mean"
    intercept: float = Field(default=0.0, allow_inf_nan=False, description="logistic only")
    threshold: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Binary classifiers: the label is the positive class when its combined "
        "probability is at least this; without it, the most probable class.",
    )
    positive_class: Label | None = Field(
        default=None,
        description="Binary classifiers: the class whose probability the logistic combiner "
        "and the threshold use (default: the second class label, as scikit-learn orders them).",
    )

    @model_validator(mode="after")
    def _check(self) -> EnsembleSpec:
        if self.combiner == "weighted_mean":
            for i, member in enumerate(self.members):
                if member.weight <= 0:
                    raise ValueError(
                        f"members[{i}] ({member.model}): a weighted_mean weight must be > 0"
                    )
            if self.intercept != 0:
                raise ValueError("intercept is only used by the logistic combiner")
        return self

    @classmethod
    def parse(cls, raw: EnsembleSpec | dict[str, Any]) -> EnsembleSpec:
        """The spec, or an ``InvalidRequestError`` that says what is wrong with it."""
        if isinstance(raw, EnsembleSpec):
            return raw
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = [
                {
                    "field": ".".join(str(p) for p in error["loc"]) or "spec",
                    "rule": error["type"],
                    "message": error["msg"],
                }
                for error in exc.errors()
            ]
            summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
            raise InvalidRequestError(
                f"invalid ensemble spec: {summary}", details=problems
            ) from None


class PinnedMember(BaseModel):
    """A member as stored in the ensemble's artifact: an exact, immutable version."""

    model_config = ConfigDict(extra="forbid")

    model: str
    version: int
    weight: float
    artifact_sha256: str
    flavor: str
    signature: dict[str, Any]


class EnsembleArtifact(BaseModel):
    """The JSON document stored as an ensemble version's artifact (flavor ``ensemble``)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["medserve-ensemble"] = ARTIFACT_FORMAT
    format_version: Literal[1] = 1
    combiner: Combiner
    intercept: float = 0.0
    threshold: float | None = None
    positive_class: Label | None = None
    task: Task
    class_labels: list[Label] | None = None
    inputs: list[str]  # the ensemble's input names, in its signature order
    members: list[PinnedMember]

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True).encode()

    @classmethod
    def from_path(cls, path: Path) -> EnsembleArtifact:
        try:
            return cls.model_validate_json(Path(path).read_bytes())
        except ValidationError as exc:
            raise ModelLoadError(
                f"not a medserve ensemble artifact: {exc.errors()[0]['msg']}"
            ) from None


# --------------------------------------------------------------------------------------------
# Combiner maths
# --------------------------------------------------------------------------------------------


def combine_weighted_mean(
    scores: list[npt.NDArray[Any]], weights: list[float]
) -> tuple[npt.NDArray[np.float64], list[npt.NDArray[np.float64]]]:
    """``(sum_i w_i s_i / sum(w), [w_i s_i / sum(w)])``: the combined score and each share."""
    total = float(sum(weights))
    contributions = [
        (w / total) * np.asarray(s, dtype=np.float64) for w, s in zip(weights, scores, strict=True)
    ]
    return np.sum(contributions, axis=0), contributions


def logit(p: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    clipped = np.clip(np.asarray(p, dtype=np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(clipped) - np.log1p(-clipped)


def sigmoid(z: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # no overflow


def combine_logistic(
    positive: list[npt.NDArray[Any]], coefficients: list[float], intercept: float
) -> tuple[npt.NDArray[np.float64], list[npt.NDArray[np.float64]]]:
    """``(sigmoid(b + sum_i c_i logit(p_i)), [c_i logit(p_i)])`` for positive-class
    probabilities ``p_i``."""
    contributions = [c * logit(p) for c, p in zip(coefficients, positive, strict=True)]
    return sigmoid(intercept + np.sum(contributions, axis=0)), contributions


# --------------------------------------------------------------------------------------------
# The runtime
# --------------------------------------------------------------------------------------------


def member_keys(members: list[PinnedMember]) -> list[str]:
    """Output-tensor keys: the model name, or ``model.vN`` when a model appears twice."""
    names = [m.model for m in members]
    return [m.model if names.count(m.model) == 1 else f"{m.model}.v{m.version}" for m in members]


def _label_key(value: Any) -> tuple[str, Any]:
    """Compare labels as a JSON client sees them (True is not 1)."""
    value = value.item() if isinstance(value, np.generic) else value
    return (type(value).__name__, value)


@dataclass(frozen=True)
class _Member:
    pinned: PinnedMember
    key: str
    runtime: Runtime
    columns: npt.NDArray[np.intp] | None  # ensemble columns it reads; None: all, in order
    numeric: bool  # the member gets a float32 matrix
    order: npt.NDArray[np.intp] | None  # member probability columns in ensemble label order


def _object_to_float32(sub: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """A mixed-signature (object) sub-matrix as float32; ``None`` (missing) becomes NaN."""
    missing = np.equal(sub, cast(Any, None))
    if missing.any():
        sub = np.where(missing, np.nan, sub)
    return np.ascontiguousarray(sub, dtype=np.float32)


class EnsembleRuntime:
    """Runs each member on its own columns and combines their outputs."""

    def __init__(self, artifact: EnsembleArtifact, runtimes: list[Runtime]) -> None:
        self.artifact = artifact
        self.classifier = artifact.task == "classification"
        labels = list(artifact.class_labels or [])
        self._labels = np.asarray(
            labels, dtype=object if any(isinstance(v, str) for v in labels) else None
        )
        self._positive = 0
        if self.classifier and len(labels) == 2:
            positive = artifact.positive_class if artifact.positive_class is not None else labels[1]
            self._positive = [_label_key(v) for v in labels].index(_label_key(positive))
        self._weights = [m.weight for m in artifact.members]
        self.members = [
            self._member(pinned, key, runtime)
            for pinned, key, runtime in zip(
                artifact.members, member_keys(artifact.members), runtimes, strict=True
            )
        ]
        self._metadata = self._build_metadata()

    def _member(self, pinned: PinnedMember, key: str, runtime: Runtime) -> _Member:
        where = f"ensemble member {pinned.model!r} version {pinned.version}"
        signature = Signature.model_validate(pinned.signature)
        try:
            index = [self.artifact.inputs.index(name) for name in signature.feature_names]
        except ValueError:
            raise ModelLoadError(f"{where} reads an input the ensemble does not have") from None
        columns = (
            None
            if index == list(range(len(self.artifact.inputs)))
            else np.asarray(index, dtype=np.intp)
        )
        meta = runtime.metadata()
        if meta.task != self.artifact.task:
            raise ModelLoadError(f"{where} is a {meta.task} model, not {self.artifact.task}")
        order = None
        if self.classifier:
            mine = [_label_key(v) for v in meta.class_labels or []]
            wanted = [_label_key(v) for v in self.artifact.class_labels or []]
            if sorted(mine) != sorted(wanted):
                raise ModelLoadError(f"{where} no longer has the ensemble's class labels")
            if mine != wanted:
                order = np.asarray([mine.index(k) for k in wanted], dtype=np.intp)
        return _Member(pinned, key, runtime, columns, signature.all_numeric, order)

    @classmethod
    def from_path(
        cls, path: Path, *, artifacts: ArtifactStore | None, intra_op_threads: int = 1
    ) -> EnsembleRuntime:
        if artifacts is None:
            raise ModelLoadError("an ensemble needs the artifact store to load its members")
        artifact = EnsembleArtifact.from_path(path)
        runtimes = [
            load_member(artifacts, member, intra_op_threads=intra_op_threads)
            for member in artifact.members
        ]
        return cls(artifact, runtimes)

    # -- Runtime protocol ---------------------------------------------------------------------
    def metadata(self) -> RuntimeMetadata:
        return self._metadata

    def predict(self, X: npt.NDArray[Any]) -> dict[str, np.ndarray]:
        scores = [self._score(member, X) for member in self.members]
        if not self.classifier:
            value, contributions = combine_weighted_mean(scores, self._weights)
            outputs: dict[str, np.ndarray] = {"value": value.astype(np.float32)}
        else:
            if self.artifact.combiner == "logistic":
                positive = [s[:, self._positive] for s in scores]
                p, contributions = combine_logistic(
                    positive, self._weights, self.artifact.intercept
                )
                probabilities = np.empty((len(p), 2), dtype=np.float64)
                probabilities[:, self._positive] = p
                probabilities[:, 1 - self._positive] = 1.0 - p
            else:
                probabilities, contributions = combine_weighted_mean(scores, self._weights)
            outputs = {
                "label": self._label(probabilities),
                "probabilities": probabilities.astype(np.float32),
            }
        score_name = "probabilities" if self.classifier else "value"
        for member, score, contribution in zip(self.members, scores, contributions, strict=True):
            outputs[f"member.{member.key}.{score_name}"] = score.astype(np.float32)
            outputs[f"member.{member.key}.contribution"] = contribution
        return outputs

    def _score(self, member: _Member, X: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        sub = X if member.columns is None else X[:, member.columns]
        if member.numeric and sub.dtype != np.float32:
            sub = _object_to_float32(sub)
        out = member.runtime.predict(sub)
        if not self.classifier:
            return np.asarray(out["value"], dtype=np.float64).reshape(-1)
        probabilities = np.asarray(out["probabilities"], dtype=np.float64)
        return probabilities if member.order is None else probabilities[:, member.order]

    def _label(self, probabilities: npt.NDArray[np.float64]) -> np.ndarray:
        threshold = self.artifact.threshold
        if threshold is None:
            chosen = np.argmax(probabilities, axis=1)
        else:
            chosen = np.where(
                probabilities[:, self._positive] >= threshold, self._positive, 1 - self._positive
            )
        return np.asarray(self._labels[chosen])

    def _build_metadata(self) -> RuntimeMetadata:
        libraries: dict[str, str] = {}
        for member in self.members:
            libraries.update(member.runtime.metadata().library_versions)
        labels = list(self.artifact.class_labels or [])
        if self.classifier:
            k = len(labels)
            outputs = classifier_outputs(self._labels, k)
            score, score_shape = "probabilities", [-1, k]
            share_shape = [-1] if self.artifact.combiner == "logistic" else [-1, k]
        else:
            outputs = regressor_outputs("FP32")
            score, score_shape, share_shape = "value", [-1], [-1]
        for member in self.members:
            outputs += [
                TensorSpec(f"member.{member.key}.{score}", "FP32", score_shape),
                TensorSpec(f"member.{member.key}.contribution", "FP64", share_shape),
            ]
        return RuntimeMetadata(
            runtime=RUNTIME_NAME,
            task=self.artifact.task,
            n_features=len(self.artifact.inputs),
            class_labels=labels if self.classifier else None,
            outputs=outputs,
            library_versions=libraries,
        )

    # -- records response (see LoadedModel) --------------------------------------------------
    def member_records(self, outputs: dict[str, np.ndarray]) -> list[list[dict[str, Any]]]:
        """Per prediction, each member's own output and its contribution to the ensemble's."""
        keys = [str(v) for v in plain_labels(list(self.artifact.class_labels or []))]
        score_name = "probabilities" if self.classifier else "value"
        n = len(next(iter(outputs.values())))
        rows: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        for member in self.members:
            scores = outputs[f"member.{member.key}.{score_name}"].tolist()
            shares = outputs[f"member.{member.key}.contribution"].tolist()
            for row, score, share in zip(rows, scores, shares, strict=True):
                entry: dict[str, Any] = {
                    "model": member.pinned.model,
                    "version": member.pinned.version,
                    "weight": member.pinned.weight,
                }
                if self.classifier:
                    entry["probabilities"] = dict(zip(keys, score, strict=True))
                    entry["contribution"] = (
                        dict(zip(keys, share, strict=True)) if isinstance(share, list) else share
                    )
                else:
                    entry["value"] = score
                    entry["contribution"] = share
                row.append(entry)
        return rows

    def combiner_summary(self) -> dict[str, Any]:
        """How to read the contributions (once per response, not per row)."""
        a = self.artifact
        summary: dict[str, Any] = {"combiner": a.combiner}
        if a.combiner == "logistic":
            positive = plain_labels(list(a.class_labels or []))[self._positive]
            summary.update(
                intercept=a.intercept,
                positive_class=positive,
                contribution="coefficient * logit(member probability of the positive class); "
                "intercept + sum of contributions = logit(ensemble probability)",
            )
        elif self.classifier:
            summary["contribution"] = (
                "weight * member probability / sum of weights, per class; "
                "contributions sum to the ensemble probability"
            )
        else:
            summary["contribution"] = (
                "weight * member value / sum of weights; contributions sum to the ensemble value"
            )
        if a.threshold is not None:
            summary["threshold"] = a.threshold
        return summary


def load_member(
    artifacts: ArtifactStore, member: PinnedMember, *, intra_op_threads: int = 1
) -> Runtime:
    """Load one pinned member from the artifact store (sha256 checked); errors name it."""

    where = f"ensemble member {member.model!r} version {member.version}"
    if member.flavor == "ensemble":
        raise ModelLoadError(f"{where} is itself an ensemble; ensembles do not nest")
    try:
        return load_runtime(
            member.flavor,
            artifacts.path(member.artifact_sha256),
            intra_op_threads=intra_op_threads,
            # pickle versions exist only if an admin registered them with the trust flag
            trust_pickle=member.flavor == "pickle",
        )
    except MedserveError as exc:
        raise ModelLoadError(f"{where} failed to load: {exc.message}") from exc
    except Exception as exc:
        raise ModelLoadError(f"{where} failed to load: {type(exc).__name__}") from exc
