"""Validates events the way rotor does, from the same events/*.schema.json files (for e2e tests)."""
import functools
import json
import os
import pathlib
import re

from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import best_match

SOURCE_DIR = pathlib.Path(
    os.environ.get("ROTOR_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
EVENTS_DIR = SOURCE_DIR / "events"


class EventInvalid(ValueError):
    """An event that rotor would refuse; str() is the reason."""


@functools.lru_cache(maxsize=None)
def load_schemas():
    """Returns {event type: schema} for every events/<type>.schema.json."""
    return {p.name[:-len(".schema.json")]: json.loads(p.read_text())
            for p in sorted(EVENTS_DIR.glob("*.schema.json"))}


def _posix_pattern(validator, pattern, instance, schema):
    # rotor matches patterns with POSIX regexec, where "$" is the very end of the string; Python's
    # "$" also matches before a final newline, which would let "pg-orders\n" pass as a secret name.
    if not validator.is_type(instance, "string"):
        return
    anchored = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern
    if not re.search(anchored, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


StrictValidator = validators.extend(Draft202012Validator, {"pattern": _posix_pattern})


def _pointer(error):
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in error.absolute_path)


def validate_event(event):
    """Raises EventInvalid with the reason unless event (a dict) is a valid rotor CloudEvent."""
    if not isinstance(event, dict):
        raise EventInvalid(f"event must be a JSON object, not {type(event).__name__}")
    schema = load_schemas().get(event.get("type"))
    if schema is None:
        raise EventInvalid(f"unknown event type {event.get('type')!r}")
    error = best_match(StrictValidator(schema).iter_errors(event))
    if error is not None:
        raise EventInvalid(f"{_pointer(error)}: {error.message}")


def validate_message(value):
    """Parses a structured-mode Kafka value (bytes or str), validates it, returns the dict."""
    try:
        event = json.loads(value)
    except ValueError as e:
        raise EventInvalid(f"not valid JSON: {e}") from e
    validate_event(event)
    return event
