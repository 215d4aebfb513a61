"""Configuration: defaults, the TOML file, GPULEDGER_<SECTION>_<KEY> overrides, and every way to get it wrong.

An invalid config must fail at start with the key, the value and what was expected (DESIGN §3).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuledger.config import Config, ConfigError, _coerce, config_hash, load_config

FULL_TOML = """
[kafka]
bootstrap_servers = "k1:9092,k2:9092"
topic = "samples"
max_message_bytes = 2097152

[lake]
path = "/data/lake"
batch_max_messages = 1000
batch_max_seconds = 2      # an integer where a number is expected is fine
zstd_level = 9

[collector]
backend = "replay"
interval_s = 15.0
cluster = "east"
node = "gpu-node-7"
scale = 3
proc_root = "/host/proc"

[tenants]
default = "platform"
rules = [
  {tenant = "vision", namespace = "ml-vision"},
  {tenant = "nlp", label = "team=nlp"},
  {tenant = "physics", account = "phys"},
  {tenant = "alice", user = "alice"},
]

[pricing]
currency = "EUR"
book = [{model = "NVIDIA H100 80GB HBM3", gpu_hour = "2.10", from = "2026-01-01"}]
kwh = "0.25"

[alerts]
idle_util_ratio = 0.1
idle_min_minutes = 45
webhooks = ["https://hooks.example/a", "https://hooks.example/b"]

[enforcer]
mode = "recommend"

[dashboard]
host = "0.0.0.0"
port = 8080
"""


@pytest.fixture(autouse=True)
def _clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory (no stray ./gpuledger.toml) with no GPULEDGER_* in os.environ."""
    monkeypatch.chdir(tmp_path)
    import os

    for name in list(os.environ):
        if name.startswith("GPULEDGER_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "gpuledger.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- what loads -------------------------------------------------------------------------------------


def test_defaults_with_no_file_and_no_env() -> None:
    cfg = load_config(env={})
    assert cfg == Config()
    assert cfg.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert cfg.kafka.topic == "gpu.samples.v1"
    assert cfg.kafka.dlq_topic == "gpu.samples.dlq.v1"
    assert cfg.lake.path == "./gpuledger-data"
    assert cfg.collector.backend == "simulate"
    assert cfg.collector.interval_s == 10.0
    assert cfg.tenants.rules == []
    assert cfg.tenants.default == "unassigned"
    assert cfg.alerts.idle_util_ratio == 0.05
    assert cfg.alerts.idle_min_minutes == 30.0
    assert cfg.enforcer.mode == "off"
    assert cfg.dashboard.port == 8050
    assert cfg.pricing.bill_unhealthy is False
    assert cfg.pricing.used_basis == "busy"


def test_every_section_from_a_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL_TOML, "custom.toml"), env={})
    assert cfg.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert cfg.kafka.topic == "samples"
    assert cfg.kafka.max_message_bytes == 2097152
    assert cfg.lake.path == "/data/lake"
    assert cfg.lake.batch_max_messages == 1000
    assert cfg.lake.batch_max_seconds == 2.0
    assert isinstance(cfg.lake.batch_max_seconds, float)
    assert cfg.lake.zstd_level == 9
    c = cfg.collector
    assert (c.backend, c.interval_s, c.cluster) == ("replay", 15.0, "east")
    assert (c.node, c.scale, c.proc_root) == ("gpu-node-7", 3, "/host/proc")
    assert cfg.tenants.default == "platform"
    assert cfg.tenants.rules == [
        {"tenant": "vision", "namespace": "ml-vision"},
        {"tenant": "nlp", "label": "team=nlp"},
        {"tenant": "physics", "account": "phys"},
        {"tenant": "alice", "user": "alice"},
    ]
    assert cfg.pricing.currency == "EUR"
    assert cfg.pricing.book == [{"model": "NVIDIA H100 80GB HBM3", "gpu_hour": "2.10", "from": "2026-01-01"}]
    assert cfg.pricing.kwh == "0.25"
    assert cfg.alerts.idle_util_ratio == 0.1
    assert cfg.alerts.idle_min_minutes == 45.0
    assert cfg.alerts.webhooks == ["https://hooks.example/a", "https://hooks.example/b"]
    assert cfg.enforcer.mode == "recommend"
    assert (cfg.dashboard.host, cfg.dashboard.port) == ("0.0.0.0", 8080)
    # keys the file does not name keep their defaults
    assert cfg.kafka.group_id == "gpuledger-ingest"
    assert cfg.collector.metrics_port == 9400


def test_gpuledger_toml_in_the_working_directory_is_used(tmp_path: Path) -> None:
    write(tmp_path, "[dashboard]\nport = 9999\n")
    assert load_config(env={}).dashboard.port == 9999


def test_env_overrides_each_type() -> None:
    env = {
        "GPULEDGER_LAKE_BATCH_MAX_MESSAGES": "500",  # int
        "GPULEDGER_ALERTS_IDLE_UTIL_RATIO": "0.2",  # float
        "GPULEDGER_LAKE_BATCH_MAX_SECONDS": "3",  # float given as an integer
        "GPULEDGER_KAFKA_BOOTSTRAP_SERVERS": "broker:9093",  # str
        "GPULEDGER_COLLECTOR_BACKEND": "nvml",  # str with a check
        "GPULEDGER_TENANTS_RULES": '[{"tenant":"a","namespace":"x"}]',  # list of tables (JSON)
        "GPULEDGER_ALERTS_WEBHOOKS": '["https://h/1"]',  # list of strings
        "GPULEDGER_DASHBOARD_PORT": " 8051 ",  # surrounding blanks are fine
    }
    cfg = load_config(env=env)
    assert cfg.lake.batch_max_messages == 500
    assert cfg.alerts.idle_util_ratio == 0.2
    assert cfg.lake.batch_max_seconds == 3.0
    assert isinstance(cfg.lake.batch_max_seconds, float)
    assert cfg.kafka.bootstrap_servers == "broker:9093"
    assert cfg.collector.backend == "nvml"
    assert cfg.tenants.rules == [{"tenant": "a", "namespace": "x"}]
    assert cfg.alerts.webhooks == ["https://h/1"]
    assert cfg.dashboard.port == 8051


def test_env_text_for_a_string_key_stays_text() -> None:
    cfg = load_config(
        env={
            "GPULEDGER_COLLECTOR_CLUSTER": "123",
            "GPULEDGER_PRICING_KWH": "0.25",
            "GPULEDGER_TENANTS_DEFAULT": "[x]",
        }
    )
    assert (cfg.collector.cluster, cfg.pricing.kwh, cfg.tenants.default) == ("123", "0.25", "[x]")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
    ],
)
def test_bool_coercion_from_env_text(text: str, value: bool) -> None:
    # No config key is a bool today; the coercion every future bool key will go through is checked here.
    assert _coerce("s", "k", text, bool, "environment GPULEDGER_S_K") is value


def test_bool_coercion_rejects_other_text() -> None:
    with pytest.raises(ConfigError) as exc:
        _coerce("s", "flag", "maybe", bool, "environment GPULEDGER_S_FLAG")
    msg = str(exc.value)
    assert "s.flag" in msg and "'maybe'" in msg and "expected true or false" in msg


def test_env_beats_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[lake]\nbatch_max_messages = 1000\npath = "/from/file"\n'
        '[tenants]\nrules = [{tenant = "file", namespace = "f"}]\n',
    )
    env = {
        "GPULEDGER_LAKE_BATCH_MAX_MESSAGES": "500",
        "GPULEDGER_TENANTS_RULES": json.dumps([{"tenant": "env", "user": "u"}]),
    }
    cfg = load_config(path, env=env)
    assert cfg.lake.batch_max_messages == 500
    assert cfg.lake.path == "/from/file"
    assert cfg.tenants.rules == [{"tenant": "env", "user": "u"}]


def test_process_environment_is_read_when_env_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPULEDGER_DASHBOARD_PORT", "8123")
    assert load_config().dashboard.port == 8123


def test_unrelated_gpuledger_variables_are_ignored() -> None:
    env = {
        "GPULEDGER_FAULT_CRASH_BEFORE_COMMIT": "3",
        "GPULEDGER_FAULT_ANYTHING": "x",
        "GPULEDGER_HOME": "/x",
        "GPULEDGER": "1",
        "KAFKA_BOOTSTRAP_SERVERS": "elsewhere:9092",
        "lake_path": "/nope",
    }
    assert load_config(env=env) == Config()


def test_config_hash_is_stable_and_sees_changes() -> None:
    a, b = load_config(env={}), load_config(env={})
    assert config_hash(a) == config_hash(b)
    c = load_config(env={"GPULEDGER_PRICING_CURRENCY": "EUR"})
    assert config_hash(c) != config_hash(a)


# -- every way to get it wrong: the message names the key, the value and what was expected -----------

FILE_ERRORS = [
    # (id, toml text, substrings the message must hold)
    ("unknown section", '[kafak]\ntopic = "t"\n', ["[kafak]", "expected one of kafka, lake, collector"]),
    ("unknown key", '[lake]\npathh = "/x"\n', ["lake.pathh", "'/x'", "expected one of path"]),
    ("section not a table", "lake = 3\n", ["[lake]", "= 3", "expected a table"]),
    (
        "string for int",
        '[lake]\nbatch_max_messages = "500"\n',
        ["lake.batch_max_messages", "'500'", "expected an integer"],
    ),
    ("bool for int", "[dashboard]\nport = true\n", ["dashboard.port", "True", "expected an integer"]),
    (
        "bool for float",
        "[alerts]\nidle_util_ratio = false\n",
        ["alerts.idle_util_ratio", "False", "a number"],
    ),
    ("float for int", "[lake]\nzstd_level = 3.5\n", ["lake.zstd_level", "3.5", "expected an integer"]),
    ("int for str", "[kafka]\ntopic = 7\n", ["kafka.topic", "7", "expected a string"]),
    (
        "str for list",
        '[alerts]\nwebhooks = "https://h"\n',
        ["alerts.webhooks", "'https://h'", "expected a list"],
    ),
    (
        "list of non-strings",
        "[alerts]\nwebhooks = [1, 2]\n",
        ["alerts.webhooks", "[1, 2]", "a list of strings"],
    ),
    (
        "port out of range",
        "[dashboard]\nport = 70000\n",
        ["dashboard.port", "70000", "a port number 0-65535"],
    ),
    (
        "negative metrics port",
        "[collector]\nmetrics_port = -1\n",
        ["collector.metrics_port", "-1", "0-65535"],
    ),
    (
        "unknown backend",
        '[collector]\nbackend = "gpu"\n',
        ["collector.backend", "'gpu'", "one of nvml, simulate, replay"],
    ),
    (
        "used basis",
        '[pricing]\nused_basis = "sm"\n',
        ["pricing.used_basis", "'sm'", "one of busy, sm_active"],
    ),
    (
        "bill unhealthy not a bool",
        '[pricing]\nbill_unhealthy = "no"\n',
        ["pricing.bill_unhealthy", "expected"],
    ),
    ("zero interval", "[collector]\ninterval_s = 0\n", ["collector.interval_s", "0", "in (0, 3600]"]),
    ("zero batch", "[lake]\nbatch_max_messages = 0\n", ["lake.batch_max_messages", "0", "an integer > 0"]),
    ("zstd level", "[lake]\nzstd_level = 23\n", ["lake.zstd_level", "23", "from 1 to 22"]),
    ("ratio above 1", "[alerts]\nidle_util_ratio = 1.5\n", ["alerts.idle_util_ratio", "1.5", "from 0 to 1"]),
    (
        "enforcer mode",
        '[enforcer]\nmode = "auto"\n',
        ["enforcer.mode", "'auto'", "one of off, recommend, grow-only, enforce"],
    ),
    ("empty bootstrap", '[kafka]\nbootstrap_servers = ""\n', ["kafka.bootstrap_servers", "''", "HOST:PORT"]),
    (
        "rule without tenant",
        '[tenants]\nrules = [{namespace = "x"}]\n',
        ["tenants.rules[0]", "'namespace': 'x'", "non-empty 'tenant'"],
    ),
    (
        "rule with empty tenant",
        '[tenants]\nrules = [{tenant = "", namespace = "x"}]\n',
        ["tenants.rules[0]", "'tenant': ''", "non-empty 'tenant'"],
    ),
    (
        "rule with two matchers",
        '[tenants]\nrules = [{tenant = "a", namespace = "x"}, {tenant = "b", namespace = "y", user = "u"}]\n',
        ["tenants.rules[1]", "'user': 'u'", "exactly one matcher among namespace, label, account, user"],
    ),
    (
        "rule with no matcher",
        '[tenants]\nrules = [{tenant = "a"}]\n',
        ["tenants.rules[0]", "'tenant': 'a'", "exactly one matcher"],
    ),
    (
        "rule with unknown matcher",
        '[tenants]\nrules = [{tenant = "a", pod = "p"}]\n',
        ["tenants.rules[0]", "'pod': 'p'", "exactly one matcher"],
    ),
    (
        "label without =",
        '[tenants]\nrules = [{tenant = "a", label = "team"}]\n',
        ["tenants.rules[0]", "'label': 'team'", "label as 'key=value'"],
    ),
    (
        "matcher not a string",
        '[tenants]\nrules = [{tenant = "a", user = 5}]\n',
        ["tenants.rules[0]", "'user': 5", "non-empty string"],
    ),
    ("rule not a table", '[tenants]\nrules = ["a"]\n', ["tenants.rules", "['a']", "a list of tables"]),
]


@pytest.mark.parametrize(
    ("text", "needles"), [(t, n) for _, t, n in FILE_ERRORS], ids=[i for i, _, _ in FILE_ERRORS]
)
def test_file_errors_name_key_value_and_expectation(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = write(tmp_path, text, "bad.toml")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    msg = str(exc.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert str(path) in msg


ENV_ERRORS = [
    ("GPULEDGER_DASHBOARD_PORT", "abc", ["dashboard.port", "'abc'", "expected an integer"]),
    ("GPULEDGER_DASHBOARD_PORT", "70000", ["dashboard.port", "70000", "0-65535"]),
    ("GPULEDGER_LAKE_BATCH_MAX_SECONDS", "soon", ["lake.batch_max_seconds", "'soon'", "expected a number"]),
    ("GPULEDGER_LAKE_BATCH_MAX_MESSAGES", "1.5", ["lake.batch_max_messages", "'1.5'", "expected an integer"]),
    ("GPULEDGER_COLLECTOR_BACKEND", "gpu", ["collector.backend", "'gpu'", "one of nvml, simulate, replay"]),
    ("GPULEDGER_ALERTS_WEBHOOKS", "https://h", ["alerts.webhooks", "'https://h'", "expected a list"]),
    ("GPULEDGER_ALERTS_WEBHOOKS", '{"a": 1}', ["alerts.webhooks", "'{\"a\": 1}'", "expected a list"]),
    ("GPULEDGER_LAKE_PATHH", "/x", ["lake.pathh", "'/x'", "expected one of path"]),
    (
        "GPULEDGER_TENANTS_RULES",
        '[{"tenant":"a","label":"team"}]',
        ["tenants.rules[0]", "'label': 'team'", "label as 'key=value'"],
    ),
    ("GPULEDGER_TENANTS_RULES", '[{"namespace":"x"}]', ["tenants.rules[0]", "non-empty 'tenant'"]),
    (
        "GPULEDGER_TENANTS_RULES",
        '[{"tenant":"a","namespace":"x","account":"y"}]',
        ["tenants.rules[0]", "exactly one matcher"],
    ),
]


@pytest.mark.parametrize(("name", "value", "needles"), ENV_ERRORS, ids=[f"{n}={v}" for n, v, _ in ENV_ERRORS])
def test_env_errors_name_key_value_expectation_and_variable(
    name: str, value: str, needles: list[str]
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(env={name: value})
    msg = str(exc.value)
    for needle in [*needles, f"environment {name}"]:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_bad_env_value_fails_even_when_the_file_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "[dashboard]\nport = 8080\n")
    with pytest.raises(ConfigError, match=r"dashboard\.port = 'x'"):
        load_config(path, env={"GPULEDGER_DASHBOARD_PORT": "x"})


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[lake\npath = \n", "broken.toml")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert str(path) in str(exc.value)
    assert "not valid TOML" in str(exc.value)


def test_non_utf8_file_is_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[collector]\ncluster = "z\xfcrich"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, env={})


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert str(path) in str(exc.value)
    assert "does not exist" in str(exc.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path, env={})
    assert str(tmp_path) in str(exc.value)
    assert "cannot be read" in str(exc.value)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
