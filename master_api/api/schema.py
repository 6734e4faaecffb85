"""A small typed schema helper: validate JSON bodies and query strings, describe them in OpenAPI.

A :class:`Schema` lists :class:`Field` s and a ``target`` that builds the typed value (usually a
frozen dataclass) from the validated fields. :meth:`Schema.parse` refuses, with a 400 naming the
field: unknown fields, missing required ones, wrong types, strings that are too long or do not
match, numbers out of range (integers are always kept within int64, which is what the database
stores), non-finite numbers, text that is not valid Unicode, and free-form objects nested too
deeply or with keys the database cannot store. :meth:`Schema.json_schema` gives the same rules
as JSON Schema for the OpenAPI document, so the two cannot drift apart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from werkzeug.datastructures import MultiDict

from master_api.errors import BadRequest

__all__ = ["INT64_MAX", "Field", "Schema"]

T = TypeVar("T")
Kind = Literal["string", "integer", "number", "boolean", "array", "object"]

INT64_MAX = 2**63 - 1
_KEY_RE = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
_KEY = re.compile(_KEY_RE)
_FREE_MAX_DEPTH = 4
_FREE_MAX_ITEMS = 200
_FREE_MAX_STRING = 4096
_MAX_FLOAT = 1.7e308


@dataclass(frozen=True, slots=True)
class Field:
    """One field. ``kind`` is its JSON type; the other attributes constrain it.

    ``object`` fields are free-form JSON objects (keys ``[A-Za-z_][A-Za-z0-9_-]*``, at most
    ``_FREE_MAX_DEPTH`` levels, scalars and lists inside) unless ``nested`` gives their schema.
    ``array`` fields hold ``items``. An absent field is not passed to the schema's target, so
    the target's own default applies; ``nullable`` allows an explicit null.
    """

    name: str
    kind: Kind
    description: str = ""
    required: bool = False
    nullable: bool = False
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    enum: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    items: Field | None = None
    min_items: int | None = None
    max_items: int | None = None
    unique_items: bool = False
    nested: Schema[Any] | None = None
    """For ``object`` fields: validate with this schema instead of as free-form JSON."""

    # -- validation -----------------------------------------------------------------------

    def check(self, value: object, path: str) -> Any:
        """The validated value (arrays become tuples), or ``BadRequest`` naming ``path``."""
        if value is None:
            if self.nullable:
                return None
            raise _bad(path, f"must not be null; expected {self._expected()}")
        if self.kind == "string":
            return self._check_string(value, path)
        if self.kind == "integer":
            return self._check_integer(value, path)
        if self.kind == "number":
            return self._check_number(value, path)
        if self.kind == "boolean":
            if not isinstance(value, bool):
                raise _bad(path, f"expected a boolean, got {_kind(value)}")
            return value
        if self.kind == "array":
            return self._check_array(value, path)
        if self.nested is not None:
            return self.nested.parse(value, path)
        return _check_free_object(value, path, 0)

    def _expected(self) -> str:
        return {"integer": "an integer", "array": "an array", "object": "an object"}.get(
            self.kind, f"a {self.kind}"
        )

    def _check_string(self, value: object, path: str) -> str:
        if not isinstance(value, str):
            raise _bad(path, f"expected a string, got {_kind(value)}")
        _check_unicode(value, path)
        if self.min_length is not None and len(value) < self.min_length:
            raise _bad(path, f"must have at least {self.min_length} character(s)")
        if self.max_length is not None and len(value) > self.max_length:
            raise _bad(path, f"must have at most {self.max_length} characters")
        if self.enum is not None and value not in self.enum:
            raise _bad(path, f"expected one of {', '.join(self.enum)}; got {value[:40]!r}")
        if self.pattern is not None and not re.search(self.pattern, value):
            raise _bad(path, f"does not match {self.pattern}")
        return value

    def _check_integer(self, value: object, path: str) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON Schema counts 3.0 as an integer; so do we
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(path, f"expected an integer, got {_kind(value)}")
        low = -INT64_MAX - 1 if self.minimum is None else self.minimum
        high = INT64_MAX if self.maximum is None else self.maximum
        if not low <= value <= high:
            raise _bad(path, f"must be between {low:g} and {high:g}")
        return value

    def _check_number(self, value: object, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(path, f"expected a number, got {_kind(value)}")
        number = _finite(value)
        if number is None:
            raise _bad(path, "must be a finite number")
        if self.minimum is not None and number < self.minimum:
            raise _bad(path, f"must be at least {self.minimum:g}")
        if self.maximum is not None and number > self.maximum:
            raise _bad(path, f"must be at most {self.maximum:g}")
        return number

    def _check_array(self, value: object, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _bad(path, f"expected an array, got {_kind(value)}")
        if self.min_items is not None and len(value) < self.min_items:
            raise _bad(path, f"must have at least {self.min_items} item(s)")
        if self.max_items is not None and len(value) > self.max_items:
            raise _bad(path, f"must have at most {self.max_items} items")
        assert self.items is not None, f"array field {self.name} needs items"
        out = tuple(self.items.check(item, f"{path}[{i}]") for i, item in enumerate(value))
        if self.unique_items and len(set(out)) != len(out):
            raise _bad(path, "items must be unique")
        return out

    # -- description ----------------------------------------------------------------------

    def json_schema(self) -> dict[str, Any]:
        """This field as JSON Schema (OpenAPI 3.1 dialect)."""
        out: dict[str, Any] = {"type": [self.kind, "null"] if self.nullable else self.kind}
        if self.description:
            out["description"] = self.description
        for key, attr in (
            ("minLength", self.min_length),
            ("maxLength", self.max_length),
            ("pattern", self.pattern),
            ("minItems", self.min_items),
            ("maxItems", self.max_items),
        ):
            if attr is not None:
                out[key] = attr
        if self.enum is not None:
            out["enum"] = list(self.enum) + ([None] if self.nullable else [])
        if self.kind == "integer":
            out["minimum"] = int(self.minimum) if self.minimum is not None else -INT64_MAX - 1
            out["maximum"] = int(self.maximum) if self.maximum is not None else INT64_MAX
        elif self.kind == "number":
            out["minimum"] = self.minimum if self.minimum is not None else -_MAX_FLOAT
            out["maximum"] = self.maximum if self.maximum is not None else _MAX_FLOAT
        if self.kind == "array" and self.items is not None:
            out["items"] = self.items.json_schema()
            if self.unique_items:
                out["uniqueItems"] = True
        if self.kind == "object" and self.nested is not None:
            nested = self.nested.json_schema()
            if self.nullable:
                return {"anyOf": [nested, {"type": "null"}]}
            return nested
        if self.kind == "object":
            out["propertyNames"] = {"pattern": _KEY_RE}
            out["maxProperties"] = _FREE_MAX_ITEMS
            out["additionalProperties"] = _free_value_schema(_FREE_MAX_DEPTH)
        return out


class Schema(Generic[T]):
    """A named set of fields and the ``target`` that turns valid input into a typed value."""

    def __init__(
        self,
        name: str,
        fields: Sequence[Field],
        target: Callable[..., T],
        description: str = "",
        min_fields: int = 0,
    ) -> None:
        self.name = name
        self.fields = {f.name: f for f in fields}
        self.target = target
        self.description = description
        self.min_fields = min_fields

    def parse(self, data: object, where: str = "body") -> T:
        """Validate a JSON body; returns ``target(**fields given)`` or raises ``BadRequest``."""
        if not isinstance(data, dict):
            raise _bad(where, f"expected a JSON object, got {_kind(data)}")
        return self._build(data, where)

    def parse_query(self, args: MultiDict[str, str]) -> T:
        """Validate query parameters: strings converted to each field's type; an ``array``
        field may repeat (``?tag=a&tag=b``); any other repeats are refused."""
        values: dict[str, object] = {}
        for key in args:
            field = self.fields.get(key)
            raw = args.getlist(key)
            if field is None:
                values[key] = raw  # reported as unknown by _build
            elif field.kind == "array":
                values[key] = raw
            elif len(raw) > 1:
                raise _bad(f"query.{key}", "given more than once")
            else:
                values[key] = _from_query(field, raw[0], f"query.{key}")
        return self._build(values, "query")

    def _build(self, data: Mapping[str, object], where: str) -> T:
        for key in data:
            if key not in self.fields:
                known = ", ".join(self.fields) or "none"
                raise _bad(f"{where}.{_short(key)}", f"unknown field; expected one of: {known}")
        values: dict[str, Any] = {}
        for name, field in self.fields.items():
            path = f"{where}.{name}"
            if name in data:
                values[name] = field.check(data[name], path)
            elif field.required:
                raise _bad(path, "required")
        if len(values) < self.min_fields:
            raise BadRequest(f"{where}: give at least {self.min_fields} field(s)")
        return self.target(**values)

    def json_schema(self) -> dict[str, Any]:
        """The body as a JSON Schema object (``additionalProperties: false``)."""
        out: dict[str, Any] = {
            "type": "object",
            "properties": {name: f.json_schema() for name, f in self.fields.items()},
            "additionalProperties": False,
        }
        required = [name for name, f in self.fields.items() if f.required]
        if required:
            out["required"] = required
        if self.min_fields:
            out["minProperties"] = self.min_fields
        if self.description:
            out["description"] = self.description
        return out

    def query_parameters(self) -> list[dict[str, Any]]:
        """The fields as OpenAPI ``in: query`` parameters."""
        params: list[dict[str, Any]] = []
        for name, f in self.fields.items():
            param: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": f.required,
                "schema": f.json_schema(),
            }
            if f.description:
                param["description"] = f.description
            if f.kind == "array":
                param["style"] = "form"
                param["explode"] = True
            params.append(param)
        return params


# ----------------------------------------------------------------------------------------------


def _bad(path: str, message: str) -> BadRequest:
    return BadRequest(f"{path}: {message}", extra={"field": path})


def _short(key: str) -> str:
    return key if len(key) <= 40 else key[:37] + "..."


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check_unicode(value: str, path: str) -> None:
    # JSON may carry lone surrogates ("\ud800"); they cannot be stored as UTF-8.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(path, "is not valid Unicode text") from None


def _from_query(field: Field, raw: str, path: str) -> object:
    if field.kind == "integer":
        if not re.fullmatch(r"-?[0-9]{1,19}", raw):
            raise _bad(path, f"expected an integer, got {raw[:40]!r}")
        return int(raw)
    if field.kind == "number":
        try:
            return float(raw)
        except ValueError:
            raise _bad(path, f"expected a number, got {raw[:40]!r}") from None
    if field.kind == "boolean":
        if raw not in ("true", "false"):
            raise _bad(path, f"expected true or false, got {raw[:40]!r}")
        return raw == "true"
    return raw


def _check_free_object(value: object, path: str, depth: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(path, f"expected an object, got {_kind(value)}")
    if len(value) > _FREE_MAX_ITEMS:
        raise _bad(path, f"must have at most {_FREE_MAX_ITEMS} keys")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not _KEY.match(key):
            raise _bad(f"{path}.{_short(key)}", f"bad key; keys must match {_KEY_RE}")
        out[key] = _check_free_value(item, f"{path}.{key}", depth + 1)
    return out


def _finite(value: int | float) -> float | None:
    """``value`` as a float within +-``_MAX_FLOAT``, or None."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and abs(number) <= _MAX_FLOAT else None


def _check_free_value(value: object, path: str, depth: int) -> Any:
    """A value inside a free-form object at nesting ``depth`` (1 = the object's own values):
    containers only above ``_FREE_MAX_DEPTH``, exactly as ``_free_value_schema`` says."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and -INT64_MAX - 1 <= value <= INT64_MAX:
        return value
    if isinstance(value, int | float):
        # Stored as a double: beyond int64 an integer cannot be stored as one.
        number = _finite(value)
        if number is None:
            raise _bad(path, "must be a finite number within +-1.7e308")
        return number
    if isinstance(value, list | dict) and depth >= _FREE_MAX_DEPTH:
        raise _bad(path, f"nested more than {_FREE_MAX_DEPTH} levels")
    if isinstance(value, str):
        _check_unicode(value, path)
        if len(value) > _FREE_MAX_STRING:
            raise _bad(path, f"must have at most {_FREE_MAX_STRING} characters")
        return value
    if isinstance(value, list):
        if len(value) > _FREE_MAX_ITEMS:
            raise _bad(path, f"must have at most {_FREE_MAX_ITEMS} items")
        return [_check_free_value(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return _check_free_object(value, path, depth)
    raise _bad(path, f"unsupported value {_kind(value)}")


def _free_value_schema(depth: int) -> dict[str, Any]:
    """JSON Schema of a free-form value nested at most ``depth`` more levels."""
    scalars: list[dict[str, Any]] = [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "integer", "minimum": -INT64_MAX - 1, "maximum": INT64_MAX},
        {"type": "number", "minimum": -_MAX_FLOAT, "maximum": _MAX_FLOAT},
        {"type": "string", "maxLength": _FREE_MAX_STRING},
    ]
    if depth <= 1:
        return {"anyOf": scalars}
    inner = _free_value_schema(depth - 1)
    return {
        "anyOf": [
            *scalars,
            {"type": "array", "maxItems": _FREE_MAX_ITEMS, "items": inner},
            {
                "type": "object",
                "maxProperties": _FREE_MAX_ITEMS,
                "propertyNames": {"pattern": _KEY_RE},
                "additionalProperties": inner,
            },
        ]
    }
