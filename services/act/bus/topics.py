"""The ACT topics and their explicit creation.

Four topics, each with a protobuf value type and the item id as key (see `act.bus.codec`):

| topic | value | retention |
|---|---|---|
| `act.items.v1` | `act.v1.Item` | 7 days |
| `act.decisions.v1` | `act.v1.Decision` | 30 days |
| `act.reviews.v1` | `act.v1.Review` | 30 days |
| `act.dlq.v1` | `act.v1.DeadLetter` | 30 days |

All use `cleanup.policy=delete`: decisions and reviews are an audit trail (every revision of
a review is kept), so compaction, which keeps only the last record per key, would lose
history. The broker does not create topics on first use (`auto.create.topics.enable=false`
locally, and it should be so in production): `ensure_topics` creates them with explicit
partition counts, replication factors and configs before any service produces.

Partition counts can only grow, and growing one changes which partition a key maps to
(breaking per-item order across the change), so `ensure_topics` never alters an existing
topic: one with fewer partitions than asked for is an error (`TopicMismatchError`), or a
logged warning with `strict=False`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from act.bus.settings import BusSettings, message_limits

log = logging.getLogger(__name__)

ITEMS_TOPIC = "act.items.v1"
DECISIONS_TOPIC = "act.decisions.v1"
REVIEWS_TOPIC = "act.reviews.v1"
DLQ_TOPIC = "act.dlq.v1"
ALL_TOPICS: tuple[str, ...] = (ITEMS_TOPIC, DECISIONS_TOPIC, REVIEWS_TOPIC, DLQ_TOPIC)

DAY_MS = 24 * 60 * 60 * 1000
RETENTION_MS: dict[str, int] = {
    ITEMS_TOPIC: 7 * DAY_MS,
    DECISIONS_TOPIC: 30 * DAY_MS,
    REVIEWS_TOPIC: 30 * DAY_MS,
    DLQ_TOPIC: 30 * DAY_MS,
}

# Kafka error codes seen in metadata responses.
_NO_ERROR = 0
_UNKNOWN_TOPIC_OR_PARTITION = 3


class TopicMismatchError(RuntimeError):
    """An existing topic does not have what its spec asks for (too few partitions)."""


@dataclass(frozen=True)
class TopicSpec:
    """One topic as it should exist: name, partition count, replication factor, configs."""

    name: str
    partitions: int
    replication: int = 1
    configs: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a topic needs a name")
        if self.partitions < 1:
            raise ValueError(f"topic {self.name}: partitions must be >= 1, got {self.partitions}")
        if self.replication < 1:
            raise ValueError(f"topic {self.name}: replication must be >= 1, got {self.replication}")


@dataclass(frozen=True)
class TopicStatus:
    """What `ensure_topics` found or did for one topic."""

    name: str
    created: bool
    partitions: int
    replication: int


def min_insync_replicas(replication: int) -> int:
    """1 for one or two replicas (writes go on with one broker down), else 2."""
    return 1 if replication <= 2 else 2


def topic_configs(base_topic: str, *, max_payload_bytes: int, replication: int) -> dict[str, str]:
    """The explicit configs of one of the four topics (by its unsuffixed name)."""
    limits = message_limits(max_payload_bytes)
    max_message = limits.dead_letter_record if base_topic == DLQ_TOPIC else limits.record
    return {
        "cleanup.policy": "delete",
        "retention.ms": str(RETENTION_MS[base_topic]),
        "max.message.bytes": str(max_message),
        "min.insync.replicas": str(min_insync_replicas(replication)),
        # Timestamps are the producers' (event time), not the broker's arrival time.
        "message.timestamp.type": "CreateTime",
    }


def default_topic_specs(
    settings: BusSettings | None = None,
    *,
    partitions: int | None = None,
    replication: int | None = None,
    suffix: str = "",
) -> list[TopicSpec]:
    """Specs of the four topics, sized from `settings` (env) unless given explicitly.

    `suffix` is appended to every name after a dot (`act.items.v1.<suffix>`), for a
    namespace of its own (tests, a second pipeline on a shared cluster); the codec maps a
    suffixed topic to its base's message type.
    """
    settings = settings if settings is not None else BusSettings()
    partitions = settings.topic_partitions if partitions is None else partitions
    replication = settings.topic_replication if replication is None else replication
    return [
        TopicSpec(
            name=with_suffix(base, suffix),
            partitions=partitions,
            replication=replication,
            configs=topic_configs(
                base, max_payload_bytes=settings.max_payload_bytes, replication=replication
            ),
        )
        for base in ALL_TOPICS
    ]


def with_suffix(topic: str, suffix: str) -> str:
    return f"{topic}.{suffix}" if suffix else topic


def base_topic(topic: str) -> str | None:
    """The one of the four topics `topic` is (exactly, or with a `.<suffix>`), else None."""
    for base in ALL_TOPICS:
        if topic == base or topic.startswith(base + "."):
            return base
    return None


def ensure_topics(
    bootstrap: str | None,
    specs: Iterable[TopicSpec] | None = None,
    *,
    strict: bool = True,
    timeout_s: float = 30.0,
    client_id: str | None = None,
    admin: Any = None,
) -> dict[str, TopicStatus]:
    """Creates the topics of `specs` that are missing; checks the ones that exist.

    Idempotent: a second call (or a concurrent one from another process) creates nothing and
    returns `created=False` for every topic. An existing topic with fewer partitions than its
    spec raises `TopicMismatchError` (a warning with `strict=False`); more partitions, or
    another replication factor, is only logged. Waits until every topic has a leader for each
    partition, so producing right after returns does not race the metadata.

    `bootstrap` defaults to `ACT_KAFKA_BOOTSTRAP`, `specs` to `default_topic_specs()`. An
    open `KafkaAdminClient` may be passed as `admin` (it is not closed).
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    specs = list(specs) if specs is not None else default_topic_specs()
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate topic names in specs: {names}")
    if not specs:
        return {}

    own_admin = admin is None
    if own_admin:
        if bootstrap is None or client_id is None:
            settings = BusSettings()
            bootstrap = bootstrap or settings.kafka_bootstrap
            client_id = client_id or f"{settings.kafka_client_id}-admin"
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            request_timeout_ms=int(timeout_s * 1000),
        )
    try:
        existing = _describe(admin, names)
        statuses: dict[str, TopicStatus] = {}
        for spec in specs:
            described = existing.get(spec.name)
            if described is None:
                try:
                    admin.create_topics(
                        [
                            NewTopic(
                                name=spec.name,
                                num_partitions=spec.partitions,
                                replication_factor=spec.replication,
                                topic_configs=dict(spec.configs),
                            )
                        ],
                        timeout_ms=int(timeout_s * 1000),
                    )
                except TopicAlreadyExistsError:
                    # Created by someone else since we looked: check it like any existing one.
                    described = _wait_ready(admin, [spec.name], timeout_s)[spec.name]
                else:
                    log.info(
                        "created topic %s (%d partitions, replication %d)",
                        spec.name,
                        spec.partitions,
                        spec.replication,
                    )
                    statuses[spec.name] = TopicStatus(
                        spec.name, True, spec.partitions, spec.replication
                    )
                    continue
            statuses[spec.name] = _check_existing(spec, described, strict=strict)
        _wait_ready(admin, names, timeout_s)
        return statuses
    finally:
        if own_admin:
            admin.close()


def _describe(admin: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """name -> metadata of the topics that exist (missing ones are left out)."""
    found: dict[str, dict[str, Any]] = {}
    for topic in admin.describe_topics(names):
        code = topic["error_code"]
        if code == _NO_ERROR:
            found[topic["topic"]] = topic
        elif code != _UNKNOWN_TOPIC_OR_PARTITION:
            from kafka.errors import for_code

            raise for_code(code)(f"describing topic {topic['topic']} failed")
    return found


def _wait_ready(admin: Any, names: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Waits until every topic exists with a leader for each of its partitions."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = _describe(admin, names)
        not_ready = [
            name
            for name in names
            if name not in found
            or not found[name]["partitions"]
            or any(p["leader"] < 0 or p["error_code"] for p in found[name]["partitions"])
        ]
        if not not_ready:
            return found
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topics not ready after {timeout_s:.0f}s: {not_ready}")
        time.sleep(0.1)


def _check_existing(spec: TopicSpec, described: dict[str, Any], *, strict: bool) -> TopicStatus:
    partitions = len(described["partitions"])
    replication = min((len(p["replicas"]) for p in described["partitions"]), default=0)
    if partitions < spec.partitions:
        message = (
            f"topic {spec.name} exists with {partitions} partitions, fewer than the "
            f"{spec.partitions} asked for; it is not altered (adding partitions remaps keys): "
            "grow it deliberately (kafka-topics.sh --alter --partitions) or ask for fewer "
            "(ACT_TOPIC_PARTITIONS)"
        )
        if strict:
            raise TopicMismatchError(message)
        log.warning(message)
    elif partitions > spec.partitions:
        log.info(
            "topic %s exists with %d partitions (spec: %d); kept",
            spec.name,
            partitions,
            spec.partitions,
        )
    if replication != spec.replication:
        log.warning(
            "topic %s exists with replication factor %d (spec: %d); kept",
            spec.name,
            replication,
            spec.replication,
        )
    return TopicStatus(spec.name, False, partitions, replication)
