"""A version loaded into a runtime, ready to answer: validation, prediction, output shaping."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from medserve.core.artifacts import ArtifactStore
from medserve.core.errors import MedserveError, ModelLoadError
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.signature import Signature, Validator
from medserve.core.runtimes.base import Runtime, RuntimeMetadata
from medserve.core.runtimes.loader import load_runtime
from medserve.core.series_input import SeriesDecoder
from medserve.core.store.governance import GovernanceStore


@dataclass(frozen=True)
class BatchingConfig:
    """Adaptive batching, opt-in per version via ``serving_config["batching"]``."""

    max_batch_size: int = 32
    max_wait_ms: float = 2.0

    @classmethod
    def from_serving_config(cls, config: dict[str, Any]) -> BatchingConfig | None:
        raw = config.get("batching")
        if not raw:
            return None
        if raw is True:
            return cls()
        return cls(
            max_batch_size=int(raw.get("max_batch_size", cls.max_batch_size)),
            max_wait_ms=float(raw.get("max_wait_ms", cls.max_wait_ms)),
        )


@dataclass(frozen=True)
class OperatingPoint:
    """Where a binary classifier says "positive": the version's recorded threshold on the
    positive class's probability (chosen at training, shown on the card). The served label
    follows it, so the label a clinician sees is the one the card's sensitivity describes."""

    threshold: float
    positive_class: str | None = None  # None: the second class, as scikit-learn orders them
    source: str = "training record"

    def to_dict(self, positive_class: str | None) -> dict[str, Any]:
        return {"value": self.threshold, "positive_class": positive_class, "source": self.source}


def operating_point_of(
    version: ModelVersion, training_run: dict[str, Any] | None
) -> OperatingPoint | None:
    """The version's operating point: ``serving_config["threshold"]`` when an operator set one,
    else the threshold of its training record; None when neither exists (labels as the runtime
    gives them)."""
    configured = version.serving_config.get("threshold")
    if configured is not None:
        positive = version.serving_config.get("positive_class")
        return OperatingPoint(
            float(configured), str(positive) if positive is not None else None, "serving config"
        )
    if not training_run:
        return None
    recorded = training_run.get("threshold") or {}
    value = recorded.get("value")
    if value is None or recorded.get("method") == "not applicable":
        return None
    positive = (training_run.get("outcome") or {}).get("positive_label")
    method = recorded.get("method") or "recorded"
    return OperatingPoint(
        float(value), str(positive) if positive is not None else None, f"training: {method}"
    )


@runtime_checkable
class MemberReporting(Protocol):
    """A runtime made of other models (an ensemble) that reports each member in records."""

    def member_records(self, outputs: dict[str, np.ndarray]) -> list[list[dict[str, Any]]]: ...

    def combiner_summary(self) -> dict[str, Any]: ...


@dataclass
class LoadedModel:
    version: ModelVersion
    runtime: Runtime
    signature: Signature
    metadata: RuntimeMetadata
    operating_point: OperatingPoint | None = None
    validator: Validator = field(init=False)
    batching: BatchingConfig | None = field(init=False)
    class_keys: list[str] | None = field(init=False)
    members: MemberReporting | None = field(init=False)
    series: SeriesDecoder | None = field(init=False)

    def __post_init__(self) -> None:
        self.validator = self.signature.validator()
        # trajectories: decoded beside the validator; None (nothing per request) without series
        self.series = SeriesDecoder(self.signature) if self.signature.series else None
        self.batching = BatchingConfig.from_serving_config(self.version.serving_config)
        labels = self.metadata.class_labels
        self.class_keys = [str(_plain(c)) for c in labels] if labels is not None else None
        # decided once here, so other models pay nothing per row
        self.members = self.runtime if isinstance(self.runtime, MemberReporting) else None
        self.threshold: float | None = None
        self.positive_class: str | None = None
        self.decision: dict[str, Any] | None = None  # named in every answer
        point = self.operating_point
        keys = self.class_keys
        if point is not None and self.is_classifier and keys is not None and len(keys) == 2:
            wanted = point.positive_class
            positive = matching_class_key(wanted, keys) if wanted is not None else None
            if wanted is not None and positive is None:
                raise ModelLoadError(
                    f"model {self.name!r} version {self.number}: its operating point names "
                    f"positive class {point.positive_class!r}, not one of {keys}"
                )
            index = keys.index(positive) if positive is not None else 1
            assert labels is not None
            classes = np.asarray(labels)
            self._positive_index = index
            # label per row: classes[index] where p >= threshold, else the other class
            self._labels_by_decision = classes[[1 - index, index]]
            self.threshold = point.threshold
            self.positive_class = keys[index]
            self.decision = point.to_dict(keys[index])

    @property
    def name(self) -> str:
        return self.version.model_name

    @property
    def number(self) -> int:
        return self.version.version

    @property
    def is_classifier(self) -> bool:
        return self.metadata.task == "classification"

    def predict(self, X: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.runtime.predict(X)
        if self.threshold is not None:
            positive = outputs["probabilities"][:, self._positive_index] >= self.threshold
            outputs["label"] = self._labels_by_decision[positive.astype(np.intp)]
        return outputs

    def predict_records(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Validate and predict records synchronously (CLI and tests; the server batches)."""
        if self.series is not None:
            X = self.series.records_to_matrix(rows)
        else:
            X = self.validator.records_to_matrix(rows)
        return self.records_response(self.predict(X))

    def records_response(self, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
        response = {
            "model": self.name,
            "version": self.number,
            "predictions": self.records_predictions(outputs),
        }
        if self.decision is not None:
            response["threshold"] = self.decision
        if self.members is not None:
            response["ensemble"] = self.members.combiner_summary()
        return response

    def records_predictions(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        if self.is_classifier and self.class_keys is not None:
            labels = outputs["label"].tolist()
            probabilities = outputs["probabilities"].tolist()
            keys = self.class_keys
            predictions = [
                {"label": label, "probabilities": dict(zip(keys, row, strict=True))}
                for label, row in zip(labels, probabilities, strict=True)
            ]
        else:
            predictions = [{"value": value} for value in outputs["value"].tolist()]
        if self.members is not None:
            for prediction, members in zip(
                predictions, self.members.member_records(outputs), strict=True
            ):
                prediction["members"] = members
        return predictions


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def matching_class_key(wanted: Any, keys: list[str]) -> str | None:
    """``wanted`` among the class keys, also as a number (a label 1 recorded, or read from a
    CSV, for the classes 1.0 of a model trained on a float column, and the reverse)."""
    text = str(wanted)
    if text in keys:
        return text
    try:
        number = float(wanted)
    except (TypeError, ValueError):
        return None
    for key in keys:
        try:
            if float(key) == number:
                return key
        except ValueError:
            continue
    return None


def load_version(
    artifacts: ArtifactStore,
    version: ModelVersion,
    *,
    intra_op_threads: int = 1,
    operating_point: OperatingPoint | None = None,
) -> LoadedModel:
    """Load one version into its runtime, verifying the artifact's sha256 first."""
    try:
        path: Path = artifacts.path(version.artifact_sha256)
        runtime = load_runtime(
            version.flavor,
            path,
            intra_op_threads=intra_op_threads,
            # pickle versions exist only if an admin registered them with the trust flag
            trust_pickle=version.flavor == "pickle",
            artifacts=artifacts,  # ensembles load their members from the store
        )
        signature = Signature.model_validate(version.signature)
        return LoadedModel(version, runtime, signature, runtime.metadata(), operating_point)
    except MedserveError as exc:
        raise ModelLoadError(
            f"model {version.model_name!r} version {version.version} failed to load: {exc.message}"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"model {version.model_name!r} version {version.version} failed to load: "
            f"{type(exc).__name__}"
        ) from exc


def load_version_locally(registry: Any, version: ModelVersion) -> LoadedModel:
    """Load a version in-process (``medserve predict``), with the same checks as the server."""
    return load_version(
        registry.artifacts,
        version,
        intra_op_threads=registry.settings.onnx_intra_op_threads,
        operating_point=operating_point_in(registry.store, version),
    )


def operating_point_in(store: Any, version: ModelVersion) -> OperatingPoint | None:
    """The version's operating point read from the store (its training record)."""
    record = GovernanceStore(store).training_run(version.model_name, version.version)
    return operating_point_of(version, record)
