"""Kafka transactions that never wait forever, and giving up a transactional producer cleanly.

kafka-python 2.2 (pinned) has no time limit on the three calls that end or extend a transaction:
`KafkaProducer.send_offsets_to_transaction`, `commit_transaction` and `abort_transaction` each
wait on the coordinator's answer with `TransactionalRequestResult.wait()` and no timeout (the
Java client had the same gap until KAFKA-7763). With the broker stopped or restarting that can
be a long wait, and in 2.2.21 it can be endless: the TxnOffsetCommit response handler reads
`errors.CoordinatorNotAvailableError` off a dict named `errors` on any error code (an
AttributeError inside a callback, which kafka-python logs and drops), so the result of
`send_offsets_to_transaction` is never completed. `KafkaProducer.close` has a second trap: it
flushes first, and a flush that times out raises before the network thread is stopped.

The functions here do what those methods do (the same transaction-manager calls, read from the
2.2.21 source) with a deadline, raising `TransactionTimeout` when it passes. After a timeout or
any other failure the caller asks `can_abort`: if the producer is still inside a transaction,
`abort` ends it; otherwise (a fatal error, or a commit or abort whose outcome is unknown) the
producer is given up with `close_producer` and a new one with the same `transactional.id` takes
over: its `init_transactions` fences the old one and completes or aborts whatever it left open,
so the committed offsets read after that are the truth.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kafka
from kafka import KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.producer.transaction_manager import TransactionState
from kafka.structs import OffsetAndMetadata

log = logging.getLogger(__name__)

if not kafka.__version__.startswith("2.2."):
    raise ImportError(
        f"act.bus.transactions is written against kafka-python 2.2's transaction manager; "
        f"found {kafka.__version__} (pyproject pins >=2.2,<2.3)"
    )

# States in which `abort` can end the transaction (kafka-python's transition rules).
_ABORTABLE = (TransactionState.IN_TRANSACTION, TransactionState.ABORTABLE_ERROR)


class TransactionTimeout(KafkaTimeoutError):
    """The coordinator did not answer in time; the transaction's outcome is unknown."""


def _wait(producer: KafkaProducer, result: Any, timeout_s: float, what: str) -> None:
    producer._sender.wakeup()  # what the library's own methods do next
    if not result.wait(timeout_ms=timeout_s * 1000):
        raise TransactionTimeout(
            f"{what}: no answer from the transaction coordinator in {timeout_s:g} s"
        )


def _manager(producer: KafkaProducer) -> Any:
    manager = producer._transaction_manager
    if manager is None:
        raise ValueError("the producer has no transactional_id")
    return manager


def send_offsets(
    producer: KafkaProducer,
    offsets: Mapping[TopicPartition, OffsetAndMetadata],
    group_id: str,
    timeout_s: float,
) -> None:
    """`send_offsets_to_transaction`, waiting at most `timeout_s`."""
    result = _manager(producer).send_offsets_to_transaction(dict(offsets), group_id)
    _wait(producer, result, timeout_s, "adding the offsets to the transaction")


def commit(producer: KafkaProducer, timeout_s: float) -> None:
    """`commit_transaction`, waiting at most `timeout_s` (TransactionTimeout: outcome unknown)."""
    result = _manager(producer).begin_commit()
    _wait(producer, result, timeout_s, "committing the transaction")


def abort(producer: KafkaProducer, timeout_s: float) -> None:
    """`abort_transaction`, waiting at most `timeout_s`."""
    result = _manager(producer).begin_abort()
    _wait(producer, result, timeout_s, "aborting the transaction")


def can_abort(producer: KafkaProducer) -> bool:
    """Whether `abort` can still end the open transaction (False after a fatal error, or while
    a commit or abort whose answer never came is pending)."""
    return _manager(producer)._current_state in _ABORTABLE


def close_producer(producer: KafkaProducer, timeout_s: float) -> None:
    """Closes the producer within about `timeout_s`, dropping what it could not send.

    Used when giving a producer up: its open transaction is aborted by the broker once a new
    producer with the same transactional id is initialised (or when it times out).
    """
    try:
        producer.close(timeout=timeout_s)
        return
    except KafkaError as error:  # the flush before closing timed out; the sender still runs
        log.info("producer not flushed in %g s (%s); closing it without sending", timeout_s, error)
    sender = producer._sender
    sender.force_close()  # fails the unsent batches, then the thread ends
    sender.join(timeout_s)
    try:
        producer.close(timeout=0)
    except KafkaError as error:
        log.warning("producer not closed cleanly: %s", error)
