"""`actctl serve sampler`: the sampler service from the command line.

    actctl serve sampler --backend instant --budget-per-window 60 --window-items 300
    actctl serve sampler --annotator annotator:50051 --criticizer criticizer:50052 \\
        --reviews-per-hour 120 --schema-id act-moderation --metrics-port 9102

Every option also reads an `ACT_SAMPLER_<OPTION>` variable (`ACT_SAMPLER_SEED`,
`ACT_SAMPLER_BUDGET_PER_WINDOW`, ...); the Kafka connection comes from the bus settings
(`ACT_KAFKA_BOOTSTRAP`, ...). Scoring is done by the gRPC services given with `--annotator` /
`--criticizer`, or in process by `--backend` (the single-process mode) for the role without an
address. Settings that do not make a valid policy exit with code 2 and say why; SIGTERM and
SIGINT stop the worker after its current transaction and exit 0.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

sampler_app = typer.Typer(
    name="sampler",
    help="The sampler: act.items in, one review decision per item on act.decisions.",
    no_args_is_help=True,
)


def _env(name: str) -> str:
    return f"ACT_SAMPLER_{name}"


class SettingsError(ValueError):
    """Settings that cannot run a sampler (exit code 2)."""


class _LazyClient:
    """A gRPC client created on first use, inside the worker's event loop (grpc.aio binds a
    channel to the loop that is running when it is made)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._client: Any = None

    def _get(self) -> Any:
        if self._client is None:
            self._client = self._factory()
        return self._client

    async def annotate(self, items: Sequence[Any], schema: Any, strategy: str) -> Any:
        return await self._get().annotate(items, schema, strategy)

    async def criticize(self, annotated: Sequence[Any], schema: Any, strategy: str) -> Any:
        return await self._get().criticize(annotated, schema, strategy)


def _check_address(address: str, what: str) -> str:
    from act.local.probes import split_address

    try:
        split_address(address)
    except ValueError:
        raise SettingsError(f"--{what} expects HOST:PORT, got {address!r}") from None
    return address


def build_policy(
    *,
    mode: str,
    seed: str,
    partitions: int,
    budget_per_window: float | None,
    window_items: int | None,
    window_seconds: float | None,
    reviews_per_hour: float | None,
    cap_probability: float,
    audit_share: float,
    batch_items: int,
    review_fraction: float,
    transform: str,
    transform_param: Sequence[str],
    draw_method: str,
) -> Any:
    """The `SamplingPolicy` of the options; SettingsError saying what is wrong."""
    from pydantic import ValidationError

    from act.core.sampling import PacerConfig
    from act.core.transforms import TransformSpec
    from act.sampler.policy import SamplingPolicy
    from act.serving.settings import parse_backend_options
    from act.validation import validation_problems

    if mode not in ("stream", "batch"):
        raise SettingsError(f"--mode must be stream or batch, got {mode!r}")
    try:
        pacer = None
        if mode == "stream":
            pacer_settings: dict[str, Any] = {
                "cap_probability": cap_probability,
                "audit_share": audit_share,
            }
            if reviews_per_hour is not None:
                if budget_per_window is not None or window_items is not None:
                    raise SettingsError(
                        "--reviews-per-hour sets the budget per window of event time: give it "
                        "without --budget-per-window and --window-items"
                    )
                pacer = PacerConfig.for_capacity(
                    reviews_per_hour, window_seconds or 3600.0, **pacer_settings
                )
            else:
                if budget_per_window is None:
                    raise SettingsError(
                        "stream mode needs a budget: --budget-per-window with --window-items "
                        "or --window-seconds, or --reviews-per-hour"
                    )
                if (window_items is None) == (window_seconds is None):
                    raise SettingsError(
                        "give exactly one of --window-items and --window-seconds with "
                        "--budget-per-window"
                    )
                pacer = PacerConfig(
                    budget_per_window=budget_per_window,
                    window_items=window_items,
                    window_seconds=window_seconds,
                    **pacer_settings,
                )
        spec = TransformSpec(method=transform, params=parse_backend_options(list(transform_param)))
        spec.id  # noqa: B018 (resolves the parameters: an unknown method or parameter fails here)
        return SamplingPolicy(
            mode=mode,  # type: ignore[arg-type]
            seed=seed,
            partitions=partitions,
            pacer=pacer,
            batch_items=batch_items,
            review_fraction=review_fraction,
            transform=spec,
            draw_method=draw_method,  # type: ignore[arg-type]
        )
    except ValidationError as exc:
        problems = validation_problems(exc, whole="settings")
        raise SettingsError(f"invalid sampler settings: {problems}") from None
    except (TypeError, KeyError) as exc:
        raise SettingsError(f"invalid sampler settings: {exc}") from None


def build_scorer(
    *,
    annotator: str | None,
    criticizer: str | None,
    backend: str | None,
    backend_option: Sequence[str],
    schema_id: str,
    schema_version: int,
    annotation_strategy: str,
    criticism_strategy: str,
    max_concurrency: int,
    rpc_timeout: float,
) -> Any:
    """The `Scorer`: gRPC clients for the roles with an address, `backend` for the others."""
    import os

    from act.inference.errors import InferenceError
    from act.inference.registry import create_backend
    from act.inference.schemas import SchemaRegistry
    from act.sampler.scoring import Scorer
    from act.serving.settings import parse_backend_options

    try:
        schemas = SchemaRegistry.with_defaults(os.environ.get("ACT_SCHEMAS_DIR") or None)
        schema = schemas.get(schema_id, schema_version)
    except (InferenceError, ValueError) as exc:
        raise SettingsError(str(exc)) from None
    if (annotator is None or criticizer is None) and backend is None:
        raise SettingsError(
            "no scorer: give --annotator HOST:PORT and --criticizer HOST:PORT (gRPC services), "
            "or --backend NAME (in process) for the role without an address"
        )
    local = None
    if backend is not None and (annotator is None or criticizer is None):
        try:
            local = create_backend(backend, **parse_backend_options(list(backend_option)))
        except ImportError as exc:
            raise SettingsError(f"backend {backend!r} cannot be loaded: {exc}") from None
    if max_concurrency < 1:
        raise SettingsError(f"--max-concurrency must be >= 1, got {max_concurrency}")

    from act.client import AnnotatorClient, CriticizerClient

    annotate: Any = local
    if annotator is not None:
        target = _check_address(annotator, "annotator")
        annotate = _LazyClient(lambda: AnnotatorClient(target, timeout=rpc_timeout))
    criticize: Any = local
    if criticizer is not None:
        target_c = _check_address(criticizer, "criticizer")
        criticize = _LazyClient(lambda: CriticizerClient(target_c, timeout=rpc_timeout))
    return Scorer(
        annotate,
        criticize,
        schema,
        annotation_strategy=annotation_strategy,
        criticism_strategy=criticism_strategy,
        max_concurrency=max_concurrency,
    )


def _opt(help_text: str, name: str, *flags: str) -> Any:
    return typer.Option(*flags, help=help_text, envvar=_env(name), show_envvar=True)


@sampler_app.command("serve")
def serve(
    annotator: Annotated[str | None, _opt("Annotator gRPC service HOST:PORT.", "ANNOTATOR")] = None,
    criticizer: Annotated[
        str | None, _opt("Criticizer gRPC service HOST:PORT.", "CRITICIZER")
    ] = None,
    backend: Annotated[
        str | None,
        _opt(
            "In-process backend (instant, embedded, replay, openai, hf, vllm) for the roles "
            "without an address.",
            "BACKEND",
        ),
    ] = None,
    backend_option: Annotated[
        list[str] | None,
        _opt(
            "Backend setting KEY=VALUE (VALUE as JSON when it parses), repeatable.",
            "BACKEND_OPTION",
            "--backend-option",
        ),
    ] = None,
    schema_id: Annotated[
        str, _opt("Label schema id (bundled or ACT_SCHEMAS_DIR).", "SCHEMA_ID")
    ] = ("act-moderation"),
    schema_version: Annotated[int, _opt("Schema version (0: the latest).", "SCHEMA_VERSION")] = 0,
    annotation_strategy: Annotated[
        str, _opt("Annotation prompt strategy.", "ANNOTATION_STRATEGY")
    ] = "direct",
    criticism_strategy: Annotated[
        str, _opt("Criticism prompt strategy.", "CRITICISM_STRATEGY")
    ] = "direct",
    mode: Annotated[str, _opt("stream (pacer) or batch (budget transform).", "MODE")] = "stream",
    budget_per_window: Annotated[
        float | None,
        _opt(
            "Stream: hard cap of reviews per window of the whole stream (each partition paces "
            "its share: PacerConfig.partition_share).",
            "BUDGET_PER_WINDOW",
        ),
    ] = None,
    window_items: Annotated[
        int | None, _opt("Stream: a window is this many items.", "WINDOW_ITEMS")
    ] = None,
    window_seconds: Annotated[
        float | None, _opt("Stream: a window is this span of event time.", "WINDOW_SECONDS")
    ] = None,
    reviews_per_hour: Annotated[
        float | None,
        _opt(
            "Stream: reviewer capacity; budget per --window-seconds (default 3600) window.",
            "REVIEWS_PER_HOUR",
        ),
    ] = None,
    cap_probability: Annotated[
        float, _opt("Stream: aimed chance of hitting the hard cap.", "CAP_PROBABILITY")
    ] = 0.01,
    audit_share: Annotated[
        float, _opt("Stream: share of the budget for the uniform audit slice.", "AUDIT_SHARE")
    ] = 0.0,
    batch_items: Annotated[
        int, _opt("Batch: items per micro-batch of a partition.", "BATCH_ITEMS")
    ] = 256,
    review_fraction: Annotated[
        float, _opt("Batch: budget as a share of each micro-batch.", "REVIEW_FRACTION")
    ] = 0.1,
    transform: Annotated[str, _opt("Batch: budget transform method.", "TRANSFORM")] = "thre",
    transform_param: Annotated[
        list[str] | None,
        _opt(
            "Batch: transform parameter NAME=VALUE, repeatable.",
            "TRANSFORM_PARAM",
            "--transform-param",
        ),
    ] = None,
    draw_method: Annotated[
        str, _opt("Batch: systematic or bernoulli.", "DRAW", "--draw")
    ] = "systematic",
    seed: Annotated[str, _opt("Key of the keyed randomness (keep it secret).", "SEED")] = "act",
    partitions: Annotated[
        int | None,
        _opt(
            "Partitions of act.items, each pacing its share of the budget; must be the topic's "
            "(default ACT_TOPIC_PARTITIONS).",
            "PARTITIONS",
        ),
    ] = None,
    group: Annotated[str, _opt("Kafka consumer group.", "GROUP")] = "act-sampler",
    transactional_id: Annotated[
        str,
        _opt(
            "Kafka transactional id (unique per instance, stable across restarts).",
            "TRANSACTIONAL_ID",
        ),
    ] = "act-sampler-0",
    topic_suffix: Annotated[str, _opt("Suffix of the topic names.", "TOPIC_SUFFIX")] = "",
    micro_batch: Annotated[int, _opt("Items per scoring call.", "MICRO_BATCH")] = 64,
    max_concurrency: Annotated[int, _opt("Scoring calls in flight.", "MAX_CONCURRENCY")] = 4,
    transaction_items: Annotated[
        int, _opt("Most items one Kafka transaction commits.", "TRANSACTION_ITEMS")
    ] = 2000,
    transaction_seconds: Annotated[
        float,
        _opt("Longest a transaction stays open to take more polls.", "TRANSACTION_SECONDS"),
    ] = 0.5,
    transaction_timeout: Annotated[
        float,
        _opt(
            "Longest wait on the broker inside a transaction (commit, abort, offsets), "
            "seconds; then the transaction is aborted or the clients rebuilt.",
            "TRANSACTION_TIMEOUT",
        ),
    ] = 30.0,
    rpc_timeout: Annotated[
        float, _opt("Deadline of each gRPC call, seconds.", "RPC_TIMEOUT")
    ] = 60.0,
    metrics_port: Annotated[
        int | None, _opt("Serve Prometheus metrics on this port.", "METRICS_PORT")
    ] = None,
    metrics_host: Annotated[
        str, _opt("Address the metrics server binds (0.0.0.0 in a container).", "METRICS_HOST")
    ] = "127.0.0.1",
    log_level: Annotated[str, _opt("Log level.", "LOG_LEVEL")] = "INFO",
) -> None:
    """Run the sampler until SIGTERM/SIGINT."""
    from pydantic import ValidationError

    from act.bus import BusSettings
    from act.bus.runtime import prepare_stream_process
    from act.sampler.service import PartitionMismatch, SamplerWorker

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if micro_batch < 1:
            raise SettingsError(f"--micro-batch must be >= 1, got {micro_batch}")
        if transaction_items < 1 or transaction_seconds <= 0 or transaction_timeout <= 0:
            raise SettingsError(
                "--transaction-items, --transaction-seconds and --transaction-timeout must be "
                "positive"
            )
        try:
            bus = BusSettings()
        except ValidationError as exc:
            raise SettingsError(f"invalid Kafka settings: {exc}") from None
        policy = build_policy(
            mode=mode,
            seed=seed,
            partitions=partitions if partitions is not None else bus.topic_partitions,
            budget_per_window=budget_per_window,
            window_items=window_items,
            window_seconds=window_seconds,
            reviews_per_hour=reviews_per_hour,
            cap_probability=cap_probability,
            audit_share=audit_share,
            batch_items=batch_items,
            review_fraction=review_fraction,
            transform=transform,
            transform_param=transform_param or [],
            draw_method=draw_method,
        )
        scorer = build_scorer(
            annotator=annotator,
            criticizer=criticizer,
            backend=backend,
            backend_option=backend_option or [],
            schema_id=schema_id,
            schema_version=schema_version,
            annotation_strategy=annotation_strategy,
            criticism_strategy=criticism_strategy,
            max_concurrency=max_concurrency,
            rpc_timeout=rpc_timeout,
        )
    except (SettingsError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None

    worker = SamplerWorker(
        scorer,
        policy,
        bus=bus,
        group_id=group,
        transactional_id=transactional_id,
        topic_suffix=topic_suffix,
        micro_batch=micro_batch,
        transaction_items=transaction_items,
        transaction_seconds=transaction_seconds,
        transaction_timeout_s=transaction_timeout,
    )
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host, registry=worker.registry)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    logging.getLogger("act.sampler").info(
        "sampler: %s mode, budget %s, group %s, transactional id %s",
        policy.mode,
        policy.budget_id,
        group,
        transactional_id,
    )
    prepare_stream_process()
    try:
        worker.run()
    except PartitionMismatch as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
