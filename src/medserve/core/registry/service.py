"""Registration: turn what an author brings into an immutable, servable, verified version.

This is where the safety rules meet: unsafe formats are refused (unless trusted), every artifact is
stored content-addressed, scikit-learn models are converted to ONNX only when the converted model
provably gives the same answers on the registration sample, and the choice is recorded.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import platform
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medserve.core.artifacts import ArtifactStore, open_artifact_store
from medserve.core.errors import (
    AlreadyExistsError,
    InvalidRequestError,
    ModelNotFoundError,
    UnsupportedFormatError,
)
from medserve.core.extensions import emit
from medserve.core.importers import detect_format, ensure_safe
from medserve.core.registry.entities import AliasEvent, ModelVersion
from medserve.core.registry.events import AliasMoved, VersionRegistered
from medserve.core.registry.signature import (
    OutputSpec,
    Signature,
    infer_signature,
    signature_from_feature_names,
    signature_from_mlflow,
)
from medserve.core.runtimes.base import RuntimeMetadata
from medserve.core.runtimes.loader import load_runtime
from medserve.core.settings import Settings
from medserve.core.store import RegistryStore, open_store

if TYPE_CHECKING:  # pandas is for registration only: servers never import it
    import pandas as pd


def current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def _versions_of(*packages: str) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return found


@dataclass(frozen=True)
class _Prepared:
    """What is about to be stored for one version."""

    serving_sha: str
    serving_filename: str
    flavor: str
    runtime: str
    runtime_reason: str
    source_flavor: str
    source_sha: str | None
    signature: Signature
    library_versions: dict[str, str]


class Registry:
    """Registry operations over a store and an artifact store."""

    def __init__(self, store: RegistryStore, artifacts: ArtifactStore, settings: Settings) -> None:
        self.store = store
        self.artifacts = artifacts
        self.settings = settings

    @classmethod
    def open(cls, settings: Settings | None = None, *, run_migrations: bool = True) -> Registry:
        settings = settings or Settings()
        settings.home.mkdir(parents=True, exist_ok=True)
        store = open_store(settings.resolved_store_uri, run_migrations=run_migrations)
        artifacts = open_artifact_store(
            settings.artifact_uri,
            settings.resolved_artifact_root,
            cache_max_bytes=settings.artifact_cache_bytes,
        )
        return cls(store, artifacts, settings)

    def close(self) -> None:
        self.store.close()

    # ---------------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        source: Path | Any,
        *,
        sample: pd.DataFrame | None = None,
        signature: Signature | None = None,
        alias: str | None = None,
        description: str = "",
        tags: dict[str, str] | None = None,
        serving_config: dict[str, Any] | None = None,
        created_by: str | None = None,
        trust_pickle: bool = False,
    ) -> ModelVersion:
        """Register ``source`` (a file/directory path or an in-memory scikit-learn estimator).

        ``sample`` is used to infer the signature and to verify any ONNX conversion; without it
        a scikit-learn model is served by its own runtime and the reason says so.
        """
        actor = created_by or current_user()
        if isinstance(source, str | Path):
            prepared = self._prepare_path(Path(source), sample, signature, trust_pickle)
        else:
            prepared = self._prepare_estimator(source, sample, signature, "sklearn", {})
        if prepared.signature.series:  # inconsistent series: refused now, not at the first load
            # lazy import (series_input imports the signature module of this package)
            from medserve.core.series_input import SeriesDecoder  # noqa: PLC0415

            SeriesDecoder(prepared.signature)
        version = self.add_version(
            name,
            alias=alias,
            actor=actor,
            description=description,
            sample=sample,
            artifact_sha256=prepared.serving_sha,
            artifact_filename=prepared.serving_filename,
            flavor=prepared.flavor,
            runtime=prepared.runtime,
            runtime_reason=prepared.runtime_reason,
            source_flavor=prepared.source_flavor,
            source_artifact_sha256=prepared.source_sha,
            library_versions=prepared.library_versions,
            signature=prepared.signature.model_dump(mode="json"),
            tags=tags or {},
            serving_config=serving_config or {},
        )
        return version

    def add_version(
        self,
        name: str,
        *,
        alias: str | None,
        actor: str,
        description: str,
        sample: pd.DataFrame | None = None,
        **fields: Any,
    ) -> ModelVersion:
        """Create the model if it is new, then the version, then the alias: the steps every kind
        of registration shares (files, estimators, modality bundles, ensembles). ``fields`` are
        the version's own (artifact, flavor, runtime and why, signature, tags, ...). Emits
        ``VersionRegistered`` (with the registration ``sample``) once the version exists."""
        try:
            self.store.get_model(name)
        except ModelNotFoundError:
            with contextlib.suppress(AlreadyExistsError):  # a concurrent registration won
                self.store.create_model(name, description=description, created_by=actor)
        version = self.store.create_version(
            name, description=description, created_by=actor, **fields
        )
        if alias:
            self.set_alias(name, alias, version.version, actor=actor, reason="set at registration")
        emit(VersionRegistered(self, version, sample))
        return version

    def set_alias(
        self, name: str, alias: str, version: int, *, actor: str, reason: str = ""
    ) -> AliasEvent:
        """Point ``alias`` at ``version`` (the move is recorded in the same transaction)."""
        moved = self.store.set_alias(name, alias, version, actor=actor, reason=reason)
        self._moved(moved)
        return moved

    def delete_alias(self, name: str, alias: str, *, actor: str, reason: str = "") -> AliasEvent:
        moved = self.store.delete_alias(name, alias, actor=actor, reason=reason)
        self._moved(moved)
        return moved

    def _moved(self, moved: AliasEvent) -> None:
        emit(
            AliasMoved(
                self,
                moved.model_name,
                moved.alias,
                moved.to_version,
                moved.from_version,
                moved.actor,
                moved.reason or None,
            )
        )

    # ---------------------------------------------------------------------------------------
    def _prepare_path(
        self, path: Path, sample: pd.DataFrame | None, signature: Signature | None, trust: bool
    ) -> _Prepared:

        if not path.exists():
            raise InvalidRequestError(f"no such file or directory: {path}")
        fmt = detect_format(path)
        ensure_safe(fmt, trust_pickle=trust)
        if fmt == "skops":
            # lazy import (pulls scikit-learn and skops)
            from medserve.core.runtimes.skops_runtime import load_skops_estimator  # noqa: PLC0415

            estimator = load_skops_estimator(path, trust=trust)
            return self._prepare_estimator(estimator, sample, signature, "sklearn", {})
        if fmt == "pickle":
            # lazy import (pulls scikit-learn and joblib)
            from medserve.core.runtimes.pickle_runtime import load_pickle_estimator  # noqa: PLC0415

            estimator = load_pickle_estimator(path, trust_pickle=trust)
            return self._prepare_estimator(estimator, sample, signature, "sklearn-pickle", {})
        if fmt == "mlflow":
            # lazy import (MLflow directories only)
            from medserve.core.importers.mlflow import read_mlflow_model  # noqa: PLC0415

            imported = read_mlflow_model(path, trust_pickle=trust)
            if signature is None and sample is None and imported.columns:
                signature = signature_from_mlflow(imported.columns)
            extra = {"mlflow": imported.mlflow_version} if imported.mlflow_version else {}
            return self._prepare_estimator(
                imported.estimator, sample, signature, "mlflow-sklearn", extra
            )
        flavor = {
            "onnx": "onnx",
            "xgboost-json": "xgboost",
            "xgboost-ubj": "xgboost",
            "lightgbm-text": "lightgbm",
        }.get(fmt)
        if flavor is None:
            raise UnsupportedFormatError(f"cannot register a model in format {fmt!r}")
        if flavor == "onnx":
            # lazy import (a sequence model over series declares its padded layout)
            from medserve.core.runtimes.trajectory_runtime import (  # noqa: PLC0415
                is_trajectory,
                layout_signature,
            )

            if is_trajectory(path):
                flavor = "trajectory"
                signature = signature or layout_signature(path)
        sha = self.artifacts.put_file(path)
        meta = self._runtime_metadata(flavor, sha)
        sig = signature or self._signature_for(sample, None, meta)
        libs = {**_versions_of(), **meta.library_versions}
        reason = f"{fmt} artifact served natively by {meta.runtime}"
        if flavor in {"xgboost", "lightgbm"}:
            if sample is None:
                reason += " (no registration sample, so no verified ONNX conversion)"
            else:
                # lazy import (pulls skl2onnx)
                from medserve.core.runtimes.convert import convert_booster_to_onnx  # noqa: PLC0415

                X = sig.validator().records_to_matrix(
                    sample[sig.feature_names].to_dict(orient="records")
                )
                result = convert_booster_to_onnx(flavor, self.artifacts.path(sha), X)
                if result.accepted and result.onnx_bytes is not None:
                    onnx_sha = self.artifacts.put_bytes(result.onnx_bytes)
                    onnx_meta = self._runtime_metadata("onnx", onnx_sha)
                    return _Prepared(
                        onnx_sha,
                        "model.onnx",
                        "onnx",
                        onnx_meta.runtime,
                        result.reason,
                        flavor,
                        sha,
                        _with_outputs(sig, onnx_meta),
                        {**libs, **_versions_of("onnxmltools")},
                    )
                reason += f"; ONNX conversion rejected: {result.reason}"
        return _Prepared(
            serving_sha=sha,
            serving_filename=path.name,
            flavor=flavor,
            runtime=meta.runtime,
            runtime_reason=reason,
            source_flavor=flavor,
            source_sha=None,
            signature=_with_outputs(sig, meta),
            library_versions=libs,
        )

    def _prepare_estimator(
        self,
        estimator: Any,
        sample: pd.DataFrame | None,
        signature: Signature | None,
        source_flavor: str,
        extra_versions: dict[str, str],
    ) -> _Prepared:
        import skops.io  # noqa: PLC0415 (heavy: skops, kept off the serving path)

        # lazy import (pulls skl2onnx)
        from medserve.core.runtimes.convert import convert_sklearn_to_onnx  # noqa: PLC0415

        source_sha = self.artifacts.put_bytes(skops.io.dumps(estimator))
        feature_names = [str(c) for c in getattr(estimator, "feature_names_in_", [])]
        if sample is not None and feature_names and set(feature_names) <= set(sample.columns):
            sample = sample[feature_names]  # drop label or id columns the sample may carry
        sig = signature or self._signature_for(sample, feature_names, None, estimator)
        libs = {
            **_versions_of("scikit-learn", "skops", "skl2onnx", "onnxruntime"),
            **extra_versions,
        }
        if sample is not None:
            X = sig.validator().records_to_matrix(
                sample[sig.feature_names].to_dict(orient="records")
            )
            result = convert_sklearn_to_onnx(estimator, X)
            if result.accepted and result.onnx_bytes is not None:
                sha = self.artifacts.put_bytes(result.onnx_bytes)
                meta = self._runtime_metadata("onnx", sha)
                return _Prepared(
                    sha,
                    "model.onnx",
                    "onnx",
                    meta.runtime,
                    result.reason,
                    source_flavor,
                    source_sha,
                    _with_outputs(sig, meta),
                    libs,
                )
            reason = f"ONNX conversion rejected, serving with scikit-learn: {result.reason}"
        else:
            reason = (
                "no registration sample given (pass --sample), so an ONNX conversion "
                "cannot be verified; serving with scikit-learn"
            )
        meta = self._runtime_metadata("skops", source_sha)
        return _Prepared(
            source_sha,
            "model.skops",
            "skops",
            meta.runtime,
            reason,
            source_flavor,
            None,
            _with_outputs(sig, meta),
            libs,
        )

    def _runtime_metadata(self, flavor: str, sha: str) -> RuntimeMetadata:

        runtime = load_runtime(flavor, self.artifacts.path(sha), trust_pickle=False)
        return runtime.metadata()

    @staticmethod
    def _signature_for(
        sample: pd.DataFrame | None,
        feature_names: list[str] | None,
        meta: RuntimeMetadata | None,
        estimator: Any = None,
    ) -> Signature:
        if sample is not None:
            return infer_signature(sample)
        if feature_names:
            return signature_from_feature_names(feature_names)
        n = meta.n_features if meta else int(getattr(estimator, "n_features_in_", 0))
        if n <= 0:
            raise InvalidRequestError(
                "cannot tell the model's input features: pass a sample (--sample FILE.csv)"
            )
        return signature_from_feature_names([f"f{i}" for i in range(n)])


def _with_outputs(signature: Signature, meta: RuntimeMetadata) -> Signature:
    outputs = [
        OutputSpec(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in meta.outputs
    ]
    labels = [_plain(v) for v in meta.class_labels] if meta.class_labels is not None else None
    if len(signature.inputs) != meta.n_features and meta.n_features > 0:
        raise InvalidRequestError(
            f"the signature has {len(signature.inputs)} inputs "
            f"but the model expects {meta.n_features}"
        )
    return signature.model_copy(
        update={"outputs": outputs, "task": meta.task, "class_labels": labels}
    )


def _plain(value: Any) -> Any:
    """numpy scalars to JSON-able Python values (class labels come from numpy arrays)."""
    return value.item() if isinstance(value, np.generic) else value


def sample_from_file(path: Path) -> pd.DataFrame:
    """Read a registration sample (CSV, JSON records, or Parquet)."""
    import pandas as pd  # noqa: PLC0415 (heavy: pandas, kept off the serving path)

    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in {".json", ".jsonl"}:
        return pd.read_json(io.StringIO(path.read_text()), lines=suffix == ".jsonl")
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise UnsupportedFormatError(f"sample must be .csv, .json, .jsonl or .parquet, not {suffix!r}")
