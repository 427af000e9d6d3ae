"""Turn msgspec's decoding errors into messages that name the field, the allowed values
and the value given.

msgspec says ``Expected `int` <= 20 - at `$.scheduler_cluster_config.candidate_parent_limit```;
the operator should read ``scheduler_cluster_config.candidate_parent_limit must be an
integer in 1..20, got 50``. The constraint comes from the type (``msgspec.inspect``),
the value from the body itself, so there is one source for both: schemas.py.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import msgspec.inspect as mi

_AT = re.compile(r" - at `\$([^`]*)`$")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")
_MISSING = re.compile(r"Object missing required field `([^`]*)`")
_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_MISSING_VALUE = object()
#: The types of "no value" in a union: None, and UNSET where msgspec.inspect has it.
_ABSENT = tuple(t for t in (getattr(mi, "UnsetType", None), mi.NoneType) if t is not None)


def _segments(path: str) -> list[str | int]:
    return [name if name else int(index) for name, index in _SEGMENT.findall(path)]


def _resolve(info: mi.Type, segments: list[str | int]) -> mi.Type | None:
    """The type at ``segments`` below ``info``, or None when it cannot be followed."""
    for segment in segments:
        info = _unwrap(info)
        if isinstance(segment, str) and isinstance(info, mi.StructType):
            fields = {f.encode_name: f.type for f in info.fields}
            if segment not in fields:
                return None
            info = fields[segment]
        elif isinstance(segment, int) and isinstance(info, mi.ListType | mi.SetType):
            info = info.item_type
        else:
            return None
    return _unwrap(info)


def _unwrap(info: mi.Type) -> mi.Type:
    """A field that may be unset or null is its real type, for describing it."""
    if isinstance(info, mi.UnionType):
        real = [t for t in info.types if not isinstance(t, _ABSENT)]
        if len(real) == 1:
            return real[0]
    return info


def _value_at(raw: bytes, segments: list[str | int]) -> Any:
    try:
        value: Any = msgspec.json.decode(raw)
        for segment in segments:
            value = value[segment]
        return value
    except (msgspec.DecodeError, KeyError, IndexError, TypeError):
        return _MISSING_VALUE


def describe(info: mi.Type | None) -> str | None:
    """What a type allows, in words: 'an integer in 1..20', 'one of "job", "cluster"'."""
    if isinstance(info, mi.IntType | mi.FloatType):
        kind = "an integer" if isinstance(info, mi.IntType) else "a number"
        low = info.ge if info.ge is not None else info.gt
        high = info.le if info.le is not None else info.lt
        if low is not None and high is not None:
            return f"{kind} in {low}..{high}"
        if low is not None:
            return f"{kind} >= {low}"
        if high is not None:
            return f"{kind} <= {high}"
        return kind
    if isinstance(info, mi.StrType):
        parts = []
        if info.min_length is not None and info.max_length is not None:
            parts.append(f"{info.min_length}..{info.max_length} characters")
        elif info.max_length is not None:
            parts.append(f"at most {info.max_length} characters")
        if info.pattern is not None:
            parts.append(f"matching {info.pattern}")
        return "a string" + (" of " + ", ".join(parts) if parts else "")
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(msgspec.json.encode(v).decode() for v in info.values)
    if isinstance(info, mi.BoolType):
        return "true or false"
    if isinstance(info, mi.ListType):
        inner = describe(_unwrap(info.item_type))
        size = f" of at least {info.min_length}" if info.min_length else ""
        return f"a list{size}" + (f" of {inner}" if inner else "")
    if isinstance(info, mi.StructType):
        return "an object with " + ", ".join(f.encode_name for f in info.fields)
    return None


def explain(exc: msgspec.ValidationError, kind: type, raw: bytes) -> tuple[str, str | None]:
    """(message, field path) for a body of type ``kind`` that failed validation."""
    text = str(exc)
    match = _AT.search(text)
    path = match.group(1) if match else ""
    head = text[: match.start()] if match else text
    root = mi.type_info(kind)
    unknown = _UNKNOWN.search(head)
    if unknown:
        name = unknown.group(1)
        field = f"{path}.{name}".lstrip(".")
        owner = _resolve(root, _segments(path))
        allowed = (
            ", ".join(f.encode_name for f in owner.fields)
            if isinstance(owner, mi.StructType)
            else "none"
        )
        return f"unknown field `{field}`; the fields here are: {allowed}", field
    missing = _MISSING.search(head)
    if missing:
        field = f"{path}.{missing.group(1)}".lstrip(".")
        wanted = describe(_resolve(root, _segments(field and "." + field)))
        return f"`{field}` is required" + (f": {wanted}" if wanted else ""), field
    field = path.lstrip(".")
    segments = _segments(path)
    wanted = describe(_resolve(root, segments))
    value = _value_at(raw, segments)
    got = "" if value is _MISSING_VALUE else f", got {msgspec.json.encode(value).decode()}"
    if wanted is None:
        return f"`{field or '(body)'}`: {head}", field or None
    return f"`{field or '(body)'}` must be {wanted}{got}", field or None
