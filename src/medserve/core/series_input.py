"""From a request with trajectories to the model matrix: the series part of input validation.

A version whose signature declares ``series`` gets a :class:`SeriesDecoder` beside its compiled
validator (``LoadedModel.series``); a version without series pays nothing. The decoder turns
records (the reserved ``series`` and ``as_of`` keys), OIP v2 tensors (``<name>.values``,
``<name>.times``, ``<name>.lengths``) or FHIR Observations (made into records by the interop
codec) into the same padded arrays, checks them with the same rules, and appends the derived
columns (``series_features``) or the padded layout (the ``trajectory`` flavor) to the static
inputs. The matrix is then checked by the signature's validator like any other: what observers
log is the static inputs and the derived features or relative times, never an absolute date.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from medserve.core.errors import InvalidRequestError, ValidationFailedError
from medserve.core.registry.signature import Validator, _note_imputed, _raise, imputed_counts
from medserve.core.series import (
    RULE_TIME,
    Converter,
    Padded,
    SeriesDeclaration,
    check_padded,
    pack,
    pad,
    padded_columns,
    parse_instant,
    points_from_json,
    series_features,
)

if TYPE_CHECKING:
    from medserve.core.registry.signature import Signature

SERIES_KEY = "series"
AS_OF_KEY = "as_of"
RESERVED = frozenset({SERIES_KEY, AS_OF_KEY})


def _problem(row: int | None, field: str, rule: str, message: str) -> dict[str, Any]:
    return {"row": row, "field": field, "index": None, "rule": rule, "message": message}


class SeriesDecoder:
    """Compiled once per version, like the validator."""

    def __init__(self, signature: Signature) -> None:
        try:
            declaration = SeriesDeclaration(
                series=signature.series, features=signature.series_features
            )
        except ValueError as exc:
            raise InvalidRequestError(f"the signature's series are inconsistent: {exc}") from exc
        if not signature.all_numeric:
            raise InvalidRequestError("a model with series takes numeric static inputs only")
        self.series = list(declaration.series)
        self.features = list(declaration.features)
        self.by_name = {s.name: s for s in self.series}
        self.padded = not self.features  # the trajectory flavor's layout
        derived = padded_columns(self.series) if self.padded else [f.column for f in self.features]
        names = [f.name for f in signature.inputs]
        absent = [c for c in derived if c not in names]
        if absent:
            shown = ", ".join(absent[:5])
            raise InvalidRequestError(
                f"the signature's inputs lack the columns derived from its series: {shown}"
            )
        self.derived = derived
        self.derived_set = frozenset(derived)
        self.static_specs = [f for f in signature.inputs if f.name not in self.derived_set]
        self.static = Validator(self.static_specs) if self.static_specs else None
        position = {name: j for j, name in enumerate(names)}
        self._static_at = np.array([position[f.name] for f in self.static_specs], dtype=np.intp)
        self._derived_at = np.array([position[c] for c in derived], dtype=np.intp)
        self.n_columns = len(names)
        self.full = signature.validator()

    # -- the shared end ------------------------------------------------------------------------
    def derive(self, batch: Mapping[str, Padded]) -> np.ndarray:
        """The derived columns (features, or the padded layout) of checked series."""
        if self.padded:
            return pack(self.series, batch)
        return series_features(self.features, batch)

    def _matrix(self, static: np.ndarray | None, batch: Mapping[str, Padded], n: int) -> np.ndarray:
        matrix = np.empty((n, self.n_columns), dtype=np.float64)
        if static is not None and len(self._static_at):
            matrix[:, self._static_at] = static
        matrix[:, self._derived_at] = self.derive(batch)
        checked = self.full.checked_numeric(matrix)
        if checked is None:
            checked = self.full.check_matrix(matrix)  # explains (a derived value out of range)
        imputed = imputed_counts(static) if static is not None else None
        if imputed is not None:  # what arrived missing among the static inputs, for the log
            counts = np.zeros(self.n_columns, dtype=np.int64)
            counts[self._static_at] = imputed
            derived = imputed_counts(checked)
            _note_imputed(checked, counts if derived is None else counts + derived)
        return checked

    def _check(self, batch: dict[str, Padded], problems: list[dict[str, Any]]) -> dict[str, Padded]:
        out: dict[str, Padded] = {}
        for spec in self.series:
            checked, found = check_padded(spec, batch[spec.name])
            problems.extend(found)
            out[spec.name] = checked if found else checked.to_width(spec.max_length)
        return out

    # -- records ---------------------------------------------------------------------------------
    def records_to_matrix(
        self, rows: Sequence[Any], convert: Converter | None = None
    ) -> np.ndarray:
        """Records with ``series`` and ``as_of`` into the model matrix; every problem of the
        request (static and series) in one 422."""
        if not isinstance(rows, list | tuple) or not rows:
            # the static validator words these two cases
            (self.static or self.full).records_to_matrix(rows)
        problems: list[dict[str, Any]] = []
        static_rows: list[dict[str, Any]] = []
        points: dict[str, list[list[tuple[float, float]]]] = {s.name: [] for s in self.series}
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                static_rows.append({})
                for name in points:
                    points[name].append([])
                problems.append(_problem(i, "instance", "not_object", "the row is not an object"))
                continue
            static_rows.append(
                {k: v for k, v in row.items() if k not in RESERVED and k not in self.derived_set}
            )
            for key in row:
                if key in self.derived_set:
                    problems.append(
                        _problem(
                            i,
                            str(key),
                            "derived",
                            "computed from the series by the server: send the series instead",
                        )
                    )
            as_of = self._as_of(row.get(AS_OF_KEY), i, problems)
            raw = row.get(SERIES_KEY)
            if raw is None:
                raw = {}
            if not isinstance(raw, Mapping):
                problems.append(
                    _problem(
                        i,
                        SERIES_KEY,
                        "type",
                        'series must be an object {"name": [[time, value], ...]}',
                    )
                )
                raw = {}
            for key in raw:
                if key not in self.by_name:
                    problems.append(
                        _problem(
                            i,
                            f"{SERIES_KEY}.{str(key)[:80]}",
                            "unknown_field",
                            "not a series of the model",
                        )
                    )
            for spec in self.series:
                given = raw.get(spec.name)
                if given is None or as_of is None:
                    points[spec.name].append([])
                    continue
                points[spec.name].append(points_from_json(spec, given, as_of, i, problems, convert))
        static = self._static_records(static_rows, problems)
        batch = {s.name: pad(points[s.name], s.max_length) for s in self.series}
        batch = self._check(batch, problems)
        if problems:
            _raise(_ordered(problems))
        return self._matrix(static, batch, len(rows))

    @staticmethod
    def _as_of(raw: Any, row: int, problems: list[dict[str, Any]]) -> datetime | None:
        if raw is None:
            problems.append(
                _problem(
                    row,
                    AS_OF_KEY,
                    "required",
                    "as_of (the prediction time, ISO 8601 with an offset) is required with series",
                )
            )
            return None
        at = parse_instant(raw)
        if at is None:
            problems.append(
                _problem(
                    row, AS_OF_KEY, RULE_TIME, "as_of must be an ISO 8601 date-time with an offset"
                )
            )
        return at

    def _static_records(
        self, rows: list[dict[str, Any]], problems: list[dict[str, Any]]
    ) -> np.ndarray | None:
        if self.static is None:
            for i, row in enumerate(rows):
                for key in row:
                    if key not in self.derived_set:
                        problems.append(
                            _problem(i, str(key)[:80], "unknown_field", "not an input of the model")
                        )
            return None
        try:
            return self.static.records_to_matrix(rows)
        except ValidationFailedError as exc:
            problems.extend(exc.details)
            return None

    # -- OIP v2 tensors ----------------------------------------------------------------------------
    def tensors_to_matrix(self, tensors: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
        """Per-feature static tensors plus ``<name>.values`` / ``.times`` (FP32 ``[n, width]``,
        seconds before as_of) and ``.lengths`` (INT32 ``[n]``) per series."""
        problems: list[dict[str, Any]] = []
        static_cols: dict[str, np.ndarray] = {}
        parts: dict[str, dict[str, np.ndarray]] = {s.name: {} for s in self.series}
        for i, (name, array) in enumerate(tensors):
            base, _, part = name.rpartition(".")
            if base in parts and part in ("values", "times", "lengths"):
                if part in parts[base]:
                    problems.append(_problem(None, name, "duplicate", f"inputs[{i}] repeats it"))
                parts[base][part] = array
            elif name in self.derived_set:
                problems.append(
                    _problem(None, name, "derived", "computed from the series: send the series")
                )
            elif self.static is not None and name in self.static.position:
                if array.ndim == 2 and array.shape[1] == 1:
                    array = array[:, 0]
                static_cols[name] = array
            else:
                problems.append(
                    _problem(None, name[:80], "unknown_field", "not an input of this model")
                )
        n: int | None = None
        batch: dict[str, Padded] = {}
        for spec in self.series:
            got = parts[spec.name]
            lacking = [p for p in ("values", "times", "lengths") if p not in got]
            if lacking:
                problems.append(
                    _problem(
                        None,
                        f"{spec.name}.{lacking[0]}",
                        "required",
                        f"series {spec.name!r} needs the tensors {spec.name}.values, "
                        f"{spec.name}.times and {spec.name}.lengths",
                    )
                )
                continue
            values, times, lengths = got["values"], got["times"], got["lengths"]
            if (
                values.ndim != 2
                or times.shape != values.shape
                or lengths.ndim != 1
                or lengths.shape[0] != values.shape[0]
                or values.dtype.kind not in "iuf"
                or times.dtype.kind not in "iuf"
                or lengths.dtype.kind not in "iu"
            ):
                problems.append(
                    _problem(
                        None,
                        spec.name,
                        "shape",
                        f"{spec.name}.values and .times must be numeric [batch, max_len] and "
                        f"{spec.name}.lengths integer [batch]",
                    )
                )
                continue
            width = values.shape[1]
            lengths64 = lengths.astype(np.int64)
            # over max_length is its own rule (check_padded); within it, past the tensor is shape
            wrong = (lengths64 < 0) | ((lengths64 > width) & (lengths64 <= spec.max_length))
            for r in np.flatnonzero(wrong).tolist():
                problems.append(
                    _problem(
                        r,
                        f"{spec.name}.lengths",
                        "shape",
                        "a length must be between 0 and the tensor's second dimension",
                    )
                )
            if n is None:
                n = values.shape[0]
            elif values.shape[0] != n:
                problems.append(
                    _problem(None, spec.name, "shape", "every series must have the same batch size")
                )
                continue
            batch[spec.name] = Padded(
                values.astype(np.float32).astype(np.float64),
                times.astype(np.float64),
                np.maximum(lengths64, 0),
            )
        static: np.ndarray | None = None
        if self.static is not None:
            try:
                static = self.static.columns_to_matrix(static_cols)
            except ValidationFailedError as exc:
                problems.extend(exc.details)
            else:
                if n is not None and static.shape[0] != n:
                    problems.append(
                        _problem(
                            None, "inputs", "shape", "the static and series batch sizes differ"
                        )
                    )
        if not problems:
            batch = self._check(batch, problems)
        if problems:
            _raise(_ordered(problems))
        rows = n if n is not None else (static.shape[0] if static is not None else 0)
        return self._matrix(static, batch, rows)

    # -- metadata ----------------------------------------------------------------------------------
    def metadata_inputs(self) -> list[dict[str, Any]]:
        """The OIP v2 metadata of the series tensors (the -1 dimensions: batch and length)."""
        out: list[dict[str, Any]] = []
        for s in self.series:
            params: dict[str, Any] = {"max_length": s.max_length, "series": s.name}
            if s.unit is not None:
                params["unit"] = s.unit
            if s.max_gap is not None:
                params["max_gap_seconds"] = s.max_gap
            if s.lookback is not None:
                params["lookback_seconds"] = s.lookback
            out.append(
                {
                    "name": f"{s.name}.values",
                    "datatype": "FP32",
                    "shape": [-1, -1],
                    "parameters": params,
                }
            )
            out.append(
                {
                    "name": f"{s.name}.times",
                    "datatype": "FP32",
                    "shape": [-1, -1],
                    "parameters": {**params, "meaning": "seconds before as_of, oldest first"},
                }
            )
            out.append(
                {
                    "name": f"{s.name}.lengths",
                    "datatype": "INT32",
                    "shape": [-1],
                    "parameters": params,
                }
            )
        return out


def _ordered(problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Problems by row (request-wide ones first), so a long answer reads in request order."""
    return sorted(problems, key=lambda p: -1 if p.get("row") is None else p["row"])
