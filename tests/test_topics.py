"""Topics are created by gpuledger with the configured partitions and replication (real broker)."""

from __future__ import annotations

import time
import uuid

import pytest
from conftest import topic_env
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from gpuledger.config import ConfigError, load_config
from gpuledger.topics import all_topics, ensure_topics, ensure_topics_or_warn


def _partitions(admin: KafkaAdminClient, name: str) -> int:
    (desc,) = admin.describe_topics([name])
    assert desc["error_code"] == 0, desc
    return len(desc["partitions"])


@pytest.mark.kafka
def test_ensure_topics_creates_all_four_with_configured_partitions(kafka_bootstrap: str) -> None:
    base = f"topics-{uuid.uuid4().hex[:10]}"
    cfg = load_config(
        env={
            **topic_env(kafka_bootstrap, base),
            "GPULEDGER_KAFKA_PARTITIONS": "3",
            "GPULEDGER_KAFKA_REPLICATION_FACTOR": "1",
        }
    )
    names = all_topics(cfg.kafka)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="gpuledger-tests")
    try:
        assert ensure_topics(cfg.kafka) == {n: "created" for n in names}
        # the broker's own default (num.partitions=4 in scripts/kafka.sh) would give 4
        assert [_partitions(admin, n) for n in names] == [3, 3, 3, 3]
        # a second start finds them: no error, nothing changed, even with another partition count
        cfg.kafka.partitions = 5
        assert ensure_topics(cfg.kafka) == {n: "exists" for n in names}
        assert [_partitions(admin, n) for n in names] == [3, 3, 3, 3]
    finally:
        admin.delete_topics(names)
        admin.close()


@pytest.mark.kafka
def test_refused_topic_is_an_error_naming_it(kafka_bootstrap: str) -> None:
    name = f"topics-{uuid.uuid4().hex[:10]}"
    cfg = load_config(
        env={
            "GPULEDGER_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "GPULEDGER_KAFKA_REPLICATION_FACTOR": "3",  # one broker
        }
    )
    with pytest.raises(
        KafkaError, match=f"creating topic {name} .*replication factor 3.*InvalidReplicationFactor"
    ):
        ensure_topics(cfg.kafka, [name])
    assert ensure_topics_or_warn(cfg.kafka, [name]) is False


def test_ensure_topics_unreachable_broker_warns_and_returns_false(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(env={"GPULEDGER_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"})
    with caplog.at_level("WARNING", logger="gpuledger.topics"):
        t0 = time.monotonic()
        assert ensure_topics_or_warn(cfg.kafka, timeout_s=1.0) is False
        assert time.monotonic() - t0 < 10  # bounded by timeout_s, not kafka-python's 30 s bootstrap
    assert len([r for r in caplog.records if "topics not checked or created" in r.message]) == 1


def test_create_topics_off_contacts_nothing() -> None:
    cfg = load_config(
        env={"GPULEDGER_KAFKA_CREATE_TOPICS": "false", "GPULEDGER_KAFKA_BOOTSTRAP_SERVERS": "x:1"}
    )
    assert ensure_topics(cfg.kafka) == {}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            "PARTITIONS",
            "0",
            "kafka.partitions = '0' (from environment GPULEDGER_KAFKA_PARTITIONS): "
            "expected an integer from 1 to 10000",
        ),
        (
            "REPLICATION_FACTOR",
            "0",
            "kafka.replication_factor = '0' (from environment GPULEDGER_KAFKA_REPLICATION_FACTOR): "
            "expected an integer from 1 to 32767",
        ),
        (
            "PARTITIONS",
            "two",
            "kafka.partitions = 'two' (from environment GPULEDGER_KAFKA_PARTITIONS): expected an integer",
        ),
    ],
)
def test_topic_config_is_validated(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={f"GPULEDGER_KAFKA_{key}": value})
    assert str(err.value) == f"config error: {expected}"
