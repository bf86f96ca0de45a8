"""Settings of the Kafka bus, from `ACT_*` environment variables.

- `ACT_KAFKA_BOOTSTRAP` (`127.0.0.1:9092`): comma-separated `host:port` list of brokers.
- `ACT_KAFKA_CLIENT_ID` (`act`): prefix of the client ids (`<id>-producer`, `<id>-consumer`,
  `<id>-admin`), as the broker's logs and quotas see them.
- `ACT_TOPIC_PARTITIONS` (3): partitions of each topic `ensure_topics` creates.
- `ACT_TOPIC_REPLICATION` (1): replication factor of those topics (3 in production);
  `min.insync.replicas` follows from it (1 for 1 or 2 replicas, else 2).
- `ACT_MAX_PAYLOAD_BYTES` (1 MiB): largest protobuf payload the codec encodes or accepts;
  larger records go to the dead-letter topic. The topics' `max.message.bytes` and the
  clients' request and fetch sizes are derived from it (see `message_limits`).
- `ACT_KAFKA_COMPRESSION` (`none`): producer compression, `none` or `gzip` (the codecs that
  need no extra package; `lz4`, `snappy`, `zstd` are accepted when their package is installed).
- `ACT_KAFKA_LINGER_MS` (5): how long the producer waits to fill a batch.
- `ACT_KAFKA_FETCH_MIN_BYTES` (1), `ACT_KAFKA_FETCH_MAX_WAIT_MS` (500): a consumer's fetch
  returns once it has this many bytes or has waited this long. Raising the minimum makes
  fewer, larger fetches under load (less CPU per record in the client and the broker) at the
  cost of up to the wait in latency when the stream is slow.
- `ACT_KAFKA_MAX_POLL_RECORDS` (100): most records one `poll` returns; small because every
  item costs model calls before the next poll.
- `ACT_KAFKA_MAX_POLL_INTERVAL_MS` (300000): longest gap between polls before the consumer is
  considered stuck and its partitions are reassigned.
- `ACT_KAFKA_SESSION_TIMEOUT_MS` (30000), `ACT_KAFKA_HEARTBEAT_INTERVAL_MS` (3000): group
  membership liveness (heartbeats run on a background thread).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
# Room for the key, the headers and the record batch framing around one payload.
RECORD_OVERHEAD_BYTES = 64 * 1024

Compression = Literal["none", "gzip", "lz4", "snappy", "zstd"]


@dataclass(frozen=True)
class MessageLimits:
    """Byte limits derived from the payload limit, kept consistent across topics and clients.

    - `payload`: largest payload the codec accepts.
    - `record`: `max.message.bytes` of the data topics: one payload with its key and headers.
    - `dead_letter_record`: `max.message.bytes` of the dead-letter topic, which wraps a whole
      rejected record (up to `record`) with its reason.
    - `fetch`: `fetch.max.bytes` of consumers (what one fetch response may carry in all).
    - `frame`: largest network frame a client accepts (kafka-python's
      `receive_message_max_bytes`, 1,000,000 by default, below its own 1 MiB partition fetch
      size): a full fetch plus one oversized batch, which the broker returns whole.
    """

    payload: int
    record: int
    dead_letter_record: int
    fetch: int
    frame: int


def message_limits(max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> MessageLimits:
    record = max_payload_bytes + RECORD_OVERHEAD_BYTES
    dead_letter_record = record + max_payload_bytes + RECORD_OVERHEAD_BYTES
    fetch = max(16 * 1024 * 1024, 4 * dead_letter_record)
    return MessageLimits(
        payload=max_payload_bytes,
        record=record,
        dead_letter_record=dead_letter_record,
        fetch=fetch,
        frame=fetch + dead_letter_record + RECORD_OVERHEAD_BYTES,
    )


class BusSettings(BaseSettings):
    """Connection and sizing of the Kafka bus; see the module docstring for the variables."""

    model_config = SettingsConfigDict(env_prefix="ACT_", extra="ignore", validate_default=True)

    kafka_bootstrap: str = Field(default="127.0.0.1:9092", min_length=1)
    kafka_client_id: str = Field(default="act", min_length=1)
    topic_partitions: int = Field(default=3, ge=1, le=10_000)
    topic_replication: int = Field(default=1, ge=1, le=32)
    max_payload_bytes: int = Field(default=DEFAULT_MAX_PAYLOAD_BYTES, ge=1024, le=64 * 1024**2)
    kafka_compression: Compression = "none"
    kafka_linger_ms: int = Field(default=5, ge=0, le=60_000)
    kafka_fetch_min_bytes: int = Field(default=1, ge=1, le=64 * 1024**2)
    kafka_fetch_max_wait_ms: int = Field(default=500, ge=0, le=30_000)
    kafka_max_poll_records: int = Field(default=100, ge=1, le=100_000)
    kafka_max_poll_interval_ms: int = Field(default=300_000, ge=1_000)
    kafka_session_timeout_ms: int = Field(default=30_000, ge=1_000)
    kafka_heartbeat_interval_ms: int = Field(default=3_000, ge=100)

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> BusSettings:
        if self.kafka_heartbeat_interval_ms * 3 > self.kafka_session_timeout_ms:
            raise ValueError(
                "ACT_KAFKA_HEARTBEAT_INTERVAL_MS must be at most a third of "
                f"ACT_KAFKA_SESSION_TIMEOUT_MS ({self.kafka_heartbeat_interval_ms} * 3 > "
                f"{self.kafka_session_timeout_ms})"
            )
        return self

    @model_validator(mode="after")
    def _fetch_wait_below_request_timeout(self) -> BusSettings:
        if self.kafka_fetch_max_wait_ms >= self.consumer_request_timeout_ms:
            raise ValueError(
                f"ACT_KAFKA_FETCH_MAX_WAIT_MS ({self.kafka_fetch_max_wait_ms}) must be below the "
                f"consumers' request timeout ({self.consumer_request_timeout_ms} ms: the longer "
                "of the poll interval and the session timeout, plus 5 s)"
            )
        return self

    @property
    def consumer_request_timeout_ms(self) -> int:
        """Above the poll interval: the broker may hold a JoinGroup request that long (the
        rebalance timeout) and kafka-python sends it with the plain request timeout."""
        return max(self.kafka_max_poll_interval_ms, self.kafka_session_timeout_ms) + 5_000

    @property
    def limits(self) -> MessageLimits:
        return message_limits(self.max_payload_bytes)
