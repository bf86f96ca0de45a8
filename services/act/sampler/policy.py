"""Review decisions for one partition of the item stream, deterministic under replay.

A `PartitionSampler` turns scored items (item, annotation, criticism) into decisions with
the core's formulas only:

- ``stream`` mode: a `StreamPacer` per partition (budget per window or reviewer capacity
  per hour, split across partitions by `PacerConfig.partition_share`) decides item by
  item; its state is part of the sampler state, saved with the committed offsets, so a
  restart continues the pacing.
- ``batch`` mode: micro-batches of exactly `batch_items` consecutive items of the
  partition (boundaries fixed by offsets, never by time) get pi from a budget transform
  with budget `review_fraction * batch_items`, and delta from the keyed sampler.

Given the same items in the same partition order and the same restored state, the
decisions are identical: a replay after a crash draws the same delta as a clean run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field, model_validator

from act.core.sampling import PacerConfig, PacerState, StreamPacer, draw
from act.core.transforms import TransformSpec
from act.inference.types import (
    Annotation,
    Criticism,
    Item,
    annotation_to_proto,
    criticism_to_proto,
    item_to_proto,
)
from act.v1 import bus_pb2


class SamplingPolicy(BaseModel):
    """How review decisions are made (recorded on every decision as transform/budget ids)."""

    model_config = ConfigDict(frozen=True)

    mode: Literal["stream", "batch"] = "stream"
    seed: str = Field(default="act", min_length=1)
    partitions: int = Field(default=1, ge=1)
    # stream mode: the pacer for the whole stream; each partition gets an equal share.
    pacer: PacerConfig | None = None
    # batch mode
    batch_items: int = Field(default=256, ge=1)
    review_fraction: float = Field(default=0.1, gt=0, le=1)
    transform: TransformSpec = TransformSpec()
    draw_method: Literal["systematic", "bernoulli"] = "systematic"
    embed_items: bool = True

    @model_validator(mode="after")
    def _mode_settings(self) -> SamplingPolicy:
        if self.mode == "stream":
            if self.pacer is None:
                raise ValueError("stream mode needs a pacer configuration (budget per window)")
            self.partition_pacer()  # a share under one review per window fails here
        return self

    @property
    def seed_id(self) -> str:
        """Identifies the seed on decisions without revealing it."""
        return hashlib.sha256(self.seed.encode()).hexdigest()[:12]

    def partition_pacer(self) -> PacerConfig:
        """The pacer of one partition: its share of the stream's (`PacerConfig.partition_share`),
        with the policy's seed."""
        assert self.pacer is not None
        return self.pacer.partition_share(self.partitions).model_copy(update={"seed": self.seed})

    @property
    def budget_id(self) -> str:
        if self.mode == "stream":
            pacer = self.partition_pacer()
            window = (
                f"{pacer.window_items}items"
                if pacer.window_items is not None
                else f"{pacer.window_seconds:g}s"
            )
            return f"stream:cap{pacer.hard_cap}/{window}/partition"
        return f"batch:{self.review_fraction:g}x{self.batch_items}"

    @property
    def transform_id(self) -> str:
        if self.mode == "stream":
            return f"pacer(p_cap={self.pacer.cap_probability},audit={self.pacer.audit_share})"  # type: ignore[union-attr]
        return self.transform.id


@dataclass(frozen=True)
class ScoredItem:
    """An item of the stream with its annotation and criticism, and where it came from."""

    item: Item
    annotation: Annotation
    criticism: Criticism
    offset: int
    event_time: float


class SamplerState(BaseModel):
    """What a partition's sampler must remember across restarts (saved with the offsets)."""

    partition: int
    next_offset: int = 0
    batches_done: int = 0
    pacer: PacerState | None = None


class PartitionSampler:
    """Decisions for one partition; see the module docstring."""

    def __init__(
        self, policy: SamplingPolicy, partition: int, state: SamplerState | None = None
    ) -> None:
        self.policy = policy
        self.partition = partition
        self._state = state or SamplerState(partition=partition)
        if self._state.partition != partition:
            raise ValueError(
                f"saved state is for partition {self._state.partition}, not {partition}"
            )
        self._pacer = (
            StreamPacer(policy.partition_pacer(), self._state.pacer)
            if policy.mode == "stream"
            else None
        )
        self._pending: list[ScoredItem] = []
        # The policy's ids, the same on every decision: computed once.
        self._sampler_name = policy.mode if policy.mode == "stream" else policy.draw_method
        self._transform_id = policy.transform_id
        self._budget_id = policy.budget_id
        self._seed_id = policy.seed_id

    def state(self) -> SamplerState:
        """The state to save once every decision so far is durable (pending items excluded)."""
        snapshot = self._state.model_copy()
        if self._pacer is not None:
            snapshot.pacer = self._pacer.state()
        return snapshot

    @property
    def pending(self) -> int:
        """Items received but not decided yet (batch mode waits for a full micro-batch)."""
        return len(self._pending)

    def offer(
        self, scored: list[ScoredItem], *, decided_time: Timestamp | None = None
    ) -> list[bus_pb2.Decision]:
        """Decisions for whatever the new items complete, in partition order.

        `decided_time` stamps them all (default: now, read once for the call).
        """
        if decided_time is None:
            decided_time = Timestamp()
            decided_time.GetCurrentTime()
        if self._pacer is not None:
            return self._decide_stream(scored, decided_time)
        self._pending.extend(scored)
        decisions: list[bus_pb2.Decision] = []
        size = self.policy.batch_items
        while len(self._pending) >= size:
            batch, self._pending = self._pending[:size], self._pending[size:]
            decisions.extend(self._decide_batch(batch, decided_time))
        return decisions

    def _decide_stream(
        self, scored: list[ScoredItem], decided_time: Timestamp
    ) -> list[bus_pb2.Decision]:
        assert self._pacer is not None
        outcomes = self._pacer.decide_many(
            [entry.item.item_id for entry in scored],
            [entry.criticism.error_probability for entry in scored],
            [entry.event_time for entry in scored],
        )
        if scored:
            self._state.next_offset = scored[-1].offset + 1
        return [
            self._decision(
                entry,
                pi=outcome.pi,
                delta=outcome.delta,
                capped=outcome.capped,
                audit=outcome.audit,
                window_id=f"p{self.partition}-w{outcome.window}",
                decided_time=decided_time,
            )
            for entry, outcome in zip(scored, outcomes, strict=True)
        ]

    def _decide_batch(
        self, batch: list[ScoredItem], decided_time: Timestamp
    ) -> list[bus_pb2.Decision]:
        policy = self.policy
        eps = np.array([entry.criticism.error_probability for entry in batch])
        pi = policy.transform.apply(eps, policy.review_fraction * len(batch))
        ids = [entry.item.item_id for entry in batch]
        delta = draw(pi, ids, policy.seed, policy.draw_method)
        window_id = f"p{self.partition}-b{self._state.batches_done}"
        self._state.batches_done += 1
        self._state.next_offset = batch[-1].offset + 1
        return [
            self._decision(
                entry,
                pi=float(p),
                delta=bool(d),
                capped=False,
                audit=False,
                window_id=window_id,
                decided_time=decided_time,
            )
            for entry, p, d in zip(batch, pi, delta, strict=True)
        ]

    def _decision(
        self,
        entry: ScoredItem,
        *,
        pi: float,
        delta: bool,
        capped: bool,
        audit: bool,
        window_id: str,
        decided_time: Timestamp,
    ) -> bus_pb2.Decision:
        # Built in place: the sub-messages are filled inside the decision, not copied into it.
        decision = bus_pb2.Decision(
            item_id=entry.item.item_id,
            eps=entry.criticism.error_probability,
            pi=pi,
            delta=delta,
            sampler=self._sampler_name,
            transform_id=self._transform_id,
            budget_id=self._budget_id,
            seed_id=self._seed_id,
            capped=capped,
            audit=audit,
            window_id=window_id,
            content_ref=f"sha256:{entry.item.content_hash()}",
        )
        annotation_to_proto(entry.annotation, decision.annotation)
        criticism_to_proto(entry.criticism, decision.criticism)
        decision.decided_time.CopyFrom(decided_time)
        if self.policy.embed_items:
            item_to_proto(entry.item, decision.item)
        return decision
