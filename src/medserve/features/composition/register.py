"""Registering an ensemble: resolve and check its members, pin them, store one JSON artifact.

Like ``modalities.register`` this goes around ``Registry.register`` (there is no file to detect)
but writes the same immutable version record: the artifact's sha256, flavor ``ensemble``, the
runtime and why, and a signature whose inputs are the union of the members' inputs.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

from medserve.core.errors import (
    InvalidRequestError,
    NotFoundError,
)
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry, current_user
from medserve.core.registry.signature import FeatureSpec, OutputSpec, Signature
from medserve.core.runtimes._common import plain_labels, versions
from medserve.core.runtimes.base import Runtime, Task
from medserve.features.composition.ensemble import (
    RUNTIME_NAME,
    EnsembleArtifact,
    EnsembleRuntime,
    EnsembleSpec,
    PinnedMember,
    load_member,
)

if TYPE_CHECKING:
    import pandas as pd

# FeatureSpec fields that must agree when two members read the same input: a value that is
# valid, or a missing value that is imputed, must mean the same thing to both.
_MUST_AGREE = ("type", "required", "missing", "impute_value", "categories", "identifier", "unit")


def register_ensemble(
    registry: Registry,
    name: str,
    spec: EnsembleSpec | dict[str, Any],
    *,
    description: str = "",
    alias: str | None = None,
    tags: dict[str, str] | None = None,
    serving_config: dict[str, Any] | None = None,
    created_by: str | None = None,
    sample: pd.DataFrame | None = None,
) -> ModelVersion:
    """Register ``name`` as an ensemble of already registered versions.

    ``sample`` (rows with the ensemble's inputs), when given, becomes the version's monitoring
    reference and global importance, as for any registration.

    Member versions given as aliases are resolved now and pinned to their numbers. Refused (with
    an ``InvalidRequestError`` or a not-found error naming the member): unknown members, members
    that are ensembles, members whose tasks or class labels differ, an input two members declare
    incompatibly, a logistic combiner or threshold on anything but binary classifiers.
    """
    spec = EnsembleSpec.parse(spec)
    actor = created_by or current_user()
    pinned, runtimes = _resolve_members(registry, spec)
    task, labels = _common_task(pinned, runtimes)
    positive = _positive_class(spec, task, labels)
    signature = ensemble_signature(pinned)
    artifact = EnsembleArtifact(
        combiner=spec.combiner,
        intercept=spec.intercept,
        threshold=spec.threshold,
        positive_class=positive,
        task=task,
        class_labels=labels,
        inputs=signature.feature_names,
        members=pinned,
    )
    runtime = EnsembleRuntime(artifact, runtimes)  # refuse what cannot be served
    meta = runtime.metadata()
    signature = signature.model_copy(
        update={
            "outputs": [
                OutputSpec(name=t.name, datatype=t.datatype, shape=list(t.shape))
                for t in meta.outputs
            ],
            "task": task,
            "class_labels": labels,
        }
    )
    sha = registry.artifacts.put_bytes(artifact.to_bytes())
    described = ", ".join(f"{m.model} v{m.version} ({m.flavor})" for m in pinned)
    version = registry.add_version(
        name,
        alias=alias,
        actor=actor,
        description=description,
        sample=sample,
        artifact_sha256=sha,
        artifact_filename="ensemble.json",
        flavor="ensemble",
        runtime=RUNTIME_NAME,
        runtime_reason=(
            f"ensemble of {len(pinned)} pinned versions [{described}] combined by "
            f"{spec.combiner}; each member is served by its own runtime from its own "
            "sha256-checked artifact"
        ),
        source_flavor="ensemble",
        source_artifact_sha256=None,
        library_versions={
            "python": platform.python_version(),
            **versions("numpy"),
            **meta.library_versions,
        },
        signature=signature.model_dump(mode="json"),
        tags={"composition": "ensemble", **(tags or {})},
        serving_config=serving_config or {},
    )
    return version


def _resolve_members(
    registry: Registry, spec: EnsembleSpec
) -> tuple[list[PinnedMember], list[Runtime]]:
    pinned: list[PinnedMember] = []
    runtimes: list[Runtime] = []
    seen: set[tuple[str, int]] = set()
    for member in spec.members:
        try:
            if isinstance(member.version, int):
                number = member.version
            elif member.version.isdigit():
                number = int(member.version)
            else:
                number = registry.store.get_alias(member.model, member.version)
            version = registry.store.get_version(member.model, number)
        except NotFoundError as exc:
            raise type(exc)(
                f"ensemble member {member.model!r} (version {member.version!r}): {exc.message}"
            ) from exc
        if (version.model_name, version.version) in seen:
            raise InvalidRequestError(
                f"ensemble member {member.model!r} version {version.version} is listed twice"
            )
        seen.add((version.model_name, version.version))
        entry = PinnedMember(
            model=version.model_name,
            version=version.version,
            weight=member.weight,
            artifact_sha256=version.artifact_sha256,
            flavor=version.flavor,
            signature=version.signature,
        )
        if version.flavor == "ensemble":
            raise InvalidRequestError(
                f"ensemble member {member.model!r} version {version.version} is itself an "
                "ensemble; list its members instead"
            )
        pinned.append(entry)
        runtimes.append(load_member(registry.artifacts, entry))
    return pinned, runtimes


def _common_task(
    pinned: list[PinnedMember], runtimes: list[Runtime]
) -> tuple[Task, list[Any] | None]:
    first, first_meta = pinned[0], runtimes[0].metadata()
    first_labels = plain_labels(first_meta.class_labels) if first_meta.class_labels else None
    for member, runtime in zip(pinned[1:], runtimes[1:], strict=True):
        meta = runtime.metadata()
        if meta.task != first_meta.task:
            raise InvalidRequestError(
                f"ensemble members must share a task: {first.model!r} v{first.version} is "
                f"{first_meta.task}, {member.model!r} v{member.version} is {meta.task}"
            )
        labels = plain_labels(meta.class_labels) if meta.class_labels else None
        if meta.task == "classification" and _label_set(labels) != _label_set(first_labels):
            raise InvalidRequestError(
                f"ensemble members must have the same class labels: {first.model!r} "
                f"v{first.version} has {first_labels}, {member.model!r} v{member.version} "
                f"has {labels}"
            )
    if first_meta.task == "classification" and not first_labels:
        raise InvalidRequestError(
            f"ensemble member {first.model!r} v{first.version} does not declare its class labels"
        )
    return first_meta.task, first_labels


def _label_set(labels: list[Any] | None) -> set[tuple[str, Any]]:
    return {(type(v).__name__, v) for v in labels or []}


def _positive_class(spec: EnsembleSpec, task: str, labels: list[Any] | None) -> Any:
    binary = task == "classification" and labels is not None and len(labels) == 2
    if spec.combiner == "logistic" and not binary:
        raise InvalidRequestError(
            "the logistic combiner (stacking) needs binary classifiers; "
            f"these members are {task} models"
            + (f" with {len(labels)} classes" if labels is not None else "")
        )
    if spec.threshold is not None and not binary:
        raise InvalidRequestError("a threshold needs binary classifiers")
    if spec.positive_class is not None:
        if not binary or labels is None:
            raise InvalidRequestError("positive_class needs binary classifiers")
        if (type(spec.positive_class).__name__, spec.positive_class) not in _label_set(labels):
            raise InvalidRequestError(
                f"positive_class {spec.positive_class!r} is not one of the class labels {labels}"
            )
        return spec.positive_class
    return labels[1] if binary and labels is not None else None


def ensemble_signature(pinned: list[PinnedMember]) -> Signature:
    """The union of the members' inputs, in first-seen order.

    An input read by several members must agree on type, missing-value policy, imputed value,
    categories, identifier flag and unit; its range is the intersection of theirs (a value the
    ensemble accepts is valid for every member that reads it).
    """
    merged: dict[str, FeatureSpec] = {}
    owner: dict[str, str] = {}
    for member in pinned:
        who = f"{member.model!r} v{member.version}"
        for spec in Signature.model_validate(member.signature).inputs:
            before = merged.get(spec.name)
            if before is None:
                merged[spec.name] = spec.model_copy()
                owner[spec.name] = who
                continue
            for field in _MUST_AGREE:
                if getattr(before, field) != getattr(spec, field):
                    raise InvalidRequestError(
                        f"ensemble members declare input {spec.name!r} incompatibly: {field} is "
                        f"{getattr(before, field)!r} for {owner[spec.name]} but "
                        f"{getattr(spec, field)!r} for {who}",
                        details=[
                            {
                                "field": spec.name,
                                "rule": "conflicting_input",
                                "message": f"members disagree on {field}",
                            }
                        ],
                    )
            minimum = _tighter(before.minimum, spec.minimum, max)
            maximum = _tighter(before.maximum, spec.maximum, min)
            if minimum is not None and maximum is not None and minimum > maximum:
                raise InvalidRequestError(
                    f"ensemble members declare input {spec.name!r} with ranges that do not "
                    f"overlap ({owner[spec.name]} and {who})"
                )
            merged[spec.name] = before.model_copy(
                update={
                    "minimum": minimum,
                    "maximum": maximum,
                    "description": before.description or spec.description,
                }
            )
    return Signature(inputs=list(merged.values()))


def _tighter(a: float | None, b: float | None, pick: Any) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return float(pick(a, b))
