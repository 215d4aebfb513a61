"""The v1 message contract: every field rule accepted and rejected, fast path == reference validator."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from messages import G0, G1, mutated, paths, valid_message, whole_slice

from gpuledger.decode import decode_batch
from gpuledger.schema import load_schema, reference_errors

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "gpuledger" / "sample.schema.json"


def fast(doc: Any) -> tuple[bool, str]:
    raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    out = decode_batch([raw], batch=1, max_message_bytes=1 << 20)
    if out.rejects:
        return False, out.rejects[0].reason
    return True, ""


def test_schema_file_is_valid_draft_2020_12() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert load_schema() == schema


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *head, last = path.split(".")
        node: Any = doc
        for p in head:
            node = node[int(p)] if p.isdigit() else node[p]
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _del(path: str) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *head, last = path.split(".")
        node: Any = doc
        for p in head:
            node = node[int(p)] if p.isdigit() else node[p]
        del node[last]

    return mutate


ACCEPTED: list[tuple[str, Callable[[dict], None]]] = [
    ("as built", lambda d: None),
    (
        "nullable gpu values null",
        lambda d: d["gpus"][1].update(
            util_pct=None, power_w=None, energy_j=None, temp_c=None, mem_used_mib=None, mem_total_mib=None
        ),
    ),
    (
        "optional gpu values absent",
        lambda d: [d["gpus"][1].pop(k) for k in ("util_pct", "power_w", "temp_c")],
    ),
    ("integer written as 3.0", _set("slices.0.gi_id", 1.0)),
    ("fractional seconds in ts", _set("ts", "2026-11-27T10:00:10.123456Z")),
    ("leap day", _set("ts", "2028-02-29T00:00:00Z")),
    ("whole slice", lambda d: d["slices"].append(whole_slice(G1))),
    ("workload null", _set("slices.1.workload", None)),
    ("workload absent", _del("slices.1.workload")),
    ("labels null", _set("slices.1.workload.labels", None)),
    ("vgpu with core 0 (no core reservation)", _set("slices.1.core_cap_pct", 0)),
    ("empty arrays", lambda d: d.update(gpus=[], slices=[], processes=[])),
    ("lost gpu", lambda d: d["gpus"][1].update(state="lost", util_pct=None)),
    ("util at 100", _set("gpus.1.util_pct", 100)),
    ("interval fractional", _set("interval_s", 0.5)),
    ("mig profile with +me", _set("slices.0.mig_profile", "1g.10gb+me")),
]

REJECTED: list[tuple[str, Callable[[dict], None], str]] = [
    ("unknown schema name", _set("schema", "gpuledger.sample/v2"), "schema"),
    ("missing cluster", _del("cluster"), "cluster"),
    ("empty node", _set("node", ""), "node"),
    ("node with slash", _set("node", "a/b"), "node"),
    ("boot_id not a uuid", _set("boot_id", "not-a-uuid"), "boot_id"),
    ("seq negative", _set("seq", -1), "seq"),
    ("seq a string", _set("seq", "17"), "seq"),
    ("seq fractional", _set("seq", 1.5), "seq"),
    ("seq boolean", _set("seq", True), "seq"),
    ("seq beyond 2^53", _set("seq", 2**60), "seq"),
    ("ts without Z", _set("ts", "2026-11-27T10:00:10+01:00"), "ts"),
    ("ts not a date", _set("ts", "yesterday"), "ts"),
    ("ts impossible date", _set("ts", "2026-02-30T00:00:00Z"), "ts"),
    ("interval zero", _set("interval_s", 0), "interval_s"),
    ("interval absurd", _set("interval_s", 86400), "interval_s"),
    ("gpus not an array", _set("gpus", {}), "gpus"),
    ("unknown top-level field", _set("extra", 1), "extra"),
    ("gpu unknown field", _set("gpus.0.fan", 50), "fan"),
    ("gpu missing uuid", _del("gpus.0.uuid"), "uuid"),
    ("gpu index negative", _set("gpus.0.index", -1), "index"),
    ("gpu util above 100", _set("gpus.1.util_pct", 250), "util_pct"),
    ("gpu util negative", _set("gpus.1.util_pct", -1), "util_pct"),
    ("gpu util a string", _set("gpus.1.util_pct", "37"), "util_pct"),
    ("gpu power absurd", _set("gpus.1.power_w", 1e9), "power_w"),
    ("gpu energy negative", _set("gpus.1.energy_j", -5), "energy_j"),
    ("gpu temp absurd", _set("gpus.1.temp_c", 1000), "temp_c"),
    ("gpu mem fractional", _set("gpus.1.mem_used_mib", 1.5), "mem_used_mib"),
    ("gpu mig_mode null", _set("gpus.1.mig_mode", None), "mig_mode"),
    ("gpu state unknown word", _set("gpus.1.state", "melted"), "state"),
    ("gpu not an object", _set("gpus.0", 7), "gpus[0]"),
    ("duplicate gpu uuid", _set("gpus.1.uuid", G0), "uuid"),
    ("slice kind unknown", _set("slices.1.kind", "vgpux"), "kind"),
    ("slice missing kind", _del("slices.1.kind"), "kind"),
    ("slice unknown field", _set("slices.1.colour", "red"), "colour"),
    ("slice gpu not in tick", _set("slices.1.gpu_uuid", "GPU-nope"), "gpu_uuid"),
    ("duplicate slice id", _set("slices.2.slice_id", f"{G1}:hami:u2/main"), "slice_id"),
    ("vgpu without mem cap", _del("slices.1.mem_cap_mib"), "mem_cap_mib"),
    ("vgpu mem cap null", _set("slices.1.mem_cap_mib", None), "mem_cap_mib"),
    ("vgpu core above 100", _set("slices.1.core_cap_pct", 130), "core_cap_pct"),
    ("mig without profile", _del("slices.0.mig_profile"), "mig_profile"),
    ("mig profile malformed", _set("slices.0.mig_profile", "3g40gb"), "mig_profile"),
    ("mig compute slices 9", _set("slices.0.compute_slices", 9), "compute_slices"),
    ("mig gi_id null", _set("slices.0.gi_id", None), "gi_id"),
    ("timeslice without replicas", _del("slices.2.replicas"), "replicas"),
    ("timeslice replicas 0", _set("slices.2.replicas", 0), "replicas"),
    ("slice util above 100", _set("slices.1.util_pct", 101), "util_pct"),
    ("slice kernel age negative", _set("slices.1.last_kernel_age_s", -1), "last_kernel_age_s"),
    ("workload a string", _set("slices.1.workload", "ml"), "workload"),
    ("workload unknown field", _set("slices.1.workload.team", "x"), "team"),
    ("labels a list", _set("slices.1.workload.labels", ["team"]), "labels"),
    ("label value a number", _set("slices.1.workload.labels", {"team": 7}), "labels"),
    ("too many labels", _set("slices.1.workload.labels", {f"k{i}": "v" for i in range(65)}), "labels"),
    ("namespace empty", _set("slices.1.workload.namespace", ""), "namespace"),
    ("process pid zero", _set("processes.0.pid", 0), "pid"),
    ("process pid absurd", _set("processes.0.pid", 10**9), "pid"),
    ("process missing gpu", _del("processes.0.gpu_uuid"), "gpu_uuid"),
    ("process gpu not in tick", _set("processes.0.gpu_uuid", "GPU-nope"), "gpu_uuid"),
    ("process sm util above 100", _set("processes.0.sm_util_pct", 400), "sm_util_pct"),
    ("process unknown field", _set("processes.0.cmd", "python"), "cmd"),
    (
        "too many gpus",
        lambda d: d.update(
            gpus=[{**d["gpus"][1], "uuid": f"GPU-{i}", "index": i % 1000} for i in range(65)],
            slices=[],
            processes=[],
        ),
        "gpus",
    ),
]


@pytest.mark.parametrize("name,mutate", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted(name: str, mutate: Callable[[dict], None]) -> None:
    doc = valid_message()
    mutate(doc)
    assert reference_errors(doc) == []
    ok, reason = fast(doc)
    assert ok, reason


@pytest.mark.parametrize("name,mutate,field", REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected(name: str, mutate: Callable[[dict], None], field: str) -> None:
    doc = valid_message()
    mutate(doc)
    assert reference_errors(doc), "the reference validator must reject it too"
    ok, reason = fast(doc)
    assert not ok
    assert field in reason, reason


@pytest.mark.parametrize(
    "raw,fragment",
    [
        (b"", "invalid JSON"),
        (b"{", "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        (b"[1,2]", "JSON object"),
        (b"null", "JSON object"),
        (b'"tick"', "JSON object"),
        (b'{"schema": NaN}', "invalid JSON"),
    ],
)
def test_not_json_objects(raw: bytes, fragment: str) -> None:
    ok, reason = fast(raw)
    assert not ok and fragment in reason


def test_oversized_payload_rejected_before_parsing() -> None:
    doc = valid_message()
    doc["slices"][1]["workload"]["pod"] = "x" * 200
    raw = orjson.dumps(doc) + b" " * (2 << 20)
    ok, reason = fast(raw)
    assert not ok and reason.startswith("payload too large")


def test_one_bad_message_does_not_sink_the_batch() -> None:
    good = [orjson.dumps(valid_message(seq=i)) for i in range(5)]
    bad = valid_message(seq=99)
    bad["slices"][1]["util_pct"] = 250
    out = decode_batch([good[0], orjson.dumps(bad), *good[1:]], batch=7, max_message_bytes=1 << 20)
    assert out.accepted == [0, 2, 3, 4, 5]
    assert [r.index for r in out.rejects] == [1]
    assert out.tables["tick"].num_rows == 5
    assert out.tables["slice"].num_rows == 15
    assert sorted(out.tables["slice"]["seq"].to_pylist()) == sorted([0, 1, 2, 3, 4] * 3)
    assert out.tables["process"].num_rows == 10
    assert set(out.tables["gpu"]["batch"].to_pylist()) == {7}


def test_rows_carry_values_and_gpu_facts() -> None:
    out = decode_batch([orjson.dumps(valid_message())], batch=1, max_message_bytes=1 << 20)
    rows = {r["kind"]: r for r in out.tables["slice"].to_pylist()}
    assert rows["vgpu"]["gpu_mem_total_mib"] == 81559 and rows["vgpu"]["model"] == "NVIDIA H100 80GB HBM3"
    assert rows["mig"]["gpu_mem_total_mib"] == 81920 and rows["mig"]["compute_slices"] == 3
    assert rows["vgpu"]["labels"] == [("team", "nlp")]
    assert rows["timeslice"]["account"] == "physics" and rows["timeslice"]["replicas"] == 4
    tick = out.tables["tick"].to_pylist()[0]
    assert (tick["n_gpus"], tick["n_slices"], tick["n_processes"]) == (2, 3, 2)
    assert tick["ts"].isoformat() == "2026-11-27T10:00:10+00:00"


# -- differential: random single-field mutations, fast path agrees with the reference ----------


BASE = valid_message()
PATHS = paths(BASE)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**10),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(
        ["mig", "vgpu", "whole", "timeslice", "ok", "lost", "3g.40gb", G0, G1, "", "2026-11-27T10:00:00Z"]
    ),
    st.just([]),
    st.just({}),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), VALUES, st.booleans()), min_size=1, max_size=3))
def test_fast_path_agrees_with_reference(mutations: list[tuple[tuple, Any, bool]]) -> None:
    doc = mutated(BASE, mutations)
    ref = reference_errors(doc) if isinstance(doc, dict) else ["not an object"]
    ok, reason = fast(doc)
    assert ok == (not ref), f"fast={ok} {reason!r} reference={ref[:2]}"
