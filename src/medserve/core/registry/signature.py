"""Input signatures: what a model accepts, and a validator that says precisely what is wrong.

A signature is stored as JSON with each version and is editable after registration (ranges,
categories, missing-value policy, identifier flags). The validator is used on the serving hot
path, so it is compiled once per signature and converts rows straight to the runtime's matrix.
"""

from __future__ import annotations

import math
import sys
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import numpy as np
from pydantic import BaseModel, Field, PrivateAttr

from medserve.core.errors import InvalidRequestError, ValidationFailedError
from medserve.core.series import SeriesFeature, SeriesSpec

if TYPE_CHECKING:
    import pandas as pd

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
    task: Literal["classification", "regression", "survival"] | None = Field(
        default=None,
        description="survival: the output is a risk score served like a regression value.",
    )
    class_labels: list[Any] | None = None
    series: list[SeriesSpec] = Field(
        default_factory=list,
        description="Trajectories the model takes (core/series.py): the records key 'series', "
        "OIP v2 '<name>.values/.times/.lengths' tensors, FHIR Observations in the window.",
    )
    series_features: list[SeriesFeature] = Field(
        default_factory=list,
        description="Inputs derived from the series (named in 'inputs'); none: the series are "
        "passed padded to a trajectory model.",
    )

    _validator: Validator | None = PrivateAttr(default=None)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.inputs]

    def __eq__(self, other: object) -> bool:
        # Pydantic also compares private attributes: a signature with a compiled validator
        # cached must still equal the same signature without one.
        if not isinstance(other, Signature):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, like every non-frozen pydantic model

    @property
    def all_numeric(self) -> bool:
        """True when every input is float/integer/boolean, so the model gets a float32 matrix."""
        return all(f.type != "string" for f in self.inputs)

    @property
    def identifier_fields(self) -> list[str]:
        """Names of inputs flagged as patient identifiers (PHI)."""
        return [f.name for f in self.inputs if f.identifier]

    def to_json(self) -> str:
        """The stored JSON form (``model_dump_json``); the cached validator is never included."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> Signature:
        """Parse the stored JSON form (``model_validate_json``); round-trips ``to_json``."""
        return cls.model_validate_json(data)

    def validator(self) -> Validator:
        """The compiled validator for this signature, built once and cached on the instance.

        The cache is keyed on the identity of ``inputs``: a copy with new inputs
        (``model_copy(update=...)``, ``model_validate``) compiles afresh. Editing a FeatureSpec
        in place after the first call is not seen; build a new Signature instead.
        """
        cached = self._validator
        if cached is None or cached.source is not self.inputs:
            cached = Validator(self.inputs)
            self._validator = cached
        return cached


# --------------------------------------------------------------------------------------------
# Building signatures
# --------------------------------------------------------------------------------------------

_MLFLOW_TYPES: dict[str, FeatureType] = {
    "double": "float",
    "float": "float",
    "long": "integer",
    "integer": "integer",
    "boolean": "boolean",
    "string": "string",
    # Bytes and timestamps cannot enter a numeric matrix; they travel as text to the model.
    "binary": "string",
    "datetime": "string",
}


def signature_from_feature_names(names: list[str]) -> Signature:
    """A permissive all-float signature for a model registered without a sample."""
    return Signature(inputs=[FeatureSpec(name=str(n)) for n in names])


def signature_from_mlflow(columns: list[tuple[str, str]]) -> Signature:
    """Map an MLflow column-based signature (name, MLflow type) onto ours."""
    inputs = []
    for name, mlflow_type in columns:
        ours = _MLFLOW_TYPES.get(str(mlflow_type).lower())
        if ours is None:
            allowed = ", ".join(_MLFLOW_TYPES)
            raise InvalidRequestError(
                f"MLflow column {name!r} has type {mlflow_type!r}; supported types: {allowed}"
            )
        inputs.append(FeatureSpec(name=str(name), type=ours))
    return Signature(inputs=inputs)


def infer_signature(
    sample: pd.DataFrame,
    *,
    range_margin: float | None = None,
    categorical_max_levels: int = 50,
) -> Signature:
    """Infer one FeatureSpec per column of a registration sample.

    Columns with NaN in the sample get the ``impute`` policy (median for numbers, mode for
    booleans and strings) because the model was evidently trained with missing values handled;
    every other column rejects missing values, which is the safe default for clinical inputs.
    Ranges are only set when ``range_margin`` is given, since a sample rarely spans every
    legitimate value.
    """
    from pandas.api import types as pdt  # noqa: PLC0415 (heavy: pandas, kept off the serving path)

    if range_margin is not None and (not math.isfinite(range_margin) or range_margin < 0):
        raise InvalidRequestError("range_margin must be a non-negative number")
    inputs = []
    for column, series in sample.items():
        name = str(column)
        non_null = series.dropna()
        ftype = _infer_type(series, non_null, pdt)
        spec = FeatureSpec(name=name, type=ftype)
        if ftype in ("float", "integer") and len(non_null):
            low, high = float(non_null.min()), float(non_null.max())
            if range_margin is not None:
                width = high - low
                spec.minimum = low - range_margin * width
                spec.maximum = high + range_margin * width
                if low >= 0:
                    spec.minimum = max(spec.minimum, 0.0)
        elif ftype == "string":
            levels = _sorted_levels([_plain(v) for v in non_null.unique()])
            if len(levels) <= categorical_max_levels:
                spec.categories = levels
        n_missing = int(series.isna().sum())
        if n_missing:
            spec.missing = "impute"
            spec.impute_value, how = _impute_value(ftype, non_null)
            spec.description = (
                f"missing in {n_missing} of {len(series)} sample rows: imputed with {how}"
            )
        inputs.append(spec)
    return Signature(inputs=inputs)


def _infer_type(series: pd.Series, non_null: pd.Series, pdt: Any) -> FeatureType:
    dtype = series.dtype
    if pdt.is_bool_dtype(dtype):
        return "boolean"
    if pdt.is_integer_dtype(dtype):
        return "integer"
    if pdt.is_float_dtype(dtype):
        return "float"
    # A bool column with gaps becomes object dtype in pandas; it is still boolean.
    if (
        dtype.kind == "O"
        and len(non_null)
        and all(isinstance(v, bool | np.bool_) for v in non_null)
    ):
        return "boolean"
    return "string"


def _impute_value(
    ftype: FeatureType, non_null: pd.Series
) -> tuple[float | int | str | bool | None, str]:
    if not len(non_null):
        return None, "nothing (no value was observed, so NaN/None is passed to the model)"
    if ftype in ("float", "integer"):
        median = float(non_null.median())
        value: float | int | str | bool = round(median) if ftype == "integer" else median
        return value, f"the sample median {value!r}"
    mode = _plain(non_null.mode().iloc[0])
    if ftype == "boolean":
        mode = bool(mode)
    elif not isinstance(mode, str | int | float | bool):
        mode = str(mode)
    return mode, "the sample's most frequent value"


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value a JSON client would send."""
    return value.item() if isinstance(value, np.generic) else value


def _sorted_levels(levels: list[Any]) -> list[str | int | float | bool]:
    plain: list[str | int | float | bool] = [
        v if isinstance(v, str | int | float | bool) else str(v) for v in levels
    ]
    return sorted(set(plain), key=lambda v: (type(v).__name__, v))


# --------------------------------------------------------------------------------------------
# The compiled validator
# --------------------------------------------------------------------------------------------

_MISSING: Any = object()  # the sentinel for an absent key
_REJECT: Any = object()  # the "fill" of a field that rejects missing values
_F32_MAX = float(np.finfo(np.float32).max)
_FLOAT_MAX = sys.float_info.max
_SUMMARY_PROBLEMS = 5
_CATEGORIES_SHOWN = 5
_NAME_SHOWN = 80

_FLOAT, _INT, _BOOL, _STR = 0, 1, 2, 3
_KINDS = {"float": _FLOAT, "integer": _INT, "boolean": _BOOL, "string": _STR}
_EXPECTED = {_FLOAT: "a number", _INT: "an integer", _BOOL: "true or false", _STR: "a string"}


def _json_kind(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "true/false (booleans are not numbers here)"
    if isinstance(value, str | bytes):
        return "a string"
    if isinstance(value, int | float | np.number):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple | np.ndarray):
        return "an array"
    return f"a value of type {type(value).__name__}"


def _number_text(value: float | int) -> str:
    text = repr(value)
    return (
        text
        if len(text) <= 24
        else f"{value:.6g}"
        if isinstance(value, float)
        else "a huge integer"
    )


def _is_missing(value: Any) -> bool:
    """None, NaN, +/-inf and pandas' NA all count as missing for the missing-value policy."""
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return not math.isfinite(value)
    return type(value).__name__ == "NAType"


def _category_key(value: Any) -> tuple[str, Any]:
    """A set key that keeps True apart from 1 (Python hashes them alike)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, str):
        return ("s", value)
    return ("n", value)


class _Field:
    """One input feature, precompiled for the hot path."""

    __slots__ = (
        "allowed_text",
        "cat_keys",
        "categories",
        "fill",
        "fill_f64",
        "hi",
        "identifier",
        "index",
        "kind",
        "lo",
        "maximum",
        "minimum",
        "name",
        "ok_types",
        "str_categories",
    )

    def __init__(self, spec: FeatureSpec, index: int, float32_out: bool) -> None:
        self.name = spec.name
        self.index = index
        self.kind = _KINDS[spec.type]
        self.identifier = spec.identifier
        self.minimum = spec.minimum
        self.maximum = spec.maximum
        self.categories = list(spec.categories) if spec.categories is not None else None
        self.cat_keys = (
            frozenset(_category_key(c) for c in self.categories) if self.categories else None
        )
        self.str_categories = (
            frozenset(c for c in self.categories if isinstance(c, str))
            if self.categories is not None
            else None
        )
        if self.categories and not self.identifier:
            shown = ", ".join(repr(c) for c in self.categories[:_CATEGORIES_SHOWN])
            more = (
                f", ... ({len(self.categories)} in all)"
                if len(self.categories) > _CATEGORIES_SHOWN
                else ""
            )
            self.allowed_text = f" ({shown}{more})"
        else:
            self.allowed_text = ""  # an identifier's allowed values are themselves PHI
        self.fill = self._compile_fill(spec, float32_out)
        self.fill_f64 = (
            float(self.fill)
            if self.fill is not _REJECT and self.fill is not None and self.kind != _STR
            else math.nan
        )
        # Fast path: a value of one of these exact types inside [lo, hi] needs no other check.
        # NaN and inf fail the comparison, so they always reach the slow path.
        bound = _F32_MAX if float32_out else _FLOAT_MAX
        self.lo = max(spec.minimum, -bound) if spec.minimum is not None else -bound
        self.hi = min(spec.maximum, bound) if spec.maximum is not None else bound
        if self.kind == _STR or self.categories:
            self.ok_types: frozenset[type] = frozenset()
        elif self.kind == _BOOL:
            self.ok_types = frozenset({bool})
        elif self.kind == _INT:
            self.ok_types = frozenset({int})
        else:
            self.ok_types = frozenset({float, int} if float32_out else {float})

    def _compile_fill(self, spec: FeatureSpec, float32_out: bool) -> Any:
        if spec.missing == "impute":
            value = spec.impute_value
        elif not spec.required:
            value = None  # passed through as NaN/None for models that handle missing values
        else:
            return _REJECT
        if value is None:
            return math.nan if float32_out else None
        if self.kind == _STR:
            return value
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(
                f"feature {spec.name!r}: impute_value must be a {spec.type}"
            ) from exc
        if float32_out:
            return number
        if self.kind == _INT:
            return int(number)
        if self.kind == _BOOL:
            return bool(number)
        return number


# What a validator imputed, by the matrix it returned. The model matrix must stay a plain
# ndarray (runtimes get it as is), so the per-feature counts travel beside it: keyed by the
# matrix's id and checked through a weak reference (a new array reusing a freed id is never
# mistaken for it). Only a request with a missing value pays (~0.3 µs); the usual one costs a
# dict miss when the prediction log asks (``imputed_counts``).
_IMPUTED: dict[int, tuple[weakref.ref[np.ndarray], np.ndarray]] = {}
_IMPUTED_PRUNE_AT = 1024  # entries; pruned of freed matrices when reached (in-flight ones stay)


def _note_imputed(matrix: np.ndarray, counts: np.ndarray) -> None:
    if len(_IMPUTED) >= _IMPUTED_PRUNE_AT:
        for key, (ref, _) in list(_IMPUTED.items()):
            if ref() is None:
                _IMPUTED.pop(key, None)
    _IMPUTED[id(matrix)] = (weakref.ref(matrix), counts)


def imputed_counts(matrix: np.ndarray) -> np.ndarray | None:
    """Per feature, how many values of ``matrix`` arrived missing (absent, null, NaN, inf) and
    were imputed by the validator that returned it; ``None`` when none were.

    Why: the matrix holds the imputed values, so monitoring could never see missingness in it;
    the prediction log records these counts instead (what arrived, not what the model got).
    """
    entry = _IMPUTED.get(id(matrix))
    if entry is None or entry[0]() is not matrix:
        return None
    return entry[1]


def _counts(indices: list[int], n_features: int) -> np.ndarray:
    return np.bincount(np.asarray(indices, dtype=np.intp), minlength=n_features).astype(np.int64)


class Validator:
    """Checks input rows against a signature and converts them to the runtime's matrix.

    Every problem in a request is collected before raising one ``ValidationFailedError`` so
    the caller can fix everything at once. Messages never echo a value of an identifier field
    nor any string value; numbers are echoed only to explain a range.
    """

    def __init__(self, inputs: list[FeatureSpec]) -> None:
        names = [f.name for f in inputs]
        if len(set(names)) != len(names):
            raise InvalidRequestError("a signature's input names must be unique")
        self.source = inputs
        self.feature_names = names
        self.position = {name: i for i, name in enumerate(names)}
        self.n_features = len(names)
        self.all_numeric = all(f.type != "string" for f in inputs)
        self.dtype: np.dtype[Any] = np.dtype(np.float32 if self.all_numeric else object)
        self._fields = [_Field(spec, i, self.all_numeric) for i, spec in enumerate(inputs)]
        self._by_name = {f.name: f for f in self._fields}
        self._fast = [(f.name, f.ok_types, f.lo, f.hi, f) for f in self._fields]
        # Matrix fast path: bounds and fills as vectors, and which columns need extra checks.
        self._lo = np.array([f.lo for f in self._fields], dtype=np.float64)
        self._hi = np.array([f.hi for f in self._fields], dtype=np.float64)
        self._fill = np.array([f.fill_f64 for f in self._fields], dtype=np.float64)
        self._rejects = np.array([f.fill is _REJECT for f in self._fields], dtype=bool)
        self._int_cols = [f.index for f in self._fields if f.kind == _INT]
        self._bool_cols = [f.index for f in self._fields if f.kind == _BOOL]
        self._matrix_fast = self.all_numeric and not any(f.categories for f in self._fields)
        self._plain_floats = self._matrix_fast and not self._int_cols and not self._bool_cols

    # -- records -----------------------------------------------------------------------------

    def records_to_matrix(self, records: Sequence[Any]) -> np.ndarray:
        """Validate row objects (``{"feature": value}``) into an (n, n_features) matrix."""
        if not isinstance(records, list | tuple):
            _raise([_problem(None, None, "not_object", "the rows must be a list of objects")])
        if not records:
            _raise([_problem(None, None, "empty", "the request holds no rows")])
        problems: list[dict[str, Any]] = []
        imputed: list[int] = []  # the feature index of each value imputed
        out: list[list[Any]] = []
        fast = self._fast
        n_features = self.n_features
        slow = self._slow
        for i, row in enumerate(records):
            if type(row) is not dict and not isinstance(row, Mapping):
                kind = _json_kind(row)
                problems.append(
                    _problem(i, None, "not_object", f"the row is {kind}, not an object")
                )
                continue
            get = row.get
            values: list[Any] = []
            append = values.append
            absent = False
            for name, ok_types, lo, hi, field in fast:
                value = get(name, _MISSING)
                if type(value) in ok_types and lo <= value <= hi:
                    append(value)
                else:
                    if value is _MISSING:
                        absent = True
                    append(slow(field, value, i, problems, imputed))
            if absent or len(row) != n_features:
                by_name = self._by_name
                for key in row:
                    if key not in by_name:
                        problems.append(_unknown(i, key))
            out.append(values)
        if problems:
            _raise(problems)
        if self.all_numeric:
            matrix = np.array(out, dtype=np.float32)
        else:
            matrix = np.empty((len(out), n_features), dtype=object)
            matrix[:] = out
        if imputed:
            _note_imputed(matrix, _counts(imputed, n_features))
        return matrix

    def _slow(
        self,
        f: _Field,
        value: Any,
        row: int | None,
        problems: list[dict[str, Any]],
        imputed: list[int] | None = None,
    ) -> Any:
        """Check one value the fast path could not accept; record a problem or convert it
        (an imputed value's feature index goes to ``imputed``)."""
        if value is _MISSING or _is_missing(value):
            if f.fill is not _REJECT:
                if imputed is not None:
                    imputed.append(f.index)
                return f.fill
            if value is _MISSING:
                problems.append(_problem(row, f.name, "required", "this field is required"))
            else:
                problems.append(
                    _problem(
                        row, f.name, "not_nan", "missing values are not allowed for this field"
                    )
                )
            return None
        if isinstance(value, np.generic):
            value = value.item()
        kind = f.kind
        vtype = type(value)
        if kind == _STR:
            if vtype is str:
                if f.str_categories is not None and value not in f.str_categories:
                    problems.append(
                        _problem(
                            row,
                            f.name,
                            "category",
                            f"not one of the allowed categories{f.allowed_text}",
                        )
                    )
                return value
            if (
                f.cat_keys is not None
                and vtype in (int, float, bool)
                and _category_key(value) in f.cat_keys
            ):
                return value
            return self._wrong_type(f, value, row, problems)
        if vtype is bool:
            if kind == _BOOL:
                return value if not self.all_numeric else float(value)
            return self._wrong_type(f, value, row, problems)
        if vtype is not int and vtype is not float:
            return self._wrong_type(f, value, row, problems)
        if kind == _BOOL:
            if value != 0 and value != 1:
                return self._wrong_type(f, value, row, problems)
            return bool(value) if not self.all_numeric else float(value)
        if kind == _INT and vtype is float and not value.is_integer():
            problems.append(
                _problem(
                    row, f.name, "type", "expected an integer, got a number with a fractional part"
                )
            )
            return None
        shown = "value" if f.identifier else f"value {_number_text(value)}"
        if f.minimum is not None and value < f.minimum:
            problems.append(
                _problem(row, f.name, "minimum", f"{shown} is below the minimum {f.minimum!r}")
            )
            return None
        if f.maximum is not None and value > f.maximum:
            problems.append(
                _problem(row, f.name, "maximum", f"{shown} is above the maximum {f.maximum!r}")
            )
            return None
        if value < f.lo or value > f.hi:
            rule = "minimum" if value < f.lo else "maximum"
            problems.append(
                _problem(row, f.name, rule, f"{shown} is beyond the range a model input can hold")
            )
            return None
        if f.cat_keys is not None and _category_key(value) not in f.cat_keys:
            problems.append(
                _problem(
                    row, f.name, "category", f"not one of the allowed categories{f.allowed_text}"
                )
            )
            return None
        if self.all_numeric or kind == _FLOAT:
            return float(value)
        return int(value)

    @staticmethod
    def _wrong_type(f: _Field, value: Any, row: int | None, problems: list[dict[str, Any]]) -> None:
        expected = _EXPECTED[f.kind]
        problems.append(
            _problem(row, f.name, "type", f"expected {expected}, got {_json_kind(value)}")
        )

    # -- columns -----------------------------------------------------------------------------

    def columns_to_matrix(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> np.ndarray:
        """Validate one sequence per feature (v2 per-feature tensors) into the model matrix."""
        if len(columns) == self.n_features:
            if self._matrix_fast:
                stacked = self._stack_numeric(columns)
                if stacked is not None:
                    checked = self._check_numeric_matrix(stacked)
                    if checked is not None:
                        return checked
            rows = self._lists_as_rows(columns)
            if rows is not None:
                # Plain lists (JSON) are checked as rows: same rules, same row numbers.
                return self.records_to_matrix(rows)
        problems: list[dict[str, Any]] = []
        for key in columns:
            if key not in self._by_name:
                problems.append(_unknown(None, key))
        lengths: dict[str, int] = {}
        for f in self._fields:
            column = columns.get(f.name, _MISSING)
            if column is _MISSING:
                continue
            if isinstance(column, np.ndarray) and column.ndim != 1:
                problems.append(
                    _problem(None, f.name, "shape", "each column must be one-dimensional")
                )
            elif isinstance(column, str | bytes | Mapping) or not hasattr(column, "__len__"):
                problems.append(
                    _problem(None, f.name, "shape", "each column must be a list of values")
                )
            else:
                lengths[f.name] = len(column)
        n_rows = next(iter(lengths.values()), 0)
        for name, length in lengths.items():
            if length != n_rows:
                problems.append(
                    _problem(
                        None,
                        name,
                        "shape",
                        f"has {length} values but the first column has {n_rows}",
                    )
                )
        if n_rows == 0:
            problems.append(_problem(None, None, "empty", "the request holds no rows"))
            _raise(problems)
        built: list[Any] = []
        imputed: list[int] = []
        for f in self._fields:
            column = columns.get(f.name, _MISSING)
            if column is _MISSING:
                if f.fill is _REJECT:
                    problems.append(
                        _problem(None, f.name, "required", "no values were sent for this field")
                    )
                    built.append(None)
                else:
                    built.append(self._filled(f, n_rows))
                    imputed.extend([f.index] * n_rows)
            elif lengths.get(f.name) != n_rows:
                built.append(None)  # its shape problem is already recorded
            else:
                built.append(self._check_column(f, column, problems, imputed))
        if problems:
            _raise(problems)
        if self.all_numeric:
            matrix = np.empty((n_rows, self.n_features), dtype=np.float32)
        else:
            matrix = np.empty((n_rows, self.n_features), dtype=object)
        for j, column in enumerate(built):
            matrix[:, j] = column
        if imputed:
            _note_imputed(matrix, _counts(imputed, self.n_features))
        return matrix

    def _lists_as_rows(self, columns: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        lists: list[list[Any] | tuple[Any, ...]] = []
        for name in self.feature_names:
            column = columns.get(name)
            if not isinstance(column, list | tuple):
                return None
            lists.append(column)
        length = len(lists[0]) if lists else 0
        if length == 0 or any(len(column) != length for column in lists):
            return None
        names = self.feature_names
        return [dict(zip(names, values, strict=True)) for values in zip(*lists, strict=True)]

    def _stack_numeric(self, columns: Mapping[str, Any]) -> np.ndarray | None:
        """Equal-length numeric 1-D arrays for every feature, as one matrix; else None."""
        arrays: list[np.ndarray] = []
        for name in self.feature_names:
            array = columns.get(name)
            if (
                not isinstance(array, np.ndarray)
                or array.ndim != 1
                or array.dtype.kind not in "iuf"
            ):
                return None
            arrays.append(array)
        length = len(arrays[0]) if arrays else 0
        if length == 0 or any(len(array) != length for array in arrays):
            return None
        # One concatenate is several times cheaper than filling 30 columns one by one.
        return np.concatenate(arrays).reshape(self.n_features, length).T

    def _filled(self, f: _Field, n_rows: int) -> np.ndarray:
        if self.all_numeric:
            return np.full(n_rows, f.fill_f64, dtype=np.float64)
        column = np.empty(n_rows, dtype=object)
        column[:] = [f.fill] * n_rows
        return column

    def _check_column(
        self,
        f: _Field,
        column: Sequence[Any] | np.ndarray,
        problems: list[dict[str, Any]],
        imputed: list[int],
    ) -> np.ndarray:
        if (
            isinstance(column, np.ndarray)
            and column.dtype.kind in "biuf"
            and f.kind != _STR
            and not f.categories
        ):
            return self._check_numeric_array(f, column, problems, imputed)
        values: list[Any] = []
        append = values.append
        ok_types, lo, hi = f.ok_types, f.lo, f.hi
        for i, value in enumerate(column.tolist() if isinstance(column, np.ndarray) else column):
            if type(value) in ok_types and lo <= value <= hi:
                append(value)
            else:
                append(self._slow(f, value, i, problems, imputed))
        if self.all_numeric:
            return np.array([math.nan if v is None else v for v in values], dtype=np.float64)
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array

    def _check_numeric_array(
        self, f: _Field, column: np.ndarray, problems: list[dict[str, Any]], imputed: list[int]
    ) -> np.ndarray:
        """Vectorised checks of one numeric column; problems only cost time when present."""
        n_before = len(problems)
        if column.dtype.kind == "b":
            if f.kind != _BOOL:
                for i in range(len(column)):
                    self._wrong_type(f, True, i, problems)
            values = column.astype(np.float64)
        else:
            values = column.astype(np.float64)
            if f.kind == _BOOL:
                wrong = np.isfinite(values) & (values != 0) & (values != 1)
                for k in np.flatnonzero(wrong).tolist():
                    self._wrong_type(f, 2, k, problems)
            elif f.kind == _INT and column.dtype.kind == "f":
                fractional = np.isfinite(values) & (values != np.floor(values))
                for k in np.flatnonzero(fractional).tolist():
                    problems.append(
                        _problem(
                            k,
                            f.name,
                            "type",
                            "expected an integer, got a number with a fractional part",
                        )
                    )
            bad = (values < f.lo) | (values > f.hi)
            if f.kind == _BOOL:
                bad[:] = False
            for k in np.flatnonzero(bad).tolist():
                self._slow(f, values[k].item(), k, problems)
        missing = ~np.isfinite(values)
        if missing.any():
            if f.fill is _REJECT:
                for k in np.flatnonzero(missing).tolist():
                    problems.append(
                        _problem(
                            k,
                            f.name,
                            "not_nan",
                            "missing values are not allowed for this field",
                        )
                    )
            else:
                values[missing] = f.fill_f64
                imputed.extend([f.index] * int(missing.sum()))
        if len(problems) > n_before or self.all_numeric:
            return values
        if f.kind == _INT:
            return _object_column([v if v != v else int(v) for v in values.tolist()])
        if f.kind == _BOOL:
            return _object_column([v if v != v else bool(v) for v in values.tolist()])
        return _object_column(values.tolist())

    # -- one matrix --------------------------------------------------------------------------

    def check_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Validate a single (n, n_features) tensor in signature column order (the batch path).

        All-numeric signatures are checked with a handful of whole-matrix numpy operations;
        only when one of them finds something does it fall back to the per-column path, which
        names every problem.
        """
        array = np.asarray(matrix)
        if array.ndim != 2 or array.shape[1] != self.n_features:
            expected = f"[n, {self.n_features}]"
            _raise(
                [
                    _problem(
                        None,
                        None,
                        "shape",
                        f"expected shape {expected} (one column per feature), "
                        f"got {list(array.shape)}",
                    )
                ]
            )
        if array.shape[0] == 0:
            _raise([_problem(None, None, "empty", "the request holds no rows")])
        if self._matrix_fast and array.dtype.kind in "iuf":
            checked = self._check_numeric_matrix(array)
            if checked is not None:
                return checked
        return self.columns_to_matrix({f.name: array[:, f.index] for f in self._fields})

    def checked_numeric(self, array: np.ndarray) -> np.ndarray | None:
        """A numeric ``[n, F]`` matrix in signature order as the model matrix when every value
        passes (``None`` otherwise, or when the signature is not all numeric: the caller then
        validates the general way, which explains the problems)."""
        if not self._matrix_fast:
            return None
        return self._check_numeric_matrix(array)

    def _check_numeric_matrix(self, array: np.ndarray) -> np.ndarray | None:
        """The float32 matrix if every value passes, else None (the caller then explains)."""
        # NaN and inf fail both comparisons, so one mask settles the common case.
        if self._plain_floats and ((array >= self._lo) & (array <= self._hi)).all():
            return np.ascontiguousarray(array, dtype=np.float32)
        with np.errstate(invalid="ignore"):
            bad = (array < self._lo) | (array > self._hi)
            if array.dtype.kind != "f":
                finite = np.ones(array.shape, dtype=bool)
            else:
                finite = np.isfinite(array)
            if self._int_cols:
                part = array[:, self._int_cols]
                bad[:, self._int_cols] |= finite[:, self._int_cols] & (part != np.floor(part))
            if self._bool_cols:
                part = array[:, self._bool_cols]
                bad[:, self._bool_cols] = finite[:, self._bool_cols] & (part != 0) & (part != 1)
        if bad.any():
            return None
        if not finite.all():
            if (~finite[:, self._rejects]).any():
                return None
            array = np.where(finite, array, self._fill)  # a copy: the caller's array is untouched
            matrix = np.ascontiguousarray(array, dtype=np.float32)
            _note_imputed(matrix, (~finite).sum(axis=0).astype(np.int64))
            return matrix
        return np.ascontiguousarray(array, dtype=np.float32)


def _object_column(values: list[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _problem(row: int | None, field: str | None, rule: str, message: str) -> dict[str, Any]:
    return {"row": row, "field": field, "rule": rule, "message": message}


def _unknown(row: int | None, key: Any) -> dict[str, Any]:
    name = str(key)
    if len(name) > _NAME_SHOWN:
        name = name[:_NAME_SHOWN] + "..."
    return _problem(row, name, "unknown_field", "this field is not an input of the model")


def _describe(problem: dict[str, Any]) -> str:
    where = []
    if problem["row"] is not None:
        where.append(f"row {problem['row']}")
    if problem["field"] is not None:
        where.append(f"field {problem['field']!r}")
    prefix = " ".join(where) if where else "request"
    return f"{prefix}: {problem['message']}"


MAX_DETAILS = 100


def _raise(problems: list[dict[str, Any]]) -> NoReturn:
    n = len(problems)
    rows = {p["row"] for p in problems if p["row"] is not None}
    head = f"{n} problem{'s' if n != 1 else ''}"
    if rows:
        head += f" in {len(rows)} row{'s' if len(rows) != 1 else ''}"
    parts = [_describe(p) for p in problems[:_SUMMARY_PROBLEMS]]
    if n > _SUMMARY_PROBLEMS:
        parts.append(f"and {n - _SUMMARY_PROBLEMS} more")
    # the first MAX_DETAILS problems, the count of all in the message: an answer stays small
    # whatever the body (100k bad rows once made a 289 MB 422)
    raise ValidationFailedError(f"{head}: " + "; ".join(parts), details=problems[:MAX_DETAILS])
