"""service.params: one table of scoring parameters, read from a query string or from JSON, with 422s that name them."""

from __future__ import annotations

import pytest

from service.errors import ServiceError
from service.params import (
    PARAMETERS,
    POSITIVE,
    ScoreParams,
    from_json,
    from_query,
    json_properties,
    query_parameters,
)


def test_a_query_string_becomes_typed_params():
    query = {"model": "m/2", "alpha": "0.1", "levels": "YES", "timeout_ms": "250", "conditional": "off", "x": "1"}
    assert from_query(query) == ScoreParams(model="m/2", alpha=0.1, levels=True, timeout_ms=250.0, conditional=False)
    assert from_query(query).timeout_s == 0.25
    assert from_query({}) == ScoreParams() and ScoreParams().timeout_s is None


def test_json_parameters_become_typed_params_and_skip_what_belongs_to_the_path():
    parameters = {"alpha": 0.05, "score": "bpd", "timeout_ms": 100, "fdr": None, "delta": 0.1, "model": "ignored"}
    assert from_json(parameters) == ScoreParams(alpha=0.05, score="bpd", timeout_ms=100.0, delta=0.1)


@pytest.mark.parametrize(
    "parse, given, message",
    [
        (from_query, {"alpha": "abc"}, "query.alpha: 'abc' is not a number"),
        (from_query, {"timeout_ms": "0"}, "query.timeout_ms: must be greater than 0, got '0'"),
        (from_query, {"levels": "maybe"}, "query.levels: 'maybe' is not a boolean"),
        (from_query, {"conditional": "2"}, "query.conditional: '2' is not a boolean"),
        (from_json, {"score": 3}, "parameter score must be a string"),
        (from_json, {"alpha": "0.1"}, "parameter alpha must be a number"),
        (from_json, {"alpha": True}, "parameter alpha must be a number"),
        (from_json, {"fdr": 10**400}, "parameter fdr is too large"),
        (from_json, {"delta": float("nan")}, "parameter delta must be finite"),
        (from_json, {"timeout_ms": -1}, "parameter timeout_ms must be greater than 0, got -1.0"),
        (from_json, {"conditional": "yes"}, "parameter conditional must be a boolean"),
    ],
)
def test_a_bad_value_is_a_422_naming_it(parse, given, message):
    with pytest.raises(ServiceError) as caught:
        parse(given)
    assert (caught.value.status, caught.value.code, caught.value.message) == (422, "invalid_parameter", message)


def test_the_documentation_is_made_from_the_same_table():
    names = [p.name for p in PARAMETERS]
    assert [p["name"] for p in query_parameters()] == names
    assert all(p["in"] == "query" and p["required"] is False and p["description"] for p in query_parameters())
    assert list(json_properties()) == ["alpha", "score", "timeout_ms", "fdr", "conditional", "delta"]
    assert set(names) == set(ScoreParams.__dataclass_fields__)  # every parameter is a field, and back


def test_every_positive_parameter_is_refused_at_zero_by_both_parsers():
    positive = [parameter.name for parameter in PARAMETERS if parameter.schema is POSITIVE]
    assert positive  # the check follows the schema, so it covers whatever is declared POSITIVE
    for name in positive:
        with pytest.raises(ServiceError, match=f"{name}.*greater than 0"):
            from_query({name: "0"})
        with pytest.raises(ServiceError, match=f"{name}.*greater than 0"):
            from_json({name: 0})
