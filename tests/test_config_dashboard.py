"""The [dashboard] keys: defaults, overrides, and a clear error for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuledger.config import ConfigError, load_config


def test_defaults() -> None:
    d = load_config(env={}).dashboard
    assert (d.auth, d.users_file, d.secret_key, d.secret_key_file) == ("password", "", "", "")
    assert (d.user_header, d.groups_header) == ("X-Forwarded-User", "X-Forwarded-Groups")
    assert d.trusted_proxies == ["127.0.0.1/32", "::1/128"]
    assert (d.admin_group, d.tenant_group_prefix) == ("gpuledger-admins", "gpuledger-tenant-")
    assert (d.login_free_attempts, d.login_backoff_s, d.login_backoff_max_s) == (3, 1.0, 300.0)
    assert (d.session_hours, d.cookie_secure, d.connections) == (12.0, False, 4)


def test_file_and_environment(tmp_path: Path) -> None:
    f = tmp_path / "g.toml"
    f.write_text(
        '[dashboard]\nauth = "trusted-header"\ntrusted_proxies = ["10.0.0.0/8", "fd00::1"]\n'
        'user_header = "X-Auth-Request-User"\nlogin_free_attempts = 0\n'
    )
    d = load_config(
        f,
        env={
            "GPULEDGER_DASHBOARD_SECRET_KEY": "s3cret",
            "GPULEDGER_DASHBOARD_COOKIE_SECURE": "true",
            "GPULEDGER_DASHBOARD_USERS_FILE": "/etc/gpuledger/users.toml",
        },
    ).dashboard
    assert d.auth == "trusted-header"
    assert d.trusted_proxies == ["10.0.0.0/8", "fd00::1"]
    assert (d.user_header, d.login_free_attempts) == ("X-Auth-Request-User", 0)
    assert (d.secret_key, d.cookie_secure, d.users_file) == ("s3cret", True, "/etc/gpuledger/users.toml")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("auth", '"oauth"', "expected one of password, trusted-header"),
        ("auth", "1", "expected a string"),
        ("trusted_proxies", '["10.0.0.300/8"]', "expected a list of IP addresses or networks"),
        ("trusted_proxies", '"10.0.0.0/8"', "expected a list"),
        ("user_header", '"X User"', "expected an HTTP header name"),
        ("groups_header", '""', "expected an HTTP header name"),
        ("admin_group", '""', "expected a group name"),
        ("tenant_group_prefix", '""', "expected a group name prefix"),
        ("login_free_attempts", "-1", "expected an integer from 0 to 100"),
        ("login_backoff_s", "0", "expected a number of seconds in (0, 3600]"),
        ("login_backoff_max_s", "100000", "expected a number of seconds in (0, 86400]"),
        ("session_hours", "0", "expected a number of hours in (0, 744]"),
        ("connections", "0", "expected an integer from 1 to 64"),
        ("cookie_secure", '"yes"', "expected true or false"),
        ("no_such_key", "1", "unknown key dashboard.no_such_key"),
    ],
)
def test_bad_values_name_key_value_and_expectation(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    f = tmp_path / "g.toml"
    f.write_text(f"[dashboard]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    msg = str(err.value)
    assert f"dashboard.{key}" in msg and expected in msg, msg


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={"GPULEDGER_DASHBOARD_AUTH": "ldap"})
    assert "GPULEDGER_DASHBOARD_AUTH" in str(err.value) and "password, trusted-header" in str(err.value)
