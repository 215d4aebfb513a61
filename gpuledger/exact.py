"""The exact checker: every schema rule, column by column, with a reason per rejected message.

Ingest runs it only on messages the typed fast path (`gpuledger.typed`) refused, to decide
exactly as JSON Schema would (the fast path is stricter in one corner) and to say why. A
generic JSON Schema engine costs ~2 ms per 56-slice tick; here each field of a whole batch
is gathered in one comprehension, its Python types checked with one `set(map(type, ...))`,
and ranges, lengths, patterns and enums run as Arrow compute kernels. The rules are compiled
from `sample.schema.json` itself, so the file stays the one contract.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from gpuledger.schema import load_schema, parse_ts, resolve_ref


class _Missing:
    """Sentinel type for an absent key (distinct from an explicit JSON null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()
_NONE = type(None)
_JSON_TYPES = {
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
    "null": (_NONE,),
    "object": (dict,),
    "array": (list,),
}
_ARROW = {"integer": pa.int64(), "number": pa.float64(), "string": pa.string(), "boolean": pa.bool_()}
_TYPE_WORDS = {
    int: "integer",
    float: "number",
    str: "string",
    bool: "boolean",
    _NONE: "null",
    dict: "object",
    list: "array",
    _Missing: "missing",
}


@dataclass(frozen=True)
class FieldRule:
    """One property of one object kind, as the schema constrains it."""

    name: str
    json_types: tuple[str, ...]
    required: bool
    arrow: pa.DataType | None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    enum: tuple[Any, ...] | None = None

    @property
    def py_types(self) -> frozenset[type]:
        out: set[type] = set()
        for t in self.json_types:
            out.update(_JSON_TYPES[t])
        if "integer" in self.json_types:
            out.add(float)  # JSON Schema: 3.0 is an integer; fractional values are rejected later
        return frozenset(out)

    @property
    def expected(self) -> str:
        return " or ".join(self.json_types)


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
    arrow = _ARROW.get(scalar[0]) if len(scalar) == 1 else None
    return FieldRule(
        name=name,
        json_types=types,
        required=required,
        arrow=arrow,
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
    allowed: frozenset[str]


@cache
def rules() -> dict[str, ObjectRules]:
    """Compile the schema's object definitions into per-field rules (once per process)."""
    root = load_schema()
    out = {}
    for name, node in (
        ("message", root),
        ("gpu", root["$defs"]["gpu"]),
        ("slice", root["$defs"]["slice"]),
        ("workload", root["$defs"]["workload"]),
        ("process", root["$defs"]["process"]),
    ):
        req = set(node.get("required", ()))
        fields = {k: _rule(k, v, k in req, root) for k, v in node["properties"].items()}
        out[name] = ObjectRules(name, fields, frozenset(node["properties"]))
    return out


@cache
def _array_limits() -> dict[str, int]:
    props = load_schema()["properties"]
    return {k: props[k]["maxItems"] for k in ("gpus", "slices", "processes")}


@cache
def _labels_limits() -> tuple[int, int]:
    node = load_schema()["$defs"]["workload"]["properties"]["labels"]
    return node["maxProperties"], node["additionalProperties"]["maxLength"]


# Per-kind required slice fields (the schema's allOf/if/then), non-null when required.
KIND_REQUIRES = {
    "mig": (
        "mig_profile",
        "gi_id",
        "ci_id",
        "compute_slices",
        "memory_slices",
        "gpu_compute_slices",
        "gpu_memory_slices",
    ),
    "vgpu": ("mem_cap_mib", "core_cap_pct"),
    "timeslice": ("replicas",),
}


class _Where:
    """Builds a row's field path ("slices[3].") only when an error needs it."""

    __slots__ = ("pos", "prefix")

    def __init__(self, prefix: str = "", pos: list[int] | None = None) -> None:
        self.prefix, self.pos = prefix, pos

    def __call__(self, j: int) -> str:
        return f"{self.prefix}[{self.pos[j]}]." if self.pos is not None else self.prefix


class _WorkloadWhere(_Where):
    def __init__(self, inner: _Where) -> None:
        super().__init__(inner.prefix, inner.pos)

    def __call__(self, j: int) -> str:
        return super().__call__(j) + "workload."


class _Checker:
    """Collects the first problem found per message while columns are checked."""

    def __init__(self, n: int) -> None:
        self.reasons: dict[int, str] = {}
        self.n = n

    def bad(self, msg: int, reason: str) -> None:
        self.reasons.setdefault(msg, reason)

    def column(self, objs: list[Any], owner: list[int], where: _Where, rule: FieldRule) -> pa.Array | None:
        """Gather one field over all objects, check it, and return it as Arrow (bad rows null)."""
        name = rule.name
        col = [o.get(name) for o in objs]  # absent and null look alike here; told apart below
        types = set(map(type, col))
        allowed = rule.py_types
        bad_rows: set[int] = set()
        if _NONE in types and (rule.required or _NONE not in allowed):
            for j, v in enumerate(col):
                if v is None:
                    present = name in objs[j]
                    if not present and rule.required:
                        bad_rows.add(j)
                        self.bad(owner[j], f"{where(j)}{name}: required field is missing")
                    elif present and _NONE not in allowed:
                        bad_rows.add(j)
                        self.bad(owner[j], f"{where(j)}{name}: expected {rule.expected}, got null")
            types.discard(_NONE)
        if not types <= allowed:
            for j, v in enumerate(col):
                t = type(v)
                if t not in allowed and v is not None:
                    bad_rows.add(j)
                    self.bad(
                        owner[j],
                        f"{where(j)}{name}: expected {rule.expected}, got "
                        f"{_TYPE_WORDS.get(t, t.__name__)} {_show(v)}",
                    )
        if rule.arrow is None:  # nested value: the caller checks it
            return None
        if float in types and rule.arrow == pa.int64():
            col = list(col)
            for j, v in enumerate(col):
                if type(v) is float:
                    if math.isfinite(v) and v.is_integer():
                        col[j] = int(v)  # JSON Schema counts 3.0 as an integer
                        types.add(int)
                    else:
                        bad_rows.add(j)
                        self.bad(owner[j], f"{where(j)}{name}: expected integer, got {_show(v)}")
        if rule.arrow == pa.int64() and int in types:
            # Ints beyond int64 fail the schema maximum anyway; null them so Arrow can convert.
            for j, v in enumerate(col):
                if type(v) is int and not -(2**63) <= v < 2**63:
                    bad_rows.add(j)
                    self.bad(owner[j], f"{where(j)}{name}: {_show(v)} is above the maximum {rule.maximum}")
        if bad_rows:
            col = [None if j in bad_rows else v for j, v in enumerate(col)]
        arr = pa.array(col, type=rule.arrow)
        self._constraints(arr, owner, where, rule)
        return arr

    def _constraints(self, arr: pa.Array, owner: list[int], where: _Where, rule: FieldRule) -> None:
        checks: list[tuple[pa.Array, str]] = []
        if rule.minimum is not None:
            checks.append((pc.less(arr, rule.minimum), f"is below the minimum {rule.minimum}"))
        if rule.exclusive_minimum is not None:
            checks.append(
                (pc.less_equal(arr, rule.exclusive_minimum), f"must be above {rule.exclusive_minimum}")
            )
        if rule.maximum is not None:
            checks.append((pc.greater(arr, rule.maximum), f"is above the maximum {rule.maximum}"))
        if rule.min_length is not None or rule.max_length is not None:
            lengths = pc.utf8_length(arr)
            if rule.min_length is not None:
                checks.append((pc.less(lengths, rule.min_length), f"is shorter than {rule.min_length}"))
            if rule.max_length is not None:
                checks.append(
                    (pc.greater(lengths, rule.max_length), f"is longer than {rule.max_length} characters")
                )
        if rule.pattern is not None:
            checks.append(
                (pc.invert(pc.match_substring_regex(arr, rule.pattern)), f"does not match {rule.pattern}")
            )
        if rule.enum is not None:
            checks.append(
                (
                    pc.invert(pc.is_in(arr, pa.array(rule.enum))),
                    "is not one of " + ", ".join(map(str, rule.enum)),
                )
            )
        for mask, text in checks:
            if not pc.any(mask).as_py():
                continue
            for j in pc.indices_nonzero(mask.fill_null(False)).to_pylist():
                self.bad(owner[j], f"{where(j)}{rule.name}: {_show(arr[j].as_py())} {text}")


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_keys(
    ck: _Checker,
    objs: list[Any],
    owner: list[int],
    where: _Where,
    rules_: ObjectRules,
    what: str,
    nullable: bool = False,
) -> list[dict[str, Any]]:
    """Objects must be JSON objects with only known keys; returns a list safe to .get() on."""
    allowed = rules_.allowed
    clean = objs
    for j, o in enumerate(objs):
        if type(o) is dict:
            if not o.keys() <= allowed:
                extra = sorted(set(o) - allowed)
                ck.bad(owner[j], f"{where(j).rstrip('.')}: unknown field {extra[0]!r}")
        elif not (nullable and (o is None or o is MISSING)):
            ck.bad(
                owner[j],
                f"{where(j).rstrip('.') or '(message)'}: expected {what}, "
                f"got {_TYPE_WORDS.get(type(o), '?')}",
            )
            if clean is objs:
                clean = list(objs)
            clean[j] = {}
        else:
            if clean is objs:
                clean = list(objs)
            clean[j] = {}
    return clean


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


@cache
def _native_duplicate_key() -> Any | None:
    if os.environ.get("GPULEDGER_NATIVE_DECODE", "1") == "0":
        return None
    try:
        from gpuledger._native import duplicate_key
    except ImportError:
        return None
    return duplicate_key


def first_duplicate_key(raw: bytes | memoryview) -> str | None:
    """The first key that some object of `raw` has twice, or None (also for text that is not JSON).

    Why: JSON parsers disagree on which of two values for one key wins (`{"seq":-1,"seq":7}` is
    seq 7 to orjson and msgspec, -1 to others), so such a message means different things to
    different consumers of the topic; ingest rejects it. The native walker (gpuledger/native)
    costs ~24 us per 12 KB tick (about the typed decode's own cost); Python's json with a pairs
    hook (~80 us) is the fallback where it is not built or cannot read the bytes.
    """
    native = _native_duplicate_key()
    data = raw if isinstance(raw, bytes) else bytes(raw)
    if native is not None:
        walked, key = native(data)
        if walked:
            return key
    try:
        json.loads(data, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as dup:
        return dup.key
    except (ValueError, RecursionError):
        return None  # not JSON: the parsers reject it with their own reason
    return None


def exact_check(raws: Sequence[bytes], max_message_bytes: int) -> tuple[dict[int, str], dict[int, Any]]:
    """Check messages field by field against the schema; (reasons of the rejected, docs of the accepted).

    Slower than the typed fast path, but it decides exactly as JSON Schema does and names the
    first problem of each message with its path and value.
    """
    n = len(raws)
    ck = _Checker(n)
    docs: list[Any] = [None] * n
    for i, raw in enumerate(raws):
        if len(raw) > max_message_bytes:
            ck.bad(i, f"payload too large: {len(raw)} bytes > max_message_bytes {max_message_bytes}")
            continue
        try:
            docs[i] = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            ck.bad(i, f"invalid JSON: {exc}")
            continue
        dup = first_duplicate_key(raw)
        if dup is not None:
            ck.bad(
                i, f"invalid JSON: duplicate key {dup!r} in an object (parsers disagree on which value wins)"
            )
    r = rules()
    live = [i for i in range(n) if i not in ck.reasons]
    msgs = [docs[i] for i in live]
    top_where = _Where()
    msgs = _check_keys(ck, msgs, live, top_where, r["message"], "a JSON object")
    for rule in r["message"].fields.values():
        ck.column(msgs, live, top_where, rule)
    limits = _array_limits()
    for name in ("gpus", "slices", "processes"):
        for j, m in enumerate(msgs):
            v = m.get(name)
            if type(v) is list and len(v) > limits[name]:
                ck.bad(live[j], f"{name}: {len(v)} items is more than the maximum {limits[name]}")

    # Semantic checks per message (cheap: sets of ids) and the timestamp.
    for j, m in enumerate(msgs):
        i = live[j]
        if i in ck.reasons:
            continue
        try:
            parse_ts(m["ts"])
        except ValueError:
            ck.bad(i, f"ts: {m['ts']!r} is not a real date and time")
    rows: dict[str, tuple[list[Any], list[int], _Where]] = {}
    for name, key in (("gpus", "gpu"), ("slices", "slice"), ("processes", "process")):
        objs, owner, pos = [], [], []
        for j, m in enumerate(msgs):
            i = live[j]
            if i in ck.reasons:
                continue
            items = m[name]
            objs.extend(items)
            owner.extend([i] * len(items))
            pos.extend(range(len(items)))
        rows[key] = (objs, owner, _Where(name, pos))

    cols: dict[str, dict[str, pa.Array]] = {}
    for key in ("gpu", "slice", "process"):
        objs, owner, where = rows[key]
        objs = _check_keys(ck, objs, owner, where, r[key], "a JSON object")
        rows[key] = (objs, owner, where)
        cols[key] = {f: ck.column(objs, owner, where, rule) for f, rule in r[key].fields.items()}

    # Workload: a nested, nullable object on each slice; labels a string->string map.
    s_objs, s_owner, s_where = rows["slice"]
    wls = [o.get("workload", MISSING) for o in s_objs]
    w_where = _WorkloadWhere(s_where)
    wls = _check_keys(ck, wls, s_owner, w_where, r["workload"], "an object or null", nullable=True)
    for rule in r["workload"].fields.values():
        ck.column(wls, s_owner, w_where, rule)
    _labels(ck, wls, s_owner, w_where)

    _kind_requirements(ck, cols["slice"], s_owner, s_where)
    _cross_refs(ck, rows, cols)

    accepted = {i: docs[i] for i in range(n) if i not in ck.reasons}
    return ck.reasons, accepted


def _labels(ck: _Checker, wls: list[dict[str, Any]], owner: list[int], where: _Where) -> None:
    max_props, max_len = _labels_limits()
    col = [w.get("labels") for w in wls]
    for j, lab in enumerate(col):
        if lab is None:
            continue
        if type(lab) is not dict:
            got = _TYPE_WORDS.get(type(lab), "?")
            ck.bad(owner[j], f"{where(j)}labels: expected object or null, got {got}")
            col[j] = None
            continue
        if len(lab) > max_props:
            ck.bad(owner[j], f"{where(j)}labels: {len(lab)} labels is more than the maximum {max_props}")
            col[j] = None
            continue
        for k, v in lab.items():
            if type(v) is not str or len(v) > max_len:
                ck.bad(
                    owner[j],
                    f"{where(j)}labels.{k}: expected a string of at most {max_len} characters, "
                    f"got {_show(v)}",
                )
                break


def _kind_requirements(ck: _Checker, cols: dict[str, pa.Array], owner: list[int], where: _Where) -> None:
    kind = cols["kind"]
    for k, needed in KIND_REQUIRES.items():
        is_k = pc.equal(kind, k)
        if not pc.any(is_k).as_py():
            continue
        for f in needed:
            mask = pc.and_(is_k, pc.is_null(cols[f]))
            if pc.any(mask).as_py():
                for j in pc.indices_nonzero(mask.fill_null(False)).to_pylist():
                    ck.bad(owner[j], f"{where(j)}{f}: required (non-null) for kind {k}")


def _cross_refs(
    ck: _Checker, rows: dict[str, tuple[list[Any], list[int], _Where]], cols: dict[str, dict[str, pa.Array]]
) -> None:
    gpu_ids: dict[int, set[str]] = {}
    where = rows["gpu"][2]
    for j, (u, i) in enumerate(zip(cols["gpu"]["uuid"].to_pylist(), rows["gpu"][1], strict=True)):
        ids = gpu_ids.setdefault(i, set())
        if u in ids:
            ck.bad(i, f"{where(j)}uuid: duplicate GPU uuid {u!r}")
        ids.add(u)
    seen: dict[int, set[str]] = {}
    s_owner, s_where = rows["slice"][1], rows["slice"][2]
    for j, (sid, i) in enumerate(zip(cols["slice"]["slice_id"].to_pylist(), s_owner, strict=True)):
        ids = seen.setdefault(i, set())
        if sid in ids:
            ck.bad(i, f"{s_where(j)}slice_id: duplicate slice_id {sid!r}")
        ids.add(sid)
    for key in ("slice", "process"):
        where = rows[key][2]
        for j, (u, i) in enumerate(zip(cols[key]["gpu_uuid"].to_pylist(), rows[key][1], strict=True)):
            if u is not None and u not in gpu_ids.get(i, ()):
                ck.bad(i, f"{where(j)}gpu_uuid: {u!r} is not a GPU of this tick")
