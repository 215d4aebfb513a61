"""Where a node agent's ticks go: the in-process bus or a Kafka topic (key = node)."""

from __future__ import annotations

from typing import Protocol

from gpuledger.bus import MemoryBus


class Transport(Protocol):
    def send(self, key: str, value: bytes) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class MemoryTransport:
    """Appends to a MemoryBus topic; for the demo and unit tests."""

    def __init__(self, bus: MemoryBus, topic: str = "gpu.samples.v1") -> None:
        self.bus, self.topic = bus, topic

    def send(self, key: str, value: bytes) -> None:
        self.bus.append(self.topic, key.encode(), value)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class KafkaTransport:
    """kafka-python producer: idempotent, acks=all (its defaults), keyed by node for per-node order."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = "gpu.samples.v1",
        client_id: str = "gpuledger-agent",
        linger_ms: int = 20,
    ) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            linger_ms=linger_ms,
            max_request_size=2 * 1024 * 1024,
            batch_size=256 * 1024,
        )

    def send(self, key: str, value: bytes) -> None:
        self.producer.send(self.topic, key=key.encode(), value=value)

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush()
        self.producer.close(timeout=10)
