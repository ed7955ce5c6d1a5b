"""scikit-learn models stored with skops: loaded without executing arbitrary code.

skops lists the types in a file it does not trust by default. We additionally trust types from
scikit-learn, numpy and scipy (and builtins/collections), which is what a plain fitted estimator
contains; anything else (custom classes, other libraries) needs the explicit trust flag. Tree
models are accepted because their node indices are bounds-checked after loading (see
``check_tree_structure``), which is the risk skops warns about for ``sklearn.tree._tree.Tree``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medserve.core.errors import ModelLoadError, UnsafeArtifactError
from medserve.core.runtimes.estimator_runtime import EstimatorRuntime

TRUSTED_MODULE_ROOTS = frozenset({"sklearn", "numpy", "scipy", "builtins", "collections"})


def _is_trusted(type_name: str) -> bool:
    return type_name.split(".", 1)[0] in TRUSTED_MODULE_ROOTS


def load_skops_estimator(path: Path, *, trust: bool = False) -> Any:
    import skops.io  # noqa: PLC0415 (heavy: skops, kept off the serving path)

    try:
        untrusted = skops.io.get_untrusted_types(file=Path(path))
    except Exception as exc:
        raise ModelLoadError(f"not a readable skops file: {type(exc).__name__}: {exc}") from exc
    refused = sorted(t for t in untrusted if not _is_trusted(t))
    if refused and not trust:
        raise UnsafeArtifactError(
            "the skops file contains types outside scikit-learn/numpy/scipy that could run code "
            f"when loaded: {', '.join(refused)}. Pass --trust-pickle only if you trust its source."
        )
    try:
        estimator = skops.io.load(Path(path), trusted=list(untrusted))
    except Exception as exc:
        raise ModelLoadError(
            f"skops could not load the model: {type(exc).__name__}: {exc}"
        ) from exc
    check_tree_structure(estimator)
    return estimator


def _trees(obj: Any, depth: int = 0) -> list[Any]:
    """Every fitted ``sklearn.tree._tree.Tree`` reachable from an estimator (bounded walk)."""
    if depth > 6:
        return []
    if hasattr(obj, "tree_") and hasattr(obj.tree_, "children_left"):
        return [obj]
    found: list[Any] = []
    if isinstance(obj, list | tuple):
        items: list[Any] = list(obj)
    elif getattr(getattr(obj, "dtype", None), "kind", None) == "O":
        items = list(obj.ravel())
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("sklearn"):
        items = list(vars(obj).values())
    else:
        return found
    for item in items:
        found.extend(_trees(item, depth + 1))
    return found


def check_tree_structure(estimator: Any) -> None:
    """Reject trees whose node indices point outside their arrays.

    skops treats ``sklearn.tree._tree.Tree`` as untrusted because scikit-learn follows child and
    feature indices without bounds checks: a crafted file loads fine and then reads out of
    bounds (or crashes) at predict time. Checking the indices here makes loading it safe.
    """

    for holder in _trees(estimator):
        tree = holder.tree_
        n = int(tree.node_count)
        n_features = int(getattr(holder, "n_features_in_", tree.n_features))
        left = np.asarray(tree.children_left)
        right = np.asarray(tree.children_right)
        feature = np.asarray(tree.feature)
        leaf = left == -1
        ok = (
            len(left) == len(right) == len(feature) == n
            and bool(np.all(leaf == (right == -1)))
            and bool(np.all(leaf | ((left > np.arange(n)) & (left < n))))
            and bool(np.all(leaf | ((right > np.arange(n)) & (right < n))))
            and bool(np.all(leaf | ((feature >= 0) & (feature < n_features))))
        )
        if not ok:
            raise UnsafeArtifactError(
                "the skops file holds a decision tree whose node or feature indices are out of "
                "range; it would read outside its own arrays at predict time and is refused"
            )


class SkopsRuntime(EstimatorRuntime):
    def __init__(self, estimator: Any) -> None:
        super().__init__(estimator, runtime="skops")

    @classmethod
    def from_path(cls, path: Path, *, trust: bool = False) -> SkopsRuntime:
        return cls(load_skops_estimator(path, trust=trust))
