"""The whole-batch decode path gives exactly `decode_batch`'s answer, or hands the batch to it.

Every case compares `decode_batch_fast` with `decode_batch` on the same batch: the four tables
(schema, values, row order), the accepted indexes, the rejects with their reasons and the
duplicate count. Cases also say whether the batch must take the whole-batch path (`fast_decode`
returns a result) or must be handed back (it returns None), so a path that silently always
falls back fails here too.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from messages import G0, G1, mutated, paths, valid_message
from test_schema import ACCEPTED, REJECTED

from collector.fleet import SimulatedFleet
from gpuledger.batch_decode import decode_batch_fast, fast_decode
from gpuledger.decode import DecodedBatch, decode_batch
from warehouse.lake import Lake

MAX = 1 << 20


@pytest.fixture(autouse=True)
def reader() -> None:
    """Every case runs the whole-batch path with its one column reader, the native one (gpuledger/native)."""
    import gpuledger.batch_decode as bd

    assert bd.native_reader() is not None, "the native reader is not built (pip install -e .)"


@cache
def fleet(ticks: int = 8, seed: int = 7) -> tuple[bytes, ...]:
    """Real simulated-fleet messages (25 nodes per tick), as the collector sends them."""
    f = SimulatedFleet(seed=seed)
    return tuple(orjson.dumps(m) for _ in range(ticks) for m in f.next_tick())


def same(ref: DecodedBatch, got: DecodedBatch) -> None:
    assert got.accepted == ref.accepted
    assert [(r.index, r.reason) for r in got.rejects] == [(r.index, r.reason) for r in ref.rejects]
    assert got.duplicates == ref.duplicates
    assert set(got.tables) == set(ref.tables) == {"tick", "gpu", "slice", "process"}
    for name, table in ref.tables.items():
        assert got.tables[name].schema == table.schema, name
        assert got.tables[name].num_rows == table.num_rows, name
        assert got.tables[name].equals(table), name


def check(raws: list[Any], clean: bool | None) -> DecodedBatch:
    """Compare both paths on one batch; `clean` says whether the whole-batch path must decide it."""
    parts = [i % 4 for i in range(len(raws))]
    offs = [1000 + i for i in range(len(raws))]
    kw = {"batch": 9, "max_message_bytes": MAX, "partitions": parts, "offsets": offs}
    fast = fast_decode(raws, **kw)
    try:
        ref = decode_batch(raws, **kw)
    except Exception as exc:  # the same failure, since such a batch is handed to decode_batch
        assert fast is None
        with pytest.raises(type(exc)):
            decode_batch_fast(raws, **kw)
        raise
    same(ref, decode_batch_fast(raws, **kw))
    if clean is not None:
        assert (fast is not None) == clean, "whole-batch path taken" if fast else "fell back"
    if fast is not None:
        same(ref, fast)
    return ref


def mixed(raw: bytes) -> list[bytes]:
    """One message among real fleet ticks, so a fallback would also have to get their rows right."""
    ticks = fleet()
    return [*ticks[:20], raw, *ticks[20:40]]


# -- clean batches take the whole-batch path -------------------------------------------------


def test_fleet_batch_is_decoded_whole_and_identically() -> None:
    raws = list(fleet())
    out = check(raws, clean=True)
    assert out.ticks == len(raws) == 200
    labels = out.tables["slice"]["labels"].to_pylist()
    assert any(lab is not None and len(lab) >= 2 for lab in labels), "key order must be exercised"
    assert any(lab is None for lab in labels)


def test_lake_files_are_byte_identical(tmp_path: Path) -> None:
    raws = list(fleet())
    ref = decode_batch(raws, batch=4, max_message_bytes=MAX)
    fast = fast_decode(raws, batch=4, max_message_bytes=MAX)
    assert fast is not None
    a = Lake(tmp_path / "a").write_batch(ref, 4)
    b = Lake(tmp_path / "b").write_batch(fast, 4)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert len(a) == 4
    for pa_, pb in zip(a, b, strict=True):
        assert pa_.read_bytes() == pb.read_bytes(), pa_.name


def test_other_seed_and_memoryviews() -> None:
    raws = list(fleet(ticks=4, seed=11))
    blob = b"".join(raws)
    views, pos = [], 0
    for r in raws:  # what the decoder worker passes: views into one received blob
        views.append(memoryview(blob)[pos : pos + len(r)])
        pos += len(r)
    ref = decode_batch(raws, batch=3, max_message_bytes=MAX)
    fast = fast_decode(views, batch=3, max_message_bytes=MAX)
    assert fast is not None
    same(ref, fast)


def test_without_partitions_and_offsets() -> None:
    raws = list(fleet())[:30]
    ref = decode_batch(raws, batch=1, max_message_bytes=MAX)
    fast = fast_decode(raws, batch=1, max_message_bytes=MAX)
    assert fast is not None
    same(ref, fast)
    assert fast.tables["tick"]["src_partition"].null_count == 30


def test_empty_batch() -> None:
    assert fast_decode([], batch=1, max_message_bytes=MAX) is None
    same(
        decode_batch([], batch=1, max_message_bytes=MAX),
        decode_batch_fast([], batch=1, max_message_bytes=MAX),
    )


def test_only_empty_arrays() -> None:
    docs = [valid_message(seq=i) for i in range(3)]
    for d in docs:
        d.update(gpus=[], slices=[], processes=[])
    out = check([orjson.dumps(d) for d in docs], clean=True)
    assert out.tables["slice"].num_rows == 0 and out.tables["tick"].num_rows == 3


def test_no_workloads_at_all() -> None:
    doc = valid_message()
    for s in doc["slices"]:
        s.pop("workload")
    check([orjson.dumps(doc)], clean=True)


# -- the schema corpus, mixed into fleet batches ---------------------------------------------


@pytest.mark.parametrize("name,mutate", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_schema_accepted_examples(name: str, mutate: Any) -> None:
    doc = valid_message()
    mutate(doc)
    # 3.0 for an integer is valid JSON Schema, but Arrow will not read it as an integer.
    check(mixed(orjson.dumps(doc)), clean=name != "integer written as 3.0")


@pytest.mark.parametrize("name,mutate,field", REJECTED, ids=[r[0] for r in REJECTED])
def test_schema_rejected_examples(name: str, mutate: Any, field: str) -> None:
    doc = valid_message()
    mutate(doc)
    out = check(mixed(orjson.dumps(doc)), clean=False)
    assert [r.index for r in out.rejects] == [20]


def test_whole_rejected_corpus_in_one_batch() -> None:
    raws = list(fleet()[:10])
    for _name, mutate, _field in REJECTED:
        doc = valid_message(seq=len(raws))
        mutate(doc)
        raws.append(orjson.dumps(doc))
    out = check(raws, clean=False)
    assert len(out.rejects) == len(REJECTED)


# -- JSON text the schema corpus does not reach ----------------------------------------------


def _raw(**changes: Any) -> bytes:
    doc = valid_message()
    doc.update(changes)
    return orjson.dumps(doc)


BASE = orjson.dumps(valid_message())


def _sub(old: bytes, new: bytes, raw: bytes = BASE) -> bytes:
    assert old in raw, old
    return raw.replace(old, new, 1)


def _reordered(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _reordered(doc[k]) for k in reversed(list(doc))}
    if isinstance(doc, list):
        return [_reordered(v) for v in doc]
    return doc


def _with_labels(labels: dict[str, str]) -> bytes:
    doc = valid_message()
    doc["slices"][1]["workload"]["labels"] = labels
    return orjson.dumps(doc)


TEXT_CASES: list[tuple[str, bytes, bool | None]] = [
    ("keys in reverse order everywhere", orjson.dumps(_reordered(valid_message())), True),
    ("labels with several keys", _with_labels({"z": "1", "a": "2", "m": "3"}), True),
    ("labels empty", _with_labels({}), True),
    ("non-ascii strings", _with_labels({"équipe": "vision-ü", "emoji": "🚀"}), True),
    (
        "escaped non-ascii",
        json.dumps(json.loads(_with_labels({"é": 'ü"/\\'})), ensure_ascii=True).encode(),
        True,
    ),
    ("escaped slash and quote", _sub(b'"pod":"infer-1"', b'"pod":"infer\\/1\\"x"'), True),
    ("nul escape in a string", _sub(b'"pod":"infer-1"', b'"pod":"a\\u0000b"'), True),
    ("surrogate pair escape", _sub(b'"pod":"infer-1"', b'"pod":"\\ud83d\\ude80"'), True),
    ("lone surrogate escape", _sub(b'"pod":"infer-1"', b'"pod":"\\ud800"'), False),
    ("spaces between tokens", _sub(b'"cluster":"c1"', b'"cluster" :  "c1"'), True),
    ("pretty printed", json.dumps(valid_message(), indent=2).encode(), None),
    ("leading space", b" " + BASE, False),
    ("trailing space", BASE + b" ", False),
    ("two objects in one message", BASE + BASE, False),
    ("duplicate top-level key", _sub(b'{"schema"', b'{"cluster":"zz","schema"'), False),
    ("duplicate key, first invalid", _sub(b'{"schema"', b'{"seq":"x","schema"'), False),
    ("duplicate label key", _sub(b'"labels":{"team":"nlp"}', b'"labels":{"team":"a","team":"nlp"}'), False),
    ("duplicate gpu key", _sub(b'"index":1', b'"index":3,"index":1'), False),
    ("NaN", _sub(b'"util_pct":37.5', b'"util_pct":NaN'), False),
    ("Infinity", _sub(b'"power_w":310.2', b'"power_w":Infinity'), False),
    ("-Infinity", _sub(b'"temp_c":55', b'"temp_c":-Infinity'), False),
    ("number beyond double", _sub(b'"power_w":310.2', b'"power_w":1e400'), False),
    ("integer -0 in a number field", _sub(b'"temp_c":55', b'"temp_c":-0'), False),
    ("float -0.0 in a number field", _sub(b'"temp_c":55', b'"temp_c":-0.0'), False),
    ("integer -0 in an integer field", _sub(b'"index":1', b'"index":-0'), True),
    ("exponent in a number field", _sub(b'"util_pct":37.5', b'"util_pct":3.75E1'), True),
    ("long decimal", _sub(b'"util_pct":37.5', b'"util_pct":37.500000000000000000000001'), True),
    ("underflow to zero", _sub(b'"last_kernel_age_s":3', b'"last_kernel_age_s":1e-400'), True),
    ("subnormal", _sub(b'"last_kernel_age_s":3', b'"last_kernel_age_s":4.9e-324'), True),
    ("exponent in an integer field", _sub(b'"mem_used_mib":9000', b'"mem_used_mib":9e3'), False),
    ("integer beyond int64", _sub(b'"pid":4242', b'"pid":18446744073709551616'), False),
    ("true for an integer", _sub(b'"index":1', b'"index":true'), False),
    ("number for a string", _sub(b'"pod":"infer-1"', b'"pod":7'), False),
    ("unknown field with null", _sub(b'{"schema"', b'{"extra":null,"schema"'), False),
    ("unknown workload field", _sub(b'"pod":"infer-1"', b'"pod":"infer-1","team":null'), False),
    ("null gpu item", _raw(gpus=[None]), False),
    ("null label value", _with_labels({"team": None}), False),  # type: ignore[dict-item]
    ("label value a number", _sub(b'"labels":{"team":"nlp"}', b'"labels":{"team":7}'), False),
    ("labels nested object", _sub(b'"labels":{"team":"nlp"}', b'"labels":{"team":{"a":"b"}}'), False),
    ("name with trailing newline", _raw(node="n1\n"), False),
    ("control character in a string", _sub(b'"pod":"infer-1"', b'"pod":"in\x01fer"'), False),
    ("byte order mark", b"\xef\xbb\xbf" + BASE, False),
    ("trailing comma", BASE[:-1] + b",}", False),
    ("comment", _sub(b'"cluster":"c1"', b'"cluster":/*x*/"c1"'), False),
    ("single quotes", _sub(b'"cluster":"c1"', b"'cluster':'c1'"), False),
    ("json array", b"[" + BASE + b"]", False),
    ("empty message", b"", False),
    ("escaped key", _sub(b'{"schema"', b'{"sch\\u0065ma"'), True),
    (
        "escaped duplicate label key",
        _sub(b'"labels":{"team":"nlp"}', b'"labels":{"team":"a","t\\u0065am":"b"}'),
        False,
    ),
    ("empty label key", _sub(b'"labels":{"team":"nlp"}', b'"labels":{"":"nlp"}'), True),
    ("labels null", _sub(b'"labels":{"team":"nlp"}', b'"labels":null'), True),
    ("tabs and carriage returns between tokens", _sub(b'"cluster":"c1"', b'"cluster"\t:\r\n"c1"'), True),
    ("array for a number", _sub(b'"util_pct":37.5', b'"util_pct":[37.5]'), False),
    ("object for a string", _sub(b'"pod":"infer-1"', b'"pod":{"a":"b"}'), False),
    ("truncated inside a string", BASE[: BASE.index(b'"cluster"') + 5], False),
    (
        "gpu uuid of another tick",
        _sub(b'"gpu_uuid":"' + G1.encode() + b'","kind":"vgpu"', b'"gpu_uuid":"GPU-x","kind":"vgpu"'),
        False,
    ),
]


@pytest.mark.parametrize("name,raw,clean", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_json_text_cases(name: str, raw: bytes, clean: bool | None) -> None:
    check(mixed(raw), clean)


@pytest.mark.parametrize(
    "raw",
    [_sub(b'"pod":"infer-1"', b'"pod":"in\xfffer"'), _sub(b'"pod":"infer-1"', b'"pod":"\xed\xa0\x80"')],
    ids=["invalid utf-8", "utf-8 encoded surrogate"],
)
def test_non_utf8_inside_a_string_is_handed_to_decode_batch(raw: bytes) -> None:
    # The whole-batch path hands such a batch to decode_batch, which rejects that one message
    # (invalid JSON) and keeps the others.
    out = check(mixed(raw), clean=False)
    assert [r.index for r in out.rejects] == [20]
    assert "JSON" in out.rejects[0].reason or "json" in out.rejects[0].reason
    assert len(out.accepted) == 40


def test_same_gpu_uuid_in_different_ticks_is_fine() -> None:
    a, b = valid_message(seq=1), valid_message(seq=2)
    check([orjson.dumps(a), orjson.dumps(b)], clean=True)


def test_duplicate_tick_in_batch_falls_back() -> None:
    raws = mixed(BASE)
    raws.append(BASE)
    out = check(raws, clean=False)
    assert out.duplicates == 1


def test_message_longer_than_a_read_block() -> None:
    doc = valid_message()
    proc = doc["processes"][1]
    doc["processes"] = [{**proc, "pid": 1 + i, "container_id": "c" * 200} for i in range(6000)]
    raw = orjson.dumps(doc)
    assert len(raw) > 1 << 20
    raws = [*fleet()[:3], raw, *fleet()[3:6]]
    kw = {"batch": 4, "max_message_bytes": 4 << 20}
    fast = fast_decode(raws, **kw)
    assert fast is not None
    same(decode_batch(raws, **kw), fast)


def test_an_error_in_the_whole_batch_path_falls_back(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    import gpuledger.batch_decode as bd

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("reader bug")

    monkeypatch.setattr(bd, "_read_native", broken)
    raws = list(fleet()[:5])
    with caplog.at_level("ERROR", logger="gpuledger.batch_decode"):
        got = decode_batch_fast(raws, batch=3, max_message_bytes=MAX)
    same(decode_batch(raws, batch=3, max_message_bytes=MAX), got)
    assert "whole-batch decode failed on batch 3" in caplog.text


def test_oversized_message_falls_back() -> None:
    raws = list(fleet()[:5])
    size = max(map(len, raws))
    kw = {"batch": 2, "max_message_bytes": size - 1}
    assert fast_decode(raws, **kw) is None
    same(decode_batch(raws, **kw), decode_batch_fast(raws, **kw))


# -- differential: random mutations of a message inside a fleet batch -------------------------


DOC = valid_message()
PATHS = paths(DOC)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**10),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=0, max_value=100),
    st.text(max_size=12),
    st.sampled_from(
        ["mig", "vgpu", "whole", "timeslice", "ok", "lost", "3g.40gb", G0, G1, "", "2026-11-27T10:00:00Z"]
    ),
    st.just([]),
    st.just({}),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=3),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.tuples(st.sampled_from(PATHS), VALUES, st.booleans()), min_size=1, max_size=3))
@example(mutations=[(("slices",), {}, False), (("slices", 2), None, False)])  # found in CI: list -> object
def test_mutated_messages_agree(mutations: list[tuple[tuple, Any, bool]]) -> None:
    doc = mutated(DOC, mutations)
    raws = [*fleet()[:3], orjson.dumps(doc), *fleet()[3:5]]
    check(raws, clean=None)


NUMBER_FIELDS = [
    (b'"util_pct":37.5', b'"util_pct":'),
    (b'"power_w":310.2', b'"power_w":'),
    (b'"temp_c":55', b'"temp_c":'),
    (b'"last_kernel_age_s":3', b'"last_kernel_age_s":'),
    (b'"interval_s":10.0', b'"interval_s":'),
]


@st.composite
def number_text(draw: Any) -> bytes:
    x = draw(st.floats(min_value=-100, max_value=4000, allow_nan=False))
    form = draw(st.sampled_from(["repr", "e", "17g", "fixed", "int"]))
    if form == "int":
        return str(int(x)).encode()
    text = {
        "repr": repr(x),
        "e": f"{x:.{draw(st.integers(0, 20))}e}",
        "17g": f"{x:.17g}",
        "fixed": f"{x:.25f}",
    }
    return text[form].encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(NUMBER_FIELDS), number_text())
def test_number_spellings_read_the_same(field: tuple[bytes, bytes], text: bytes) -> None:
    old, key = field
    check([*fleet()[:2], _sub(old, key + text)], clean=None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(BASE) - 1), st.binary(min_size=0, max_size=3)),
        min_size=1,
        max_size=4,
    )
)
def test_byte_level_edits_agree(edits: list[tuple[int, bytes]]) -> None:
    """Any bytes at all (cut, inserted, replaced) read the same as through the explaining decode."""
    raw = bytearray(BASE)
    for pos, new in edits:
        pos = min(pos, len(raw))
        raw[pos : pos + 1] = new
    check(mixed(bytes(raw)), None)
