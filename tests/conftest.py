"""Shared fixtures: a real Kafka broker (the CI's, or one this session starts), topics, lakes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from broker import SCRIPT, Broker

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"

# Property tests: `.ci/run` sets HYPOTHESIS_PROFILE=ci, a fixed sequence of examples, so a red CI
# means a change in the code, not an unlucky draw; other runs draw new examples every time and
# are where new counterexamples come from (pin each one with @example).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS when set (CI starts the broker), else start one with the repo's script."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "kafka.sh"), "start"], capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"could not start Kafka: {out.stderr[-2000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("KAFKA_BOOTSTRAP_SERVERS="))
    try:
        yield line.split("=", 1)[1]
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "kafka.sh"), "stop"], capture_output=True, timeout=120)


@pytest.fixture
def make_topic(kafka_bootstrap: str):
    """Create uniquely named topics (so tests never see each other's messages)."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="gpuledger-tests")
    created: list[str] = []

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        created.append(name)
        return name

    yield make
    try:
        if created:
            admin.delete_topics(created)
    finally:
        admin.close()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """A folder for files a test wants kept (screenshots, reports): test-artifacts/<test name>."""
    path = ARTIFACTS / request.node.name.replace("/", "_")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of the test's own that it may stop and restart (outage tests); stopped at the end."""
    b = Broker(tmp_path / "kafka-home")
    try:
        b.run("start")
        yield b
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=b.env, capture_output=True, timeout=90)


def topic_env(bootstrap: str, base: str) -> dict[str, str]:
    """Config variables that point a test's gpuledger at its own four topics (`base`.samples, .dlq,
    .caps, .acks) on the test broker, so tests never see each other's messages."""
    return {
        "GPULEDGER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "GPULEDGER_KAFKA_TOPIC": base + ".samples",
        "GPULEDGER_KAFKA_DLQ_TOPIC": base + ".dlq",
        "GPULEDGER_KAFKA_CAPS_TOPIC": base + ".caps",
        "GPULEDGER_KAFKA_CAP_ACKS_TOPIC": base + ".acks",
    }
