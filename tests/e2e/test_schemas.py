"""The event catalogue: schemas are valid draft 2020-12, examples pass, invalid inputs fail, and
rotor's C validator (schema_check) agrees with python jsonschema on every file."""
import json
import os
import pathlib
import subprocess

import pytest
from jsonschema import Draft202012Validator

from schemas import EVENTS_DIR, EventInvalid, load_schemas, validate_event

SUPPORTED = {"type", "properties", "required", "additionalProperties", "enum", "const", "pattern",
             "minLength", "maxLength", "minimum", "maximum", "items", "minItems", "maxItems",
             "$defs", "$ref", "description", "title", "$schema", "$id", "examples"}
EXAMPLES = sorted((EVENTS_DIR / "examples").glob("*.json"))
INVALID = sorted((EVENTS_DIR / "invalid").glob("*.json"))


def python_verdict(path):
    """True if python jsonschema accepts the file as an event of the type it names."""
    try:
        doc = json.loads(path.read_bytes())
    except ValueError:
        return False
    if not isinstance(doc, dict) or doc.get("type") not in load_schemas():
        return False
    return Draft202012Validator(load_schemas()[doc["type"]]).is_valid(doc)


def walk(schema, where):
    """Yields (where, keyword) for every keyword of every subschema."""
    if isinstance(schema, bool):
        return
    for key, value in schema.items():
        yield where, key
        if key in ("properties", "$defs"):
            for name, sub in value.items():
                yield from walk(sub, f"{where}/{key}/{name}")
        elif key in ("additionalProperties", "items"):
            yield from walk(value, f"{where}/{key}")


def test_catalogue_is_complete():
    schemas = load_schemas()
    assert len(schemas) >= 15
    assert {p.stem for p in EXAMPLES} == set(schemas)
    assert len(INVALID) >= 15
    for path in INVALID:
        assert path.with_suffix(".reason").read_text().strip(), path


@pytest.mark.parametrize("type_", sorted(load_schemas()))
def test_schema_is_draft_2020_12(type_):
    schema = load_schemas()[type_]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["type"] == {"const": type_}
    unsupported = [(w, k) for w, k in walk(schema, "#") if k not in SUPPORTED]
    assert not unsupported, "the C validator would ignore these keywords"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_valid(path):
    doc = json.loads(path.read_text())
    assert doc["type"] == path.stem
    Draft202012Validator(load_schemas()[path.stem]).validate(doc)
    validate_event(doc)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_is_invalid(path):
    assert not python_verdict(path)
    try:
        doc = json.loads(path.read_bytes())
    except ValueError:
        return
    with pytest.raises(EventInvalid):
        validate_event(doc)


def test_validate_event_reports_pointer_and_is_strict_about_newlines():
    doc = json.loads((EVENTS_DIR / "examples" / "stage.started.json").read_text())
    doc["data"]["attempt"] = 0
    with pytest.raises(EventInvalid, match=r"^/data/attempt: "):
        validate_event(doc)
    doc["data"]["attempt"] = 1
    doc["subject"] = "pg-orders\n"
    with pytest.raises(EventInvalid, match=r"^/subject: "):
        validate_event(doc)


def schema_check():
    build = os.environ.get("ROTOR_BUILD_DIR")
    if not build:
        pytest.skip("ROTOR_BUILD_DIR not set (ctest sets it)")
    tool = pathlib.Path(build) / "schema_check"
    assert tool.exists(), f"{tool} not built"
    return tool


def test_c_validator_agrees_with_python():
    files = EXAMPLES + INVALID
    out = subprocess.run([str(schema_check()), *map(str, files)], capture_output=True, text=True,
                         check=True, timeout=60).stdout.splitlines()
    assert len(out) == len(files)
    for path, line in zip(files, out):
        verdict, _, reason = line.partition("\t")
        assert verdict in ("valid", "invalid"), line
        assert (verdict == "valid") == python_verdict(path), f"{path.name}: C says {line!r}"
        if path in INVALID:
            assert path.with_suffix(".reason").read_text().strip() in reason, path.name
