"""`actctl up` / `ingest` / `down` as a user runs them, against the running broker and PostgreSQL.

The whole path: up (reusing the broker and the database, instant backends: the embedded models
need minutes for 1,000 items on two shared cores), ingest 1,000 items from JSONL, every decision
stored, a reviewer labels one item through the HTTP API with the token `up` printed, export
writes 1,000 rows with that label, and down leaves no process of the run alive (checked with
`ps`, not with the code under test), also when one service died before. Own topics (a random
suffix) and its own database.

Two tests need no services: `down` kills what ignores SIGTERM, children included; and `up`
without a reachable broker says so and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

N_ITEMS = 1000


def _actctl(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "act.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (session id, state) of every process, from ps."""
    out = subprocess.run(
        ["ps", "-e", "-o", "pid=,sid=,stat="], capture_output=True, text=True, check=True
    ).stdout
    table = {}
    for line in out.splitlines():
        pid, sid, stat = line.split()[:3]
        table[int(pid)] = (int(sid), stat)
    return table


def _left_alive(pids: list[int]) -> list[int]:
    """The processes of these sessions (each service leads one) that still run."""
    return [
        pid
        for pid, (sid, stat) in _processes().items()
        if (pid in pids or sid in pids) and not stat.startswith("Z")
    ]


def test_up_ingest_review_export_down_leaves_nothing_running(
    kafka_bootstrap: str,
    fresh_database: str,
    tmp_path: Path,
    post_as_reviewer: Callable[..., dict[str, Any]],
) -> None:
    import pyarrow.parquet as pq

    from act.review.store import ReviewStore

    suffix = uuid.uuid4().hex[:8]
    state = tmp_path / "state"
    env = {**os.environ, "ACT_KAFKA_BOOTSTRAP": kafka_bootstrap}
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    up = _actctl(
        "up", "--state-dir", str(state), "--backend", "instant",
        "--database-url", fresh_database, "--topic-suffix", suffix,
        "--reviewer", "tester", "--timeout", "120", "--json",
        env=env,
    )  # fmt: skip
    timings["up"] = time.perf_counter() - clock
    try:
        assert up.returncode == 0, up.stderr
        summary = json.loads(up.stdout)
        pids = [service["pid"] for service in summary["services"]]
        assert {s["name"] for s in summary["services"]} == {
            "annotator", "criticizer", "sampler", "review", "review-consumer"
        }  # fmt: skip
        assert [(p["name"], p["started_by_up"]) for p in summary["stack"]] == [
            ("kafka", False),
            ("postgres", False),
        ]
        assert all(Path(service["log"]).is_file() for service in summary["services"])
        again = _actctl("up", "--state-dir", str(state), env=env)
        assert again.returncode == 0 and "already up" in again.stderr, again.stderr

        source = tmp_path / "items.jsonl"
        source.write_text(
            "".join(
                json.dumps({"id": f"it-{i:04d}", "text": f"message {i} for the local system"})
                + "\n"
                for i in range(N_ITEMS)
            )
        )
        clock = time.perf_counter()
        ingest = _actctl("ingest", str(source), "--state-dir", str(state), env=env)
        timings["ingest"] = time.perf_counter() - clock
        assert ingest.returncode == 0, ingest.stderr
        assert f"sent {N_ITEMS} items to act.items.v1.{suffix}" in ingest.stdout

        clock = time.perf_counter()
        with ReviewStore(fresh_database, pool_size=1) as store:
            while (stored := store.stats().decisions) < N_ITEMS:
                dead = set(pids) - set(_left_alive(pids))
                waited = time.perf_counter() - clock
                if dead or waited > 90:
                    logs = {
                        s["name"]: Path(s["log"]).read_text()[-3000:] for s in summary["services"]
                    }
                    pytest.fail(f"{stored} decisions after {waited:.0f} s; exited: {dead}; {logs}")
                time.sleep(0.5)
            assert stored == N_ITEMS
        timings["decisions"] = time.perf_counter() - clock

        token, api = summary["token"], summary["review_url"] + "api"
        claimed = post_as_reviewer(f"{api}/claim", token, {"max_items": 1})["items"]
        assert len(claimed) == 1
        item = claimed[0]
        label = item["schema"]["labels"][-1]["name"]
        review = post_as_reviewer(
            f"{api}/items/{item['item_id']}/review",
            token,
            {"claim_id": item["claim_id"], "label": label},
        )["review"]
        assert (review["reviewer"], review["label"]) == ("tester", label)

        export = tmp_path / "dataset.parquet"
        exported = _actctl("export", str(export), "--database-url", fresh_database, env=env)
        assert exported.returncode == 0, exported.stderr
        table = pq.read_table(export).to_pylist()
        assert len(table) == N_ITEMS
        assert {row["item_id"] for row in table} == {f"it-{i:04d}" for i in range(N_ITEMS)}
        labelled = [row for row in table if row["human_label"] is not None]
        assert [(r["item_id"], r["human_label"], r["reviewer"]) for r in labelled] == [
            (item["item_id"], label, "tester")
        ]
        assert sorted(set(_left_alive(pids)) & set(pids)) == sorted(pids)  # all ran until down
        # A service that died on its own: status says so, and down still cleans up.
        consumer = next(s["pid"] for s in summary["services"] if s["name"] == "review-consumer")
        os.kill(consumer, signal.SIGKILL)
        status = _actctl("status", "--state-dir", str(state), env=env)
        assert status.returncode == 3 and "exited" in status.stdout, status.stdout
    finally:
        clock = time.perf_counter()
        down = _actctl("down", "--state-dir", str(state), env=env)
        timings["down"] = time.perf_counter() - clock
    assert down.returncode == 0, down.stderr
    assert "review-consumer: not running" in down.stderr
    assert "kafka: left running" in down.stderr and "postgres: left running" in down.stderr
    assert _left_alive(pids) == []
    assert not (state / "run.json").exists()
    print("\n" + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in timings.items()))


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def test_down_kills_a_service_that_ignores_sigterm_and_its_child(tmp_path: Path) -> None:
    from act.local import processes, state

    log = tmp_path / "state" / "logs" / "stubborn.log"
    started = processes.start_detached([sys.executable, "-c", STUBBORN], log)
    deadline = time.monotonic() + 30
    while not log.read_text().strip():
        assert time.monotonic() < deadline, "the stubborn service did not start its child"
        time.sleep(0.05)
    child = int(log.read_text().split()[0])
    run = state.LocalRun(
        state_dir=str(tmp_path / "state"),
        services=[
            state.ServiceProcess(
                name="stubborn",
                command=[],
                pid=started.pid,
                start_ticks=started.start_ticks,
                log=str(log),
            )
        ],
    )
    state.save(run)
    assert sorted(_left_alive([started.pid])) == sorted([started.pid, child])

    down = _actctl("down", "--state-dir", str(tmp_path / "state"), "--timeout", "1")

    assert down.returncode == 0, down.stderr
    assert "stubborn: killed" in down.stderr and "1 leftover process(es) killed" in down.stderr
    assert _left_alive([started.pid]) == []


def test_up_refuses_a_budget_the_partitions_cannot_share_before_starting_anything(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "ACT_TOPIC_PARTITIONS": "3"}
    up = _actctl(
        "up", "--state-dir", str(tmp_path / "state"), "--kafka-bootstrap", "192.0.2.1:9092",
        "--backend", "instant", "--budget-per-window", "2", env=env,
    )  # fmt: skip
    assert up.returncode == 2
    assert "split over 3 partitions leaves 0.667 per partition window" in up.stderr
    assert not (tmp_path / "state").exists()


def test_up_without_a_reachable_broker_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    # 192.0.2.0/24 is reserved for documentation: nothing answers there, and it is not a
    # loopback address, so up must not try to start a broker for it.
    up = _actctl(
        "up", "--state-dir", str(tmp_path / "state"), "--kafka-bootstrap", "192.0.2.1:9092",
        "--backend", "instant",
    )  # fmt: skip
    assert up.returncode == 1
    assert "no Kafka broker answers at 192.0.2.1:9092" in up.stderr
    assert not (tmp_path / "state" / "run.json").exists()
