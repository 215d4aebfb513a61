"""The v1 tick message contract: the JSON Schema file and the rules it cannot express.

`sample.schema.json` (draft 2020-12) is the contract third-party producers follow. The
ingest path does not run a generic JSON Schema engine per message (about 2 ms for a
56-slice tick in pure Python); `gpuledger.decode` checks the same rules column by column.
`reference_errors` runs the real JSON Schema validator and is what tests compare the fast
path against.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

SCHEMA_FILE = "sample.schema.json"

# Rules beyond JSON Schema, checked by ingest as well (their failures also go to the DLQ):
SEMANTIC_RULES = (
    "ts is a real calendar date and time",
    "gpus[].uuid are unique within a tick",
    "slices[].slice_id are unique within a tick",
    "slices[].gpu_uuid and processes[].gpu_uuid name a GPU of the same tick",
)


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


@cache
def _reference_validator() -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(load_schema())


def reference_errors(doc: Any) -> list[str]:
    """Every violation the reference JSON Schema validator and the semantic rules find.

    Slow (a full JSON Schema engine): for tests, tools and explaining a single message.
    """
    out = [f"{_path(e.absolute_path)}: {e.message}" for e in _reference_validator().iter_errors(doc)]
    if not out:
        out.extend(semantic_errors(doc))
    return out


def _path(parts: Iterator[Any]) -> str:
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or "(message)"


def parse_ts(text: str) -> datetime:
    """Parse the schema's RFC 3339 UTC form; raises ValueError for impossible dates."""
    return datetime.fromisoformat(text)


def semantic_errors(doc: dict[str, Any]) -> list[str]:
    """Violations of SEMANTIC_RULES in a message that already passed the JSON Schema."""
    out = []
    try:
        parse_ts(doc["ts"])
    except ValueError:
        out.append(f"ts: {doc['ts']!r} is not a real date and time")
    uuids = [g["uuid"] for g in doc["gpus"]]
    if len(set(uuids)) != len(uuids):
        out.append("gpus: duplicate uuid")
    ids = [s["slice_id"] for s in doc["slices"]]
    if len(set(ids)) != len(ids):
        out.append("slices: duplicate slice_id")
    known = set(uuids)
    for name in ("slices", "processes"):
        for i, row in enumerate(doc[name]):
            if row["gpu_uuid"] not in known:
                out.append(f"{name}[{i}].gpu_uuid: {row['gpu_uuid']!r} is not a GPU of this tick")
    return out
