"""Typed reads of what a client sends: JSON bodies and query parameters.

A route never indexes a request body or calls ``int()``/``float()`` on a query value itself:
whatever the client sent (a number where a string belongs, a list, ``null``, ``NaN``, a
40,000-character value, junk nested ten deep) either comes out of here as the type the code
expects or becomes a 400 in Custom Vision's error shape that names the field. That keeps wrong
types from surfacing later as ``AttributeError`` -> 500.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import suppress
from typing import Any

from visionpipe.api import errors as api_errors

#: The longest query value accepted anywhere (256 comma-joined ids fit; a table row's string
#: property, 32K characters, does not).
MAX_QUERY_VALUE = 10_000
#: Free text (names, descriptions, application ids) unless a route says otherwise.
MAX_TEXT = 1024
MAX_LIST = 1024


def is_id(value: str) -> bool:
    """Could be an id we handed out (a GUID; letters, digits and dashes): anything else would
    only reach a table key, where characters like ``/``, ``#`` or ``?`` are an error."""
    return re.fullmatch(r"[0-9A-Za-z-]{1,64}", value) is not None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(raw: bytes, *, required: bool = False) -> Values:
    """A request body that must be a JSON object (``{}`` when empty and not ``required``).

    Strict JSON: ``NaN``/``Infinity`` and numbers that overflow to infinity are refused.
    """
    if not raw or not raw.strip():
        if required:
            raise api_errors.bad_request("BadRequest", "a JSON body is required")
        return Values({})
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise api_errors.bad_request("BadRequest", "the body is not valid JSON") from e
    if not isinstance(body, dict):
        raise api_errors.bad_request("BadRequest", "the body must be a JSON object")
    return Values(body)


class Values(Mapping[str, Any]):
    """A JSON object with typed accessors; ``where`` prefixes field names in messages
    (``images[3].url``). Still a read-only mapping, so ``dict(values)`` echoes it."""

    def __init__(self, data: Mapping[str, Any], where: str = "") -> None:
        self._data = data
        self._where = where

    # Mapping
    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def _name(self, name: str) -> str:
        return f"{self._where}.{name}" if self._where else name

    def _bad(self, name: str, expected: str) -> api_errors.ApiError:
        return api_errors.bad_value(self._name(name), expected)

    def string(self, name: str, *, required: bool = False,
               max_length: int | None = MAX_TEXT) -> str | None:
        """A string (None when absent or null, unless ``required``)."""
        value = self._data.get(name)
        if value is None:
            if required:
                raise self._bad(name, "a string")
            return None
        if not isinstance(value, str) or (max_length is not None and len(value) > max_length):
            raise self._bad(name, f"a string of at most {max_length} characters"
                            if max_length is not None else "a string")
        return value

    def integer(self, name: str, default: int, low: int = 0, high: int = 2**31 - 1) -> int:
        """An integer in [low, high]: a JSON integer or a string of digits (the SDK writes
        continuation tokens as strings)."""
        value = self._data.get(name)
        if value is None or value == "":
            return default
        if isinstance(value, str) and len(value) < 20:
            with suppress(ValueError):  # "²" is a digit to str.isdigit, not to int()
                value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._bad(name, f"an integer in [{low}, {high}]")
        return value

    def number(self, name: str, default: float, low: float = -math.inf,
               high: float = math.inf) -> float:
        """A finite number in [low, high] (a JSON number, or a string that is one)."""
        value = self._data.get(name)
        if value is None or value == "":
            return default
        if isinstance(value, str) and len(value) < 64:
            with suppress(ValueError):
                value = _finite(value)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or not low <= value <= high:
            raise self._bad(name, f"a number in [{low}, {high}]")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._data.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._bad(name, "true or false")
        return value

    def strings(self, name: str, *, max_items: int = MAX_LIST,
                max_length: int = MAX_TEXT) -> list[str]:
        """A list of strings ([] when absent or null)."""
        value = self._data.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > max_items or not all(
                isinstance(v, str) and len(v) <= max_length for v in value):
            raise self._bad(name, f"a list of at most {max_items} strings")
        return value

    def object(self, name: str) -> Values:
        """A nested object (empty when absent or null)."""
        value = self._data.get(name)
        if value is None:
            return Values({}, self._name(name))
        if not isinstance(value, dict):
            raise self._bad(name, "an object")
        return Values(value, self._name(name))

    def objects(self, name: str, *, max_items: int = MAX_LIST) -> list[Values] | None:
        """A list of objects (None when absent or null)."""
        value = self._data.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or len(value) > max_items or not all(
                isinstance(v, dict) for v in value):
            raise self._bad(name, f"a list of at most {max_items} objects")
        return [Values(v, f"{self._name(name)}[{i}]") for i, v in enumerate(value)]


class Query:
    """Typed reads of query parameters (all strings on the wire)."""

    def __init__(self, params: Mapping[str, str]) -> None:
        self._params = params

    def string(self, name: str, *, max_length: int = MAX_TEXT) -> str | None:
        """The value, None when absent or empty."""
        value = self._params.get(name)
        if value is None or value == "":
            return None
        if len(value) > max_length:
            raise api_errors.bad_value(name, f"at most {max_length} characters")
        return value

    def integer(self, name: str, default: int, low: int = 0, high: int = 2**31 - 1) -> int:
        value = self.string(name, max_length=20)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise api_errors.bad_value(name, f"an integer in [{low}, {high}]")
        return number

    def number(self, name: str, default: float, low: float = -math.inf,
               high: float = math.inf) -> float:
        value = self.string(name, max_length=64)
        if value is None:
            return default
        try:
            number = _finite(value)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise api_errors.bad_value(name, f"a number in [{low}, {high}]")
        return number

    def flag(self, name: str, default: bool) -> bool:
        """A boolean as the SDK writes it (``true``/``false``)."""
        value = self.string(name, max_length=16)
        if value is None:
            return default
        return value.strip().lower() in {"true", "1", "yes"}

    def id(self, name: str) -> str | None:
        """An id (None when absent or empty), or 400."""
        value = self.string(name, max_length=64)
        if value is not None and not is_id(value):
            raise api_errors.bad_value(name, "an id")
        return value

    def ids(self, name: str) -> list[str]:
        """``ids=a,b,c`` (the SDK joins list parameters with commas)."""
        return [v.strip() for v in (self.string(name, max_length=MAX_QUERY_VALUE) or "")
                .split(",") if v.strip()]


def check_query(params: Mapping[str, str]) -> None:
    """Refuse any over-long query value before a route reads it (a backstop: a value that long
    is never meaningful, and storing one would fail in the table service)."""
    for name, value in params.items():
        if len(name) > 256 or len(value) > MAX_QUERY_VALUE:
            raise api_errors.bad_request(
                "BadRequest", f"query parameter values are limited to {MAX_QUERY_VALUE} characters")
