"""The v1 tick message contract: the JSON Schema file, the rules compiled from it, and the
reference validator that explains a rejected message.

`sample.schema.json` (draft 2020-12) is the contract third-party producers follow; every other
form of it is compiled from the file here: per-field rules (`rules`, read by the columnar fast
path and the lake's table types), the array and label limits, and the per-kind required slice
fields (the schema's allOf/if/then). The rules JSON Schema cannot say (SEMANTIC_RULES) are
checked once, on columns, in `gpuledger.semantics`. `gpuledger.typed` compiles the msgspec types.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import pyarrow as pa

SCHEMA_FILE = "sample.schema.json"

# Rules beyond JSON Schema, checked by ingest as well (their failures also go to the DLQ):
SEMANTIC_RULES = (
    "ts is a real calendar date and time",
    "gpus[].uuid are unique within a tick",
    "slices[].slice_id are unique within a tick",
    "slices[].gpu_uuid and processes[].gpu_uuid name a GPU of the same tick",
)
ITEM_LISTS = {"gpus": "gpu", "slices": "slice", "processes": "process"}  # list field -> object kind


@cache
def load_schema() -> dict[str, Any]:
    """The schema document, read once from the package."""
    return json.loads(resources.files("gpuledger").joinpath(SCHEMA_FILE).read_text("utf-8"))


SCHEMA_NAME: str = load_schema()["properties"]["schema"]["const"]  # "gpuledger.sample/v1"


@dataclass(frozen=True)
class Limits:
    """The schema's bounds a producer clamps or cuts to, read from the schema file (never copied).

    A producer cannot refuse what NVML or a cgroup hands it: an over-long id is cut, an absurd
    reading becomes null. These are the bounds it needs to do so and stay valid.
    """

    name_max: int  # cluster / node
    id_max: int  # slice_id, uuids, workload and process ids
    model_max: int
    labels_max: int  # labels per workload
    label_value_max: int
    interval_max_s: float
    pid_max: int
    power_max_w: float
    energy_max_j: float
    temp_min_c: float
    temp_max_c: float
    age_max_s: float
    clock_max_mhz: int
    ecc_max: int  # volatile ECC error counts
    repair_max: int  # retired pages, remapped rows


@cache
def limits() -> Limits:
    root = load_schema()
    d = root["$defs"]
    gpu, sl, wl = d["gpu"]["properties"], d["slice"]["properties"], d["workload"]["properties"]
    return Limits(
        name_max=d["name"]["maxLength"],
        id_max=d["id"]["maxLength"],
        model_max=gpu["model"]["maxLength"],
        labels_max=wl["labels"]["maxProperties"],
        label_value_max=wl["labels"]["additionalProperties"]["maxLength"],
        interval_max_s=float(root["properties"]["interval_s"]["maximum"]),
        pid_max=d["process"]["properties"]["pid"]["maximum"],
        power_max_w=float(gpu["power_w"]["maximum"]),
        energy_max_j=float(gpu["energy_j"]["maximum"]),
        temp_min_c=float(gpu["temp_c"]["minimum"]),
        temp_max_c=float(gpu["temp_c"]["maximum"]),
        age_max_s=float(sl["last_kernel_age_s"]["maximum"]),
        clock_max_mhz=d["mhz"]["maximum"],
        ecc_max=gpu["ecc_corrected"]["maximum"],
        repair_max=gpu["remapped_rows_correctable"]["maximum"],
    )


def format_ts(dt: datetime) -> str:
    """A UTC datetime in the schema's `ts` form: seconds, microseconds only when there are any."""
    dt = dt.astimezone(UTC)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{dt.microsecond:06d}Z" if dt.microsecond else base + "Z"


def resolve_ref(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref`s to local `$defs` (the only kind the schema uses)."""
    while "$ref" in node:
        node = root["$defs"][node["$ref"].split("/")[-1]]
    return node


def parse_ts(text: str) -> datetime:
    """Parse the schema's RFC 3339 UTC form; raises ValueError for impossible dates."""
    return datetime.fromisoformat(text)


# -- the rule compiler ---------------------------------------------------------------------------

_ARROW = {"integer": pa.int64(), "number": pa.float64(), "string": pa.string(), "boolean": pa.bool_()}


@dataclass(frozen=True)
class FieldRule:
    """One property of one object kind, as the schema constrains it."""

    name: str
    json_types: tuple[str, ...]
    required: bool
    arrow: pa.DataType | None  # the column type of a scalar field; None for objects and arrays
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    enum: tuple[Any, ...] | None = None


def _rule(name: str, node: dict[str, Any], required: bool, root: dict[str, Any]) -> FieldRule:
    node = resolve_ref(node, root)
    if "const" in node:
        types: tuple[str, ...] = ("string",)
        enum: tuple[Any, ...] | None = (node["const"],)
    elif "enum" in node:
        types, enum = ("string",), tuple(node["enum"])
    else:
        raw = node.get("type", "object")
        types, enum = ((raw,) if isinstance(raw, str) else tuple(raw)), None
    scalar = [t for t in types if t != "null"]
    return FieldRule(
        name=name,
        json_types=types,
        required=required,
        arrow=_ARROW.get(scalar[0]) if len(scalar) == 1 else None,
        enum=enum,
        minimum=node.get("minimum"),
        maximum=node.get("maximum"),
        exclusive_minimum=node.get("exclusiveMinimum"),
        min_length=node.get("minLength"),
        max_length=node.get("maxLength"),
        pattern=node.get("pattern"),
    )


@dataclass(frozen=True)
class ObjectRules:
    name: str
    fields: dict[str, FieldRule]


@cache
def rules() -> dict[str, ObjectRules]:
    """The schema's objects (message, gpu, slice, workload, process) as per-field rules."""
    root = load_schema()
    out = {}
    for name in ("message", "gpu", "slice", "workload", "process"):
        node = root if name == "message" else root["$defs"][name]
        req = set(node.get("required", ()))
        out[name] = ObjectRules(name, {k: _rule(k, v, k in req, root) for k, v in node["properties"].items()})
    return out


@cache
def array_limits() -> dict[str, int]:
    """maxItems of the message's gpus, slices and processes."""
    props = load_schema()["properties"]
    return {k: props[k]["maxItems"] for k in ITEM_LISTS}


@cache
def label_limits() -> tuple[int, int]:
    """(most labels per workload, longest label value)."""
    node = load_schema()["$defs"]["workload"]["properties"]["labels"]
    return node["maxProperties"], node["additionalProperties"]["maxLength"]


@cache
def kind_requires() -> dict[str, tuple[str, ...]]:
    """Slice kind -> the fields it requires non-null (the slice's allOf/if/then)."""
    out = {}
    for clause in load_schema()["$defs"]["slice"]["allOf"]:
        out[clause["if"]["properties"]["kind"]["const"]] = tuple(clause["then"]["required"])
    return out


# -- the reference validator: what a rejected message got wrong --------------------------------


@cache
def _validator(path: tuple[Any, ...] = (), shallow: bool = False) -> Any:
    """A JSON Schema validator for the schema node at `path` (keys into the schema document).

    `shallow`: only the object's or array's own rules (required and unknown fields, sizes),
    not its members' (a field's own value is then checked at the field's place).
    """
    import jsonschema

    root = load_schema()
    node: Any = root
    for key in path:
        node = node[key]
    if shallow:
        node = {k: v for k, v in node.items() if k not in ("items", "$schema", "$id")}
        if "properties" in node:
            node["properties"] = dict.fromkeys(node["properties"], True)
        if isinstance(node.get("additionalProperties"), dict):
            node["additionalProperties"] = True
    return jsonschema.Draft202012Validator(
        node if not path and not shallow else {**node, "$defs": root["$defs"]}
    )


def show(v: Any) -> str:
    """A value for a reason: its repr, cut to 80 characters."""
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def field_path(parts: Iterable[Any]) -> str:
    """`slices[3].workload.pod` from path parts; `(message)` for the message itself."""
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or "(message)"


def _reason(e: Any, prefix: tuple[Any, ...]) -> str:
    """`path: message` for one validation error; a missing field is named in the path."""
    message, path = e.message, (*prefix, *e.absolute_path)
    if e.validator == "required" and isinstance(e.instance, dict):
        missing = next((k for k in e.validator_value if k not in e.instance), None)
        if missing is not None:
            path = (*path, missing)
    if e.validator == "const":  # jsonschema says only what was expected
        message = f"{show(e.instance)} is not {e.validator_value!r}"
    full = repr(e.instance)
    if len(full) > 80 and message.startswith(full):  # "[...65 GPUs...] is too long"
        message = show(e.instance) + message[len(full) :]
    return f"{field_path(path)}: {message}"


def _most_relevant(errors: Iterable[Any]) -> Any:
    """jsonschema's best match, preferring the object's own rules over its per-kind (allOf) ones.

    Why: a slice without `kind` fails `required` and, as JSON Schema reads if/then, every kind's
    extra fields too; the missing kind is what the producer got wrong.
    """
    from jsonschema.exceptions import best_match, relevance

    return best_match(errors, key=lambda e: ("allOf" not in e.relative_schema_path, *relevance(e)))


def schema_error(doc: Any, at: tuple[Any, ...] = ()) -> str | None:
    """The reference validator's most relevant error of the subtree of `doc` at `at`, or None.

    `at` (instance path parts) lets a caller that knows where a message goes wrong (msgspec
    names the place) validate only that part against its own schema node: a 12 KB tick costs
    ~2 ms through the whole schema, a field ~20 us. Errors found in a part are errors of the
    whole message; None for a part says nothing about the rest.
    """
    root = load_schema()
    spath: list[Any] = []
    node, inst, used = _deref(root, spath, root), doc, 0
    for part in at:
        if isinstance(part, int):
            if "items" not in node or not isinstance(inst, list) or not 0 <= part < len(inst):
                break
            spath, node = [*spath, "items"], node["items"]
        else:
            if not isinstance(inst, dict) or part not in inst:
                break
            if part in node.get("properties", {}):
                spath, node = [*spath, "properties", part], node["properties"][part]
            elif isinstance(node.get("additionalProperties"), dict):
                spath, node = [*spath, "additionalProperties"], node["additionalProperties"]
            else:
                break
        node = _deref(node, spath, root)
        inst, used = inst[part], used + 1
    prefix = tuple(at[:used])
    err = None
    if isinstance(inst, dict | list):  # a whole tick through the schema costs ~2 ms; its own rules ~20 us
        err = _most_relevant(_validator(tuple(spath), shallow=True).iter_errors(inst))
    if err is None:
        err = _most_relevant(_validator(tuple(spath)).iter_errors(inst))
    return None if err is None else _reason(err, prefix)


def _deref(node: dict[str, Any], spath: list[Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref`s, keeping `spath` (in place) the node's place in the schema document."""
    while "$ref" in node:
        name = node["$ref"].split("/")[-1]
        spath[:] = ["$defs", name]
        node = root["$defs"][name]
    return node


def reference_errors(doc: Any) -> list[str]:
    """Every violation the reference JSON Schema validator and the semantic rules find.

    Slow (a full JSON Schema engine): for tests, tools and explaining a single message.
    """
    out = [_reason(e, ()) for e in _validator().iter_errors(doc)]
    if not out:
        out.extend(semantic_errors(doc))
    return out


def semantic_errors(doc: dict[str, Any]) -> list[str]:
    """Violations of SEMANTIC_RULES (and the per-kind fields) in a message that passed the schema.

    The same column checks ingest runs (`gpuledger.semantics`), on a batch of one message.
    """
    from gpuledger import semantics, typed

    bad, _ = semantics.check([typed.from_builtins(doc)])
    return list(bad.values())
