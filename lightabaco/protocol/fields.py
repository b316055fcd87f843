"""Request-field coercion with flask-restful's rules and Abaco's error texts (spec §1.4).

The HTTP layer merges the JSON body, the form body and the query string into one mapping (JSON wins);
this module turns that mapping into typed values, using each field's declared default when absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from lightabaco.protocol.errors import ValidationError
from lightabaco.protocol.serialize import under_to_camel

_MISSING = object()


@dataclass(frozen=True)
class FieldSpec:
    name: str  # snake name
    kind: str  # str | int | bool | dict | list | any | float
    default: Any = None
    help: str = ""
    required: bool = False
    nullable: bool = True

    def default_value(self) -> Any:
        d = self.default
        return d() if callable(d) else d


def boolean(value: Any) -> bool:
    """flask-restful inputs.boolean: JSON bools, 1/0, and true/false in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
    raise ValueError(f"Invalid literal for boolean(): {value}")


def _first(value: Any) -> Any:
    """A repeated form key arrives as a list; scalar fields take its first value, like flask-restful."""
    if isinstance(value, tuple):
        return value[0] if value else None
    return value


def _int(value: Any) -> int:
    v = _first(value)
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(v)
    return int(v)


def _dict(value: Any) -> dict:
    v = _first(value)
    if not isinstance(v, dict):
        raise ValueError(v)
    return dict(v)


_COERCE: dict[str, Callable[[Any], Any]] = {
    "str": lambda v: str(_first(v)),
    "int": _int,
    "float": lambda v: float(_first(v)),
    "bool": lambda v: boolean(_first(v)),
    "dict": _dict,
    "list": lambda v: list(v) if isinstance(v, (list, tuple)) else [v],
    "any": _first,
}


def lookup(raw: Mapping[str, Any], spec: FieldSpec, case: str) -> Any:
    """The raw value for a field under its snake or camel name (both are accepted in both modes)."""
    camel = under_to_camel(spec.name)
    first, second = (camel, spec.name) if case == "camel" else (spec.name, camel)
    if first in raw:
        return raw[first]
    if second in raw:
        return raw[second]
    return _MISSING


def present(raw: Mapping[str, Any], spec: FieldSpec, case: str) -> bool:
    return lookup(raw, spec, case) is not _MISSING


def parse(raw: Mapping[str, Any], specs: list[FieldSpec], case: str, prefix: str) -> dict[str, Any]:
    """Coerce every field; missing ones take their default. Errors name the field like Abaco does."""
    out: dict[str, Any] = {}
    for spec in specs:
        value = lookup(raw, spec, case)
        shown = under_to_camel(spec.name) if case == "camel" else spec.name
        if value is _MISSING or (value is None and spec.nullable and not spec.required):
            if spec.required:
                raise ValidationError(f"{prefix}: {{{shown!r}: {spec.help!r}}}")
            out[spec.name] = spec.default_value()
            continue
        try:
            out[spec.name] = _COERCE[spec.kind](value)
        except (ValueError, TypeError):
            raise ValidationError(f"{prefix}: {{{shown!r}: {spec.help!r}}}") from None
    return out


def field(fields: Mapping[str, Any], snake: str, camel: str | None = None) -> Any:
    """A request field by snake or camel name; a repeated form key counts as its first value."""
    for name in (snake, camel):
        if name and name in fields:
            value = fields[name]
            if isinstance(value, (list, tuple)) and not isinstance(value, str):
                value = value[0] if value else None
            return value
    return None
