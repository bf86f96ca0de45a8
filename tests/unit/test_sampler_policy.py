"""Per-partition review decisions: budget respected, and a restart replays the same deltas."""

from __future__ import annotations

import asyncio

import pytest

from act.core.sampling import PacerConfig, keyed_uniform
from act.core.transforms import TransformSpec
from act.data import text_schema
from act.inference.instant import InstantBackend
from act.inference.types import Annotation, Criticism, Item
from act.sampler.policy import PartitionSampler, SamplerState, SamplingPolicy, ScoredItem

SCHEMA = text_schema()


def _scored(n_items: int, start: int = 0) -> list[ScoredItem]:
    backend = InstantBackend()
    items = [Item(item_id=f"item-{i}", text=f"message {i}") for i in range(start, start + n_items)]
    annotations = asyncio.run(backend.annotate(items, SCHEMA, "direct"))
    pairs = list(zip(items, annotations, strict=True))
    criticisms = asyncio.run(backend.criticize(pairs, SCHEMA, "direct"))
    scored = []
    for offset, (item, annotation, criticism) in enumerate(
        zip(items, annotations, criticisms, strict=True), start=start
    ):
        assert isinstance(annotation, Annotation) and isinstance(criticism, Criticism)
        scored.append(ScoredItem(item, annotation, criticism, offset, 1_800_000_000 + offset))
    return scored


STREAM = SamplingPolicy(
    mode="stream",
    seed="policy-test",
    partitions=2,
    pacer=PacerConfig(budget_per_window=40, window_items=200),
)
BATCH = SamplingPolicy(
    mode="batch",
    seed="policy-test",
    batch_items=100,
    review_fraction=0.1,
    transform=TransformSpec(method="exp"),
)


def _key(decisions: list) -> list[tuple[str, float, bool]]:
    return [(d.item_id, d.pi, d.delta) for d in decisions]


def test_stream_mode_respects_the_partition_cap_and_draws_the_keyed_delta() -> None:
    sampler = PartitionSampler(STREAM, partition=0)
    decisions = sampler.offer(_scored(2000))
    per_window: dict[str, int] = {}
    for decision in decisions:
        per_window[decision.window_id] = per_window.get(decision.window_id, 0) + decision.delta
        u = keyed_uniform([decision.item_id], "policy-test")[0]
        assert decision.delta == (u < decision.pi)
    # 40 per 200 items shared by 2 partitions: 20 per 100 items of each
    assert max(per_window.values()) <= 20
    assert len(per_window) == 20
    assert sampler.state().next_offset == 2000


def test_stream_mode_restart_from_saved_state_replays_identical_decisions() -> None:
    scored = _scored(1500)
    clean = PartitionSampler(STREAM, partition=1).offer(scored)
    first = PartitionSampler(STREAM, partition=1)
    before = first.offer(scored[:700])
    saved = first.state().model_dump_json()
    restarted = PartitionSampler(STREAM, 1, SamplerState.model_validate_json(saved))
    after = restarted.offer(scored[700:])
    assert _key(before + after) == _key(clean)


def test_stream_mode_decisions_do_not_depend_on_how_the_stream_is_polled() -> None:
    scored = _scored(900)
    whole = PartitionSampler(STREAM, partition=0)
    clean = whole.offer(scored)
    polled_sampler = PartitionSampler(STREAM, partition=0)
    polled = []
    for start, end in [(0, 1), (1, 1), (1, 250), (250, 251), (251, 900)]:
        polled += polled_sampler.offer(scored[start:end])
        assert polled_sampler.state().next_offset == end  # an empty poll keeps the offset
    assert _key(polled) == _key(clean)
    assert [d.window_id for d in polled] == [d.window_id for d in clean]
    assert polled_sampler.state() == whole.state()


def test_batch_mode_spends_the_exact_budget_per_micro_batch_and_waits_for_full_batches() -> None:
    sampler = PartitionSampler(BATCH, partition=0)
    decisions = sampler.offer(_scored(250))
    assert len(decisions) == 200 and sampler.pending == 50
    assert sampler.state().next_offset == 200  # the partial batch is not committable
    for start in (0, 100):
        window = decisions[start : start + 100]
        assert sum(d.delta for d in window) == 10
        assert sum(d.pi for d in window) == pytest.approx(10.0)
    assert {d.window_id for d in decisions} == {"p0-b0", "p0-b1"}


def test_batch_mode_replay_from_the_committed_offset_matches_a_clean_run() -> None:
    scored = _scored(400)
    clean = PartitionSampler(BATCH, partition=0).offer(scored)
    first = PartitionSampler(BATCH, partition=0)
    before = first.offer(scored[:250])  # crash with 50 items pending
    state = first.state()
    restarted = PartitionSampler(BATCH, 0, state)
    after = restarted.offer(scored[state.next_offset :])
    assert _key(before + after) == _key(clean)


def test_decisions_carry_ids_versions_and_the_item_but_not_the_seed() -> None:
    [decision] = PartitionSampler(STREAM, partition=0).offer(_scored(1))
    assert decision.item_id == "item-0" and decision.item.item_id == "item-0"
    assert decision.eps == decision.criticism.error_probability
    assert decision.annotation.model.backend == "instant"
    assert decision.annotation.prompt.strategy_id == "direct"
    assert decision.budget_id == "stream:cap20/100items/partition"  # 40 per 200, 2 partitions
    assert decision.content_ref.startswith("sha256:")
    assert "policy-test" not in decision.seed_id and len(decision.seed_id) == 12


def test_bad_policies_and_states_are_refused() -> None:
    with pytest.raises(ValueError, match="pacer"):
        SamplingPolicy(mode="stream")
    with pytest.raises(ValueError, match="split over 3 partitions"):
        SamplingPolicy(partitions=3, pacer=PacerConfig(budget_per_window=2, window_items=100))
    with pytest.raises(ValueError, match="partition 3"):
        PartitionSampler(STREAM, 0, SamplerState(partition=3))
