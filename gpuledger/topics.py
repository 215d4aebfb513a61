"""gpuledger's Kafka topics, created through the admin client instead of broker auto-creation.

Auto-created topics get the broker's defaults (often one partition, replication factor 1), which
caps ingest at one consumer and loses data with one disk. `ensure_topics` creates the samples
topic, its DLQ and the two control topics with `kafka.partitions` and `kafka.replication_factor`;
a topic that already exists is left as it is (its partition count is never changed here).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpuledger.config import KafkaConfig

log = logging.getLogger(__name__)

__all__ = ["all_topics", "ensure_topics"]


def all_topics(k: KafkaConfig) -> list[str]:
    """Every topic gpuledger uses: samples, DLQ, enforcer decisions, node agent acks."""
    return [k.topic, k.dlq_topic, k.caps_topic, k.cap_acks_topic]


def ensure_topics(k: KafkaConfig, topics: list[str] | None = None, timeout_s: float = 10.0) -> dict[str, str]:
    """Create each topic that does not exist; returns topic -> "created" | "exists".

    Raises a KafkaError naming the topic when the broker refuses one for another reason (a
    replication factor above the number of brokers, no permission to create, ...), and when the
    broker cannot be reached within ``timeout_s``.
    """
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError, TopicAlreadyExistsError, for_code

    names = list(dict.fromkeys(topics if topics is not None else all_topics(k)))
    if not k.create_topics or not names:
        return {}
    admin = KafkaAdminClient(
        bootstrap_servers=k.bootstrap_servers,
        client_id=f"{k.client_id}-admin",
        request_timeout_ms=int(timeout_s * 1000),
        bootstrap_timeout_ms=int(timeout_s * 1000),
    )
    try:
        result = admin.create_topics(
            {n: {"num_partitions": k.partitions, "replication_factor": k.replication_factor} for n in names},
            timeout_ms=int(timeout_s * 1000),
            raise_errors=False,
        )
    finally:
        admin.close()
    out: dict[str, str] = {}
    for t in result["topics"]:
        name, code = t["name"], t["error_code"]
        err = for_code(code)
        if code == 0:
            out[name] = "created"
            log.info(
                "created topic %s (%d partitions, replication factor %d)",
                name,
                k.partitions,
                k.replication_factor,
            )
        elif err is TopicAlreadyExistsError:
            out[name] = "exists"
        else:
            msg = t.get("error_message") or ""
            raise KafkaError(
                f"creating topic {name} ({k.partitions} partitions, replication factor "
                f"{k.replication_factor}) failed: {err.__name__}{': ' + msg if msg else ''}"
            )
    return out


def ensure_topics_or_warn(k: KafkaConfig, topics: list[str] | None = None, timeout_s: float = 10.0) -> bool:
    """`ensure_topics` for processes that must start anyway (the broker may be down): one log line."""
    from kafka.errors import KafkaError, KafkaTimeoutError

    try:
        ensure_topics(k, topics, timeout_s)
    except KafkaTimeoutError:
        # The broker is not there: the client's own connection error names the address once, and
        # a collector spools meanwhile. Saying it here too would say it twice.
        log.warning("topics not checked or created (no broker answered); continuing")
        return False
    except KafkaError as exc:
        log.warning("topics not checked or created (%s); continuing with what the broker has", exc)
        return False
    return True
