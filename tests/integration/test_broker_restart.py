"""The broker stopped (SIGTERM) and restarted in the middle of a stream: the sampler and the
decision consumer, as processes (`actctl serve sampler`, `actctl serve review-consumer`), carry
on by themselves, and afterwards every item has exactly one record in PostgreSQL, with the delta
(and pi, eps, window) a clean run draws, and no window over its cap.

The shared broker of deploy/local serves the other tests at the same time, so this test starts a
broker of its own with `deploy/local/kafka.sh` (other ports, a state dir in the test's tmp dir;
the jars that `kafka.sh fetch` brought for the shared one) and stops only that one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_sampler_stream import clean_run_decisions, same_draw

from act.bus import BusSettings, default_topic_specs, ensure_topics
from act.bus.clients import flush_and_check, make_producer, publish
from act.core.sampling import PacerConfig
from act.inference.types import Item, item_to_proto
from act.sampler.policy import SamplingPolicy

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "deploy" / "local" / "kafka.sh"
SEED = "broker-restart"
PARTITIONS = 3
BUDGET_PER_WINDOW = 60
WINDOW_ITEMS = 300
BEFORE_STOP = 6000  # items produced before the broker is stopped
AFTER_RESTART = 2000  # items produced once it is back
STOP_AFTER_STORED = 800  # stop the broker once this many records are stored
POLICY = SamplingPolicy(
    mode="stream",
    seed=SEED,
    partitions=PARTITIONS,
    pacer=PacerConfig(budget_per_window=BUDGET_PER_WINDOW, window_items=WINDOW_ITEMS),
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class OwnBroker:
    """A broker of this test's own, driven by deploy/local/kafka.sh."""

    env: dict[str, str]
    port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, command: str) -> None:
        done = subprocess.run(
            [str(KAFKA_SH), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kafka.sh {command} failed:\n{done.stderr[-4000:]}")

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        """SIGTERM, then waits for the broker's clean exit (SIGKILL after a bound)."""
        self._run("stop")


@pytest.fixture
def own_broker(kafka_bootstrap: str, tmp_path: Path) -> Iterator[OwnBroker]:
    """A second broker on free ports, stopped and deleted after the test even when it fails.

    Asks for `kafka_bootstrap` so that it runs where the local services (and their jars) are
    set up, and fails under CI when they are not.
    """
    state = tmp_path / "kafka"
    broker = OwnBroker(
        env={
            **os.environ,
            "ACT_KAFKA_STATE_DIR": str(state),
            "ACT_KAFKA_PORT": str(_free_port()),
            "ACT_KAFKA_CONTROLLER_PORT": str(_free_port()),
        },
        port=0,
    )
    broker.port = int(broker.env["ACT_KAFKA_PORT"])
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(state, ignore_errors=True)


def _produce(bootstrap: str, suffix: str, first: int, count: int) -> list[str]:
    producer = make_producer(bootstrap, settings=BusSettings(kafka_bootstrap=bootstrap))
    ids = [f"item-{i:05d}" for i in range(first, first + count)]
    futures = [
        publish(
            producer,
            f"act.items.v1.{suffix}",
            item_to_proto(Item(item_id=item_id, text=f"message {item_id} ({suffix})")),
        )
        for item_id in ids
    ]
    flush_and_check(futures, producer=producer, timeout_s=120)
    producer.close()
    return ids


def _rows(url: str) -> list[Any]:
    import sqlalchemy as sa

    from act.review import ReviewStore
    from act.review.tables import records

    c = records.c
    with ReviewStore(url, migrate=False, pool_size=1) as store, store.engine.connect() as conn:
        return list(conn.execute(sa.select(c.item_id, c.eps, c.pi, c.delta, c.capped, c.window_id)))


def _stored(url: str) -> int:
    from act.review import ReviewStore

    with ReviewStore(url, migrate=False, pool_size=1) as store:
        return store.stats().decisions


def _wait_for(what: str, timeout_s: float, condition: Any, processes: list[Any]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        dead = [p.args[4] for p in processes if p.poll() is not None]
        if dead:
            raise AssertionError(f"{', '.join(dead)} exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def test_broker_stopped_and_restarted_mid_stream_loses_and_duplicates_nothing(
    own_broker: OwnBroker, fresh_database: str, tmp_path: Path
) -> None:
    from act.review import ReviewStore

    database = fresh_database
    suffix = uuid.uuid4().hex[:8]
    bootstrap = own_broker.bootstrap
    env = {
        **os.environ,
        "ACT_KAFKA_BOOTSTRAP": bootstrap,
        "ACT_TOPIC_PARTITIONS": str(PARTITIONS),
        "ACT_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "ACT_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "ACT_KAFKA_MAX_POLL_RECORDS": "200",
    }
    ensure_topics(
        bootstrap,
        default_topic_specs(
            BusSettings(kafka_bootstrap=bootstrap), partitions=PARTITIONS, suffix=suffix
        ),
    )
    ReviewStore(database).close()  # migrated before the consumer starts
    ids = _produce(bootstrap, suffix, 0, BEFORE_STOP)
    actctl = [sys.executable, "-m", "act.cli", "serve"]
    commands = {
        "sampler": [
            *actctl, "sampler", "--backend", "instant", "--seed", SEED,
            "--budget-per-window", str(BUDGET_PER_WINDOW), "--window-items", str(WINDOW_ITEMS),
            "--partitions", str(PARTITIONS), "--topic-suffix", suffix,
            "--group", f"sampler-{suffix}", "--transactional-id", f"sampler-{suffix}",
            "--transaction-timeout", "10", "--log-level", "WARNING",
        ],
        "review-consumer": [
            *actctl, "review-consumer", "--database-url", database, "--topic-suffix", suffix,
            "--group", f"review-{suffix}", "--schema-id", "act-moderation",
        ],
    }  # fmt: skip
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in commands}
    processes = [
        subprocess.Popen(command, env=env, stdout=logs[name], stderr=subprocess.STDOUT)
        for name, command in commands.items()
    ]
    try:
        _wait_for(
            f"{STOP_AFTER_STORED} records",
            120,
            lambda: _stored(database) >= STOP_AFTER_STORED,
            processes,
        )
        stopping = time.monotonic()
        own_broker.stop()
        stored_at_stop = _stored(database)
        assert stored_at_stop < BEFORE_STOP, "the stream was over before the broker stopped"
        time.sleep(3)  # the broker stays away a while
        own_broker.start()
        restarted = time.monotonic()
        ids += _produce(bootstrap, suffix, BEFORE_STOP, AFTER_RESTART)
        total = BEFORE_STOP + AFTER_RESTART
        _wait_for(f"{total} records", 180, lambda: _stored(database) >= total, processes)
        finished = time.monotonic()
        for process in processes:
            process.send_signal(signal.SIGTERM)
        assert [process.wait(timeout=60) for process in processes] == [0, 0]
    except BaseException:
        for name, log in logs.items():
            log.flush()
            print(
                f"---- {name} (last lines)\n"
                + "".join((tmp_path / f"{name}.log").open().readlines()[-40:])
            )
        raise
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        for log in logs.values():
            log.close()

    rows = _rows(database)
    stored_ids = [row.item_id for row in rows]
    assert len(stored_ids) == len(set(stored_ids)) == len(ids)  # one record per item
    assert set(stored_ids) == set(ids)
    clean = clean_run_decisions(bootstrap, f"act.items.v1.{suffix}", POLICY)
    differing = [row.item_id for row in rows if not same_draw(row, clean[row.item_id])]
    assert not differing, f"{len(differing)} decisions differ from a clean run: {differing[:5]}"
    spent: dict[str, int] = {}
    for row in rows:
        spent[row.window_id] = spent.get(row.window_id, 0) + int(row.delta)
    assert max(spent.values()) <= BUDGET_PER_WINDOW // PARTITIONS
    assert sum(spent.values()) > 0, "the pacer selected nothing"
    print(
        f"\nbroker stopped with {stored_at_stop} of {BEFORE_STOP} records stored, back after "
        f"{restarted - stopping:.0f} s; {finished - restarted:.0f} s later all {len(ids)} were "
        "stored once, each with the clean run's draw"
    )
