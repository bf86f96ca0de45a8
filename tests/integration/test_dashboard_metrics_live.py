"""Every metric the Grafana dashboard and the alert rules query is served live by the running
pipeline: the five services as `actctl serve ...` processes (annotator and criticizer on the
instant backend, the sampler and the decision consumer on the local Kafka, the review server on
the consumer's SQLite store), started the way the images start them and waited for with the
images' health check (deploy/docker/healthcheck.sh), after items, a junk record and a review
went through."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from act.bus import BusSettings, default_topic_specs, ensure_topics
from act.bus.clients import flush_and_check, make_producer, publish
from act.client import AnnotatorClient, CriticizerClient, ServiceError
from act.data import text_schema
from act.inference.types import Item, item_to_proto
from act.review.store import ReviewStore

REPO = Path(__file__).resolve().parents[2]
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.sh"
# The health check runs `python3`, which must be this interpreter (in the images it is).
HEALTHCHECK_ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
}
N_ITEMS = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _services(
    commands: dict[str, tuple[list[str], str]], env: dict[str, str], logs: Path
) -> Iterator[None]:
    """`actctl ARGS` per name, started together and waited for with the image health check
    (their health target), SIGTERM at the end."""
    processes = {}
    try:
        for name, (args, _) in commands.items():
            with (logs / f"{name}.log").open("w") as output:
                processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "act.cli", *args], env=env, stdout=output, stderr=output
                )
        deadline = time.monotonic() + 120
        for name, (_, health) in commands.items():
            log = logs / f"{name}.log"
            while subprocess.run(
                [HEALTHCHECK, health], env=HEALTHCHECK_ENV, capture_output=True
            ).returncode:
                assert processes[name].poll() is None, f"{name} exited:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"{name} unhealthy:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
        yield
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _failing_requests(annotator: str, criticizer: str) -> None:
    """One refused request to each model service (a strategy nobody runs): error series."""
    item = Item(item_id="refused", text="a post")
    async with AnnotatorClient(annotator) as annotate, CriticizerClient(criticizer) as criticize:
        with pytest.raises(ServiceError):
            await annotate.annotate_one(item, text_schema(), "telepathy")
        annotation = await annotate.annotate_one(item, text_schema())
        with pytest.raises(ServiceError):
            await criticize.criticize_one(item, annotation, text_schema(), "telepathy")


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.mark.slow
def test_every_queried_metric_is_served_by_the_running_pipeline(
    kafka_bootstrap: str,
    tmp_path: Path,
    queried_metrics: dict[str, list[str]],
    exported_names: Callable[..., set[str]],
) -> None:
    suffix = uuid.uuid4().hex[:8]
    bus = BusSettings(kafka_bootstrap=kafka_bootstrap)
    ensure_topics(kafka_bootstrap, default_topic_specs(bus, suffix=suffix))
    database = f"sqlite:///{tmp_path / 'review.db'}"
    env = {**os.environ, "ACT_KAFKA_BOOTSTRAP": kafka_bootstrap, "ACT_LOG_FORMAT": "text"}
    ports = {name: _free_port() for name in ("a", "am", "c", "cm", "sm", "cons", "http", "grpc")}
    metrics = {
        "annotator": f"http://127.0.0.1:{ports['am']}/metrics",
        "criticizer": f"http://127.0.0.1:{ports['cm']}/metrics",
        "sampler": f"http://127.0.0.1:{ports['sm']}/metrics",
        "review-consumer": f"http://127.0.0.1:{ports['cons']}/metrics",
        "review": f"http://127.0.0.1:{ports['http']}/metrics",
    }
    commands = {
        role: (
            ["serve", role, "--backend", "instant", "--host", "127.0.0.1",
             "--port", str(ports[port]), "--metrics-port", str(ports[metrics_port])],
            f"grpc://127.0.0.1:{ports[port]}",
        )
        for role, port, metrics_port in (("annotator", "a", "am"), ("criticizer", "c", "cm"))
    }  # fmt: skip
    commands["review-consumer"] = (
        ["serve", "review-consumer", "--database-url", database, "--topic-suffix", suffix,
         "--group", f"review-{suffix}", "--schema-id", "act-moderation",
         "--metrics-port", str(ports["cons"])],
        metrics["review-consumer"],
    )  # fmt: skip
    commands["review"] = (
        ["serve", "review", "--database-url", database, "--host", "127.0.0.1",
         "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"])],
        f"http://127.0.0.1:{ports['http']}/healthz",
    )  # fmt: skip
    commands["sampler"] = (
        ["serve", "sampler", "--annotator", f"127.0.0.1:{ports['a']}",
         "--criticizer", f"127.0.0.1:{ports['c']}", "--budget-per-window", "5",
         "--window-items", "20", "--topic-suffix", suffix, "--group", f"sampler-{suffix}",
         "--transactional-id", f"sampler-{suffix}", "--metrics-port", str(ports["sm"])],
        metrics["sampler"],
    )  # fmt: skip
    with _services(commands, env, tmp_path):
        asyncio.run(_failing_requests(f"127.0.0.1:{ports['a']}", f"127.0.0.1:{ports['c']}"))
        producer = make_producer(kafka_bootstrap, settings=bus)
        futures = [
            publish(
                producer,
                f"act.items.v1.{suffix}",
                item_to_proto(Item(item_id=f"live-{i}", text=f"post {i}")),
            )
            for i in range(N_ITEMS)
        ]
        futures.append(producer.send(f"act.items.v1.{suffix}", key=b"junk", value=b"\x00junk"))
        flush_and_check(futures, producer=producer)
        producer.close()

        def stored() -> int:
            with ReviewStore(database) as store:
                return store.stats().decisions

        _wait_for(lambda: stored() == N_ITEMS, f"{N_ITEMS} decisions in the review store")
        with ReviewStore(database) as store:  # a review, so that agreement is defined
            store.add_reviewer("alice")
            [claimed] = store.claim("alice", max_items=1)
            store.submit(claimed.item_id, claimed.claim_id, "alice", "spam")
        # The consumer refreshes its lag gauge every few seconds.
        _wait_for(
            lambda: "act_review_consumer_lag" in exported_names(metrics["review-consumer"]),
            "the consumer's lag gauge",
        )
        live = {service: exported_names(url) for service, url in metrics.items()}

    served = set().union(*live.values())
    missing = {name: where for name, where in queried_metrics.items() if name not in served}
    assert not missing, f"queried but served by no running service: {missing}"
    assert "act_bus_dead_letters_total" in live["sampler"]  # the junk record
