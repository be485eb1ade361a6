"""A scoring request's parameters: one typed object, one table, read from a query string or from JSON.

``POST /score`` takes them in its query string, ``POST /v2/models/{name}/infer``
in the JSON ``parameters`` object, the sidecar from its settings; all three end
as one :class:`ScoreParams` that the data plane reads. :data:`PARAMETERS` is
the one definition of each parameter's name, JSON-schema type and meaning: the
query parser, the JSON parser and the OpenAPI document (``service/api/openapi.py``)
are all made from it, so the documentation cannot drift from what is parsed.

Only a parameter's syntax is checked here (a number, a boolean, and ``> 0`` for a
:data:`POSITIVE` one, which its schema promises);
whether a level is in (0, 1), a score exists or two parameters conflict is the
data plane's decision (``DataPlane.decision_rule``), with its own 422 codes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ServiceError

UNIT_INTERVAL = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
POSITIVE = {"type": "number", "exclusiveMinimum": 0}


@dataclass(frozen=True)
class Parameter:
    name: str
    schema: dict  # JSON schema: its "type" says how the value is parsed
    description: str
    query_only: bool = False  # model, version and levels are the path's or the response's business under /v2


PARAMETERS = (
    Parameter(
        "model", {"type": "string"}, "Model name (or name/version); default: the server's default.", query_only=True
    ),
    Parameter("version", {"type": "string"}, "Model version; default: the latest.", query_only=True),
    Parameter("alpha", UNIT_INTERVAL, "False-positive bound of the OOD flag, in (0, 1); default: the model's."),
    Parameter("score", {"type": "string"}, "Score that decides the flag; default: the model's."),
    Parameter("levels", {"type": "boolean"}, "Also return log_pz and log_det per scale level.", query_only=True),
    Parameter("timeout_ms", POSITIVE, "Deadline for this request in ms, > 0 (capped by settings); past it: 504."),
    Parameter(
        "fdr",
        UNIT_INTERVAL,
        "Flag the Benjamini-Hochberg discoveries at this false-discovery rate (0, 1); not with alpha.",
    ),
    Parameter(
        "conditional",
        {"type": "boolean"},
        "Calibration-conditional flags (FPR <= alpha with probability >= 1 - delta).",
    ),
    Parameter(
        "delta", UNIT_INTERVAL, "delta of the calibration-conditional flags, in (0, 1); implies conditional=true."
    ),
)
TRUE, FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off"})


@dataclass
class ScoreParams:
    """What a request asks of the scoring: which model, which score and rule, by when; None: the default."""

    model: str | None = None
    version: str | None = None
    alpha: float | None = None
    score: str | None = None
    levels: bool = False  # also answer the per-level statistics (REST)
    timeout_ms: float | None = None
    fdr: float | None = None  # decide the request's images by Benjamini-Hochberg at this level
    conditional: bool | None = None  # None: the model's default (settings.conditional_models)
    delta: float | None = None  # of the calibration-conditional flag; implies it

    @property
    def timeout_s(self) -> float | None:
        return None if self.timeout_ms is None else self.timeout_ms / 1000


def invalid(message: str) -> ServiceError:
    return ServiceError(422, "invalid_parameter", message)


def check_positive(parameter: Parameter, value: float, where: str, sent: object) -> None:
    """What a :data:`POSITIVE` schema promises, for both parsers (levels in (0, 1) are the data plane's)."""
    if parameter.schema is POSITIVE and not value > 0:
        raise invalid(f"{where} must be greater than 0, got {sent!r}")


def from_query(query: Mapping[str, str]) -> ScoreParams:
    """``POST /score``'s query string, read by hand.

    FastAPI's per-request parameter machinery stood out in py-spy profiles of
    one-image requests; a few optional scalars do not need it. Errors are the same
    422 ``invalid_parameter`` FastAPI's validation gave.
    """
    params = ScoreParams()
    for parameter in PARAMETERS:
        raw = query.get(parameter.name)
        if raw is None:
            continue
        kind = parameter.schema["type"]
        if kind == "string":
            value = raw
        elif kind == "number":
            try:
                value = float(raw)
            except ValueError:
                raise invalid(f"query.{parameter.name}: {raw!r} is not a number") from None
            check_positive(parameter, value, f"query.{parameter.name}:", raw)
        else:
            if raw.lower() not in TRUE | FALSE:
                raise invalid(f"query.{parameter.name}: {raw!r} is not a boolean")
            value = raw.lower() in TRUE
        setattr(params, parameter.name, value)
    return params


def from_json(parameters: Mapping[str, object]) -> ScoreParams:
    """The Open Inference Protocol's request ``parameters`` (JSON values, checked for type)."""
    params = ScoreParams()
    for parameter in PARAMETERS:
        if parameter.query_only:
            continue
        kind = parameter.schema["type"]
        value = parameters.get(parameter.name)
        if kind == "string":
            if value is not None and not isinstance(value, str):
                raise invalid(f"parameter {parameter.name} must be a string")
        elif kind == "number":
            value = number(value, parameter.name)
            if value is not None:
                check_positive(parameter, value, f"parameter {parameter.name}", value)
        else:
            value = boolean(value, parameter.name)
        setattr(params, parameter.name, value)
    return params


def number(value, name: str) -> float | None:
    """A finite JSON number (NaN, infinities, booleans and integers past float range are refused with 422)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"parameter {name} must be a number")
    try:
        number = float(value)
    except OverflowError:
        raise invalid(f"parameter {name} is too large") from None
    if not math.isfinite(number):
        raise invalid(f"parameter {name} must be finite")
    return number


def boolean(value, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise invalid(f"parameter {name} must be a boolean")


def query_parameters() -> list[dict]:
    """The OpenAPI ``parameters`` of ``POST /score``."""
    return [
        {"name": p.name, "in": "query", "required": False, "schema": dict(p.schema), "description": p.description}
        for p in PARAMETERS
    ]


def json_properties() -> dict[str, dict]:
    """The JSON-schema ``properties`` of the v2 request's ``parameters`` that are scoring parameters."""
    return {p.name: dict(p.schema) for p in PARAMETERS if not p.query_only}
