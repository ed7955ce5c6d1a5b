"""Import an MLflow model directory (``sklearn`` flavor) without needing MLflow installed.

We read the ``MLmodel`` YAML ourselves: it names the serialized estimator, its serialization
format and the signature. skops-serialized models load safely; cloudpickle/pickle ones run code
on load and are refused unless the caller passes the trust flag.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medserve.core.errors import (
    InvalidRequestError,
    ModelLoadError,
    UnsupportedFormatError,
)
from medserve.core.importers.formats import ensure_safe

_PICKLE_FORMATS = frozenset({"pickle", "cloudpickle"})


@dataclass(frozen=True)
class ImportedModel:
    """What an MLflow model directory held, ready for registration.

    ``columns`` is MLflow's column signature as ``(name, mlflow type)`` pairs, mlflow types being
    ``double``, ``float``, ``long``, ``integer``, ``boolean``, ``string``, ``binary``,
    ``datetime``; empty when the model has no column-based signature.
    """

    estimator: Any
    feature_names: list[str]
    columns: list[tuple[str, str]]
    serialization_format: str
    mlflow_version: str | None
    sklearn_version: str | None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    mlmodel: dict[str, Any] = field(default_factory=dict)


def read_mlmodel(path: Path) -> dict[str, Any]:
    mlmodel = Path(path) / "MLmodel"
    if not mlmodel.is_file():
        raise UnsupportedFormatError(f"{Path(path).name!r} has no MLmodel file")
    try:
        doc = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InvalidRequestError(f"the MLmodel file is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidRequestError("the MLmodel file is not a YAML mapping")
    return doc


def read_mlflow_model(path: Path, *, trust_pickle: bool) -> ImportedModel:
    path = Path(path)
    doc = read_mlmodel(path)
    flavors = doc.get("flavors") or {}
    flavor = flavors.get("sklearn")
    if not isinstance(flavor, dict):
        raise UnsupportedFormatError(
            "only MLflow models with the 'sklearn' flavor can be imported; this one has: "
            + (", ".join(sorted(flavors)) or "no flavors")
        )
    fmt = str(flavor.get("serialization_format", "cloudpickle"))
    artifact = _inside(path, str(flavor.get("pickled_model", "model.pkl")))
    if fmt == "skops":
        # lazy import (pulls scikit-learn and skops)
        from medserve.core.runtimes.skops_runtime import load_skops_estimator  # noqa: PLC0415

        estimator = load_skops_estimator(artifact, trust=trust_pickle)
    elif fmt in _PICKLE_FORMATS:
        ensure_safe("pickle", trust_pickle=trust_pickle)
        estimator = _unpickle(artifact)
    else:
        raise UnsupportedFormatError(f"unknown MLflow sklearn serialization format {fmt!r}")

    columns, outputs = _signature(doc.get("signature"))
    names = getattr(estimator, "feature_names_in_", None)
    feature_names = [str(n) for n in names] if names is not None else [c[0] for c in columns]
    sklearn_version = flavor.get("sklearn_version")
    mlflow_version = doc.get("mlflow_version")
    return ImportedModel(
        estimator=estimator,
        feature_names=feature_names,
        columns=columns,
        serialization_format=fmt,
        mlflow_version=str(mlflow_version) if mlflow_version else None,
        sklearn_version=str(sklearn_version) if sklearn_version else None,
        outputs=outputs,
        mlmodel=doc,
    )


def _inside(root: Path, relative: str) -> Path:
    """Resolve a path named in MLmodel, refusing one that escapes the model directory."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise InvalidRequestError("the MLmodel file points outside the model directory")
    if not target.is_file():
        raise InvalidRequestError(f"the MLmodel file names {relative!r}, which does not exist")
    return target


def _unpickle(artifact: Path) -> Any:
    # only reached with the explicit trust flag; cloudpickle output is readable by pickle
    try:
        with artifact.open("rb") as fh:
            return pickle.load(fh)
    except Exception as exc:
        raise ModelLoadError(f"could not unpickle the MLflow model: {type(exc).__name__}") from exc


def _signature(raw: Any) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """MLflow stores ``inputs``/``outputs`` as JSON strings inside the YAML."""
    if not isinstance(raw, dict):
        return [], []
    inputs = _json_list(raw.get("inputs"))
    outputs = _json_list(raw.get("outputs"))
    columns = [
        (str(spec["name"]), str(spec.get("type", "double")))
        for spec in inputs
        if isinstance(spec, dict) and "name" in spec and spec.get("type") != "tensor"
    ]
    return columns, outputs


def _json_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InvalidRequestError(f"the MLmodel signature is not valid JSON: {exc}") from exc
    return list(value) if isinstance(value, list) else []
