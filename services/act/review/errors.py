"""Typed errors of the review store, each with a message that says what is wrong and what to do.

Every error carries `code`, the gRPC status name a service should answer with, so that the
review-queue service maps them without a table of its own.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ReviewStoreError(Exception):
    """Base class of the review store's errors."""

    code: ClassVar[str] = "INTERNAL"


class InvalidArgument(ReviewStoreError, ValueError):
    """An argument is malformed (empty reviewer, negative lease, ...)."""

    code = "INVALID_ARGUMENT"


class InvalidDecision(InvalidArgument):
    """A decision cannot be stored as it is (missing label, pi outside [0, 1], ...)."""

    def __init__(self, item_id: str, reason: str) -> None:
        self.item_id = item_id
        self.reason = reason
        super().__init__(f"invalid decision for item {item_id!r}: {reason}")


class InvalidLabel(InvalidArgument):
    """A review's label is not one of the record's schema labels."""

    def __init__(
        self, item_id: str, label: str, allowed: tuple[str, ...], detail: str = ""
    ) -> None:
        self.item_id = item_id
        self.label = label
        self.allowed = allowed
        message = detail or (
            f"label {label!r} is not a label of item {item_id!r}'s schema; "
            f"allowed: {', '.join(allowed)}"
        )
        super().__init__(message)


class UnknownItem(ReviewStoreError, LookupError):
    """No record has this item id."""

    code = "NOT_FOUND"

    def __init__(self, item_id: str) -> None:
        self.item_id = item_id
        super().__init__(f"no record for item {item_id!r}")


class UnknownSchema(ReviewStoreError, LookupError):
    """The label set of a record's schema is not known, so a label cannot be checked."""

    code = "FAILED_PRECONDITION"

    def __init__(self, schema_id: str, version: int) -> None:
        self.schema_id = schema_id
        self.version = version
        super().__init__(
            f"the labels of schema {schema_id!r} version {version} are not known: register it "
            "with ReviewStore.register_schema() or pass labels= to submit()"
        )


class UnknownReviewer(ReviewStoreError, LookupError):
    """No reviewer has this name."""

    code = "NOT_FOUND"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no reviewer named {name!r}")


class NotQueued(ReviewStoreError):
    """The item was not drawn for review (delta = 0), so it cannot be claimed or reviewed."""

    code = "FAILED_PRECONDITION"

    def __init__(self, item_id: str, capped: bool) -> None:
        self.item_id = item_id
        why = "the pacer's hard cap was reached (pi = 0)" if capped else "delta = 0"
        super().__init__(
            f"item {item_id!r} was not drawn for review ({why}); reviewing it would bias the "
            "ACT estimator"
        )


class ClaimError(ReviewStoreError):
    """A claim does not entitle the caller to submit or release the item."""

    code = "FAILED_PRECONDITION"


class ClaimRequired(ClaimError):
    """A first review needs the claim returned by claim()."""

    def __init__(self, item_id: str) -> None:
        self.item_id = item_id
        super().__init__(
            f"item {item_id!r} has not been reviewed yet: claim it first and submit with the "
            "claim id"
        )


class ClaimNotFound(ClaimError):
    """The claim id is not the item's current claim (released, taken over, or never issued)."""

    def __init__(self, item_id: str, claim_id: str, detail: str = "") -> None:
        self.item_id = item_id
        self.claim_id = claim_id
        super().__init__(
            f"claim {claim_id!r} is not the current claim of item {item_id!r}"
            + (f": {detail}" if detail else "")
        )


class ClaimNotYours(ClaimError):
    """The claim belongs to another reviewer."""

    code = "PERMISSION_DENIED"

    def __init__(self, item_id: str, reviewer: str) -> None:
        self.item_id = item_id
        self.reviewer = reviewer
        super().__init__(f"item {item_id!r} is not claimed by reviewer {reviewer!r}")


class ClaimExpired(ClaimError):
    """The claim's lease ran out; the item went back to the queue."""

    def __init__(self, item_id: str, expired_at: Any) -> None:
        self.item_id = item_id
        self.expired_at = expired_at
        super().__init__(
            f"the claim on item {item_id!r} expired at {expired_at.isoformat()}; the item is back "
            "in the queue: claim it again"
        )


class Conflict(ReviewStoreError):
    """The operation conflicts with the stored state (optimistic concurrency, replays, ...)."""

    code = "ABORTED"


class RevisionConflict(Conflict):
    """A correction named a revision that is not the item's current one."""

    def __init__(self, item_id: str, expected: int | None, actual: int) -> None:
        self.item_id = item_id
        self.expected = expected
        self.actual = actual
        if expected is None:
            message = (
                f"item {item_id!r} is already reviewed (revision {actual}): a correction must "
                f"pass expected_revision={actual}"
            )
        else:
            message = (
                f"item {item_id!r} is at revision {actual}, not {expected}: someone else changed "
                "it; reload and retry"
            )
        super().__init__(message)


class DecisionConflict(Conflict):
    """A decision for an item already stored differs from the stored one; the first one wins."""

    def __init__(self, item_id: str, differences: dict[str, tuple[Any, Any]]) -> None:
        self.item_id = item_id
        self.differences = differences
        shown = "; ".join(
            f"{field}: stored {old!r}, received {new!r}"
            for field, (old, new) in sorted(differences.items())
        )
        super().__init__(
            f"a different decision for item {item_id!r} is already stored and was kept "
            f"({shown or 'same fields, different fingerprint'})"
        )


class ReviewerExists(Conflict):
    """A reviewer with this name already exists."""

    code = "ALREADY_EXISTS"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"reviewer {name!r} already exists; use rotate_token() to issue a new token"
        )


class SchemaVersionError(ReviewStoreError):
    """The database's schema is newer than this code knows, or a migration failed."""

    code = "FAILED_PRECONDITION"
