"""msgspec types compiled from `sample.schema.json`: validating JSON decode in C, and the producers' types.

The same Structs are what the collectors build ticks from (`tick_types()`, through
`collector.tick`) and `encode` writes, so the message has one definition, the schema file.

msgspec checks types, ranges, lengths, patterns, enums and unknown fields while it parses,
and builds slotted objects instead of dicts, so the common case (a valid tick) costs about
as much as parsing alone. It is stricter than JSON Schema in one place (an integer written
as 3.0 is refused), so anything it refuses goes to the reference validator
(`gpuledger.schema.schema_error`, through `gpuledger.decode`), which decides and explains.
Everything it accepts the schema accepts too (tested).
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args

import msgspec
from msgspec import UNSET, Meta, UnsetType

from gpuledger.schema import load_schema, resolve_ref

_SCALARS: dict[str, type] = {"integer": int, "number": float, "string": str, "boolean": bool}


def _meta(node: dict[str, Any], scalar: str) -> Meta | None:
    kw: dict[str, Any] = {}
    if scalar in ("integer", "number"):
        for src, dst in (
            ("minimum", "ge"),
            ("maximum", "le"),
            ("exclusiveMinimum", "gt"),
            ("exclusiveMaximum", "lt"),
        ):
            if src in node:
                kw[dst] = node[src]
    elif scalar == "string":
        for src, dst in (("minLength", "min_length"), ("maxLength", "max_length"), ("pattern", "pattern")):
            if src in node:
                kw[dst] = node[src]
    return Meta(**kw) if kw else None


def _type(node: dict[str, Any], root: dict[str, Any], structs: dict[str, type]) -> tuple[Any, bool]:
    """(python type, nullable) for one schema node."""
    ref = node.get("$ref", "")
    node = resolve_ref(node, root)
    if "const" in node:
        return Literal[node["const"]], False
    if "enum" in node:
        return Literal[tuple(node["enum"])], False
    raw = node.get("type", "object")
    types = [raw] if isinstance(raw, str) else list(raw)
    nullable = "null" in types
    types = [t for t in types if t != "null"]
    (kind,) = types
    if kind == "object":
        if "additionalProperties" in node and isinstance(node["additionalProperties"], dict):
            value, _ = _type(node["additionalProperties"], root, structs)
            tp: Any = dict[str, value]
            if "maxProperties" in node:
                tp = Annotated[tp, Meta(max_length=node["maxProperties"])]
            return tp, nullable
        return structs[ref.split("/")[-1]], nullable
    if kind == "array":
        item, _ = _type(node["items"], root, structs)
        tp = list[item]
        if "maxItems" in node:
            tp = Annotated[tp, Meta(max_length=node["maxItems"])]
        return tp, nullable
    tp = _SCALARS[kind]
    meta = _meta(node, kind)
    return (Annotated[tp, meta] if meta else tp), nullable


def _struct(name: str, node: dict[str, Any], root: dict[str, Any], structs: dict[str, type]) -> type:
    required = set(node.get("required", ()))
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for key, prop in node["properties"].items():
        tp, nullable = _type(prop, root, structs)
        if key in required:
            fields.append((key, tp | None if nullable else tp))
        elif nullable:
            fields.append((key, tp | None, None))
        else:
            fields.append((key, Union[tp, UnsetType], UNSET))  # noqa: UP007 - absent ok, null not
    # Required fields first (msgspec wants defaults last), keeping schema order otherwise.
    fields.sort(key=lambda f: len(f) == 3)
    # omit_defaults: an optional field left null is not written (absent and null mean the same).
    return msgspec.defstruct(name, fields, forbid_unknown_fields=True, gc=False, omit_defaults=True)


@cache
def message_type() -> type:
    root = load_schema()
    structs: dict[str, type] = {}
    for name in ("workload", "gpu", "process", "slice"):
        structs[name] = _struct(name.capitalize(), root["$defs"][name], root, structs)
    return _struct("Tick", root, root, structs)


class TickTypes(NamedTuple):
    """The message's Struct types, for producers to build ticks with (keyword arguments)."""

    Tick: type
    Gpu: type
    Slice: type
    Process: type
    Workload: type


@cache
def tick_types() -> TickTypes:
    tick = message_type()
    hints = {f.name: f.type for f in msgspec.structs.fields(tick)}
    gpu, sl, proc = (_item(hints[k]) for k in ("gpus", "slices", "processes"))
    wl = _unwrap({f.name: f.type for f in msgspec.structs.fields(sl)}["workload"])
    return TickTypes(tick, gpu, sl, proc, wl)


def _unwrap(tp: Any) -> type:
    """The Struct inside `Annotated[...]` / `X | None`."""
    while True:
        args = get_args(tp)
        if not args:
            return tp
        tp = next(a for a in args if a is not type(None) and not isinstance(a, Meta))


def _item(tp: Any) -> type:
    """The item Struct of an `Annotated[list[X], Meta]` field."""
    return _unwrap(get_args(get_args(tp)[0])[0])


@cache
def encoder() -> msgspec.json.Encoder:
    return msgspec.json.Encoder()


def encode(tick: Any) -> bytes:
    """A typed tick -> the compact UTF-8 JSON message (nulls of optional fields left out)."""
    return encoder().encode(tick)


@cache
def decoder() -> msgspec.json.Decoder:
    return msgspec.json.Decoder(message_type())


def from_builtins(doc: dict[str, Any]) -> Any:
    """A dict the reference validator accepted -> the typed object (3.0 becomes 3 for integer fields)."""
    return msgspec.convert(doc, message_type(), strict=False)


__all__ = ["UNSET", "TickTypes", "decoder", "encode", "from_builtins", "message_type", "tick_types"]
