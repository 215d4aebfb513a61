"""The [alerts] and [jobs] config keys: defaults, overrides, and a clear error for each bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuledger.config import ALERT_RULES, JOB_NAMES, ConfigError, load_config


def test_defaults() -> None:
    cfg = load_config(env={})
    a, j = cfg.alerts, cfg.jobs
    assert (a.idle_util_ratio, a.idle_min_minutes, a.resolve_ticks, a.repeat_interval_minutes) == (
        0.05,
        30.0,
        3,
        240.0,
    )
    assert a.rules == list(ALERT_RULES) and j.enabled == list(JOB_NAMES)
    assert (j.rollups_minutes, j.alerts_seconds, j.accrual_time, j.close_day, j.close_time) == (
        5.0,
        60.0,
        "00:30",
        1,
        "02:00",
    )
    assert (j.misfire_grace_s, j.metrics_port) == (300.0, 9402)


def test_file_and_environment(tmp_path: Path) -> None:
    f = tmp_path / "g.toml"
    f.write_text(
        "[alerts]\n"
        'webhooks = ["https://hooks.example/gpu"]\n'
        'routes = [{tenant = "nlp", receiver = "nlp-oncall", webhooks = ["http://nlp.example/h"],'
        " continue = true}]\n"
        'labels = {env = "prod"}\n'
        'idle_gpu_severity = "critical"\n'
        "[jobs]\n"
        'close_time = "03:45"\n'
    )
    cfg = load_config(
        f, env={"GPULEDGER_JOBS_ALERTS_SECONDS": "30", "GPULEDGER_ALERTS_RULES": '["idle_slice"]'}
    )
    assert cfg.alerts.routes[0]["receiver"] == "nlp-oncall" and cfg.alerts.labels == {"env": "prod"}
    assert (cfg.alerts.idle_gpu_severity, cfg.jobs.close_time, cfg.jobs.alerts_seconds) == (
        "critical",
        "03:45",
        30.0,
    )
    assert cfg.alerts.rules == ["idle_slice"]


BAD = [
    ("alerts", "webhooks", '["ftp://x"]', "['ftp://x']", "a list of http:// or https:// URLs"),
    (
        "alerts",
        "rules",
        '["idle"]',
        "['idle']",
        "a list of distinct rule names among " + ", ".join(ALERT_RULES),
    ),
    ("alerts", "idle_slice_severity", '"page"', "'page'", "one of critical, warning, info"),
    ("alerts", "pool_unallocated_pct", "100", "100", "a percentage from 0 to below 100"),
    ("alerts", "resolve_ticks", "0", "0", "an integer from 1 to 1000"),
    ("alerts", "silent_intervals", "0.5", "0.5", "a number of intervals >= 1"),
    ("alerts", "send_attempts", "50", "50", "an integer from 1 to 20"),
    ("alerts", "alertmanager_url", '"am:9093"', "'am:9093'", "empty or an http(s):// URL"),
    ("alerts", "labels", '{severity = "x"}', "{'severity': 'x'}", "a table of label names"),
    ("alerts", "labels", "{env = 1}", "{'env': 1}", "a table of label names"),
    ("alerts", "repeat_interval_minutes", "0", "0", "a number of minutes > 0"),
    ("jobs", "close_time", '"2:00"', "'2:00'", "a UTC time HH:MM"),
    ("jobs", "accrual_time", '"24:00"', "'24:00'", "a UTC time HH:MM"),
    ("jobs", "close_day", "29", "29", "a day of month from 1 to 28"),
    ("jobs", "alerts_seconds", "0.5", "0.5", "a number of seconds from 1 to 3600"),
    ("jobs", "enabled", '["close", "close"]', "['close', 'close']", "a list of distinct job names"),
    ("jobs", "metrics_port", "70000", "70000", "a port number 0-65535"),
    ("jobs", "misfire_grace_s", "-1", "-1", "a number of seconds > 0"),
    ("jobs", "rollups_minutes", '"5"', "'5'", "a number"),
]


@pytest.mark.parametrize(("section", "key", "toml", "shown", "expected"), BAD)
def test_bad_values_name_key_value_and_expectation(
    tmp_path: Path, section: str, key: str, toml: str, shown: str, expected: str
) -> None:
    f = tmp_path / "g.toml"
    f.write_text(f"[{section}]\n{key} = {toml}\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    assert str(err.value).startswith(
        f"config error: {section}.{key} = {shown} (from {f}): expected {expected}"
    )


def test_bad_environment_value() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={"GPULEDGER_JOBS_CLOSE_DAY": "31"})
    assert str(err.value) == (
        "config error: jobs.close_day = '31' (from environment GPULEDGER_JOBS_CLOSE_DAY): "
        "expected a day of month from 1 to 28"
    )


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ('{receiver = "r", webhooks = ["http://a/"]}', "expected a non-empty string 'tenant'"),
        ('{tenant = "t", webhooks = ["http://a/"]}', "expected a non-empty string 'receiver'"),
        (
            '{tenant = "t", receiver = "r", webhooks = []}',
            "expected 'webhooks' as a non-empty list of http(s) URLs",
        ),
        (
            '{tenant = "t", receiver = "r", webhooks = ["a"]}',
            "expected 'webhooks' as a non-empty list of http(s) URLs",
        ),
        (
            '{tenant = "t", receiver = "r", webhooks = ["http://a/"], continue = "yes"}',
            "expected 'continue' as true or false",
        ),
        ('{tenant = "t", receiver = "r", webhooks = ["http://a/"], match = "x"}', "unknown key(s) ['match']"),
    ],
)
def test_bad_routes(tmp_path: Path, route: str, expected: str) -> None:
    f = tmp_path / "g.toml"
    f.write_text(f"[alerts]\nroutes = [{route}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    msg = str(err.value)
    assert msg.startswith("config error: alerts.routes[0] = {") and f"(from {f}): " in msg
    assert expected in msg
