"""`actctl featurize` and `actctl train`: from the review export to a trained model.

    actctl export act.parquet --include-items
    actctl featurize act.parquet train.parquet --labels digits
    actctl train train.parquet --eval-table heldout.parquet --output runs/act --loss act
    actctl train train.parquet --ray --num-workers 2 --output runs/act-ray

Training modules (torch, Ray) are imported when a command runs, so `actctl` starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from act.trainer.config import DEFAULT_MAX_WEIGHT, LOSSES, TrainConfig

_BUNDLED_LABELS = ("digits", "moderation")


def _fail(exc: Exception) -> None:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        from act.validation import validation_problems

        message = validation_problems(exc, whole="input")
    else:
        message = str(exc)
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2) from None


def _class_names(labels: str) -> list[str]:
    if labels == "digits":
        from act.data import DIGIT_LABELS

        return list(DIGIT_LABELS)
    if labels == "moderation":
        from act.data import MODERATION_LABELS

        return list(MODERATION_LABELS)
    names = [name.strip() for name in labels.split(",") if name.strip()]
    if len(names) < 2:
        raise ValueError(
            f"--labels needs two or more comma-separated names or one of {_BUNDLED_LABELS}"
        )
    return names


def featurize(
    export: Annotated[
        Path, typer.Argument(help="Parquet written by `actctl export --include-items`.")
    ],
    output: Annotated[Path, typer.Argument(help="The featurized training table to write.")],
    labels: Annotated[
        str,
        typer.Option(
            help="The schema's class names in order, comma-separated, or 'digits' / "
            "'moderation' for the bundled schemas."
        ),
    ],
    featurizer: Annotated[
        str, typer.Option(help="pixels (8×8 images), minilm (text) or auto.")
    ] = "auto",
) -> None:
    """Turn a review export into a training table (features, labels as indices, delta, pi)."""
    from act.trainer.featurize import featurize_export

    try:
        info = featurize_export(
            export,
            output,
            class_names=_class_names(labels),
            featurizer=featurizer,  # type: ignore[arg-type]
        )
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(
        f"{info.n_rows} rows written to {output} ({info.featurizer} features of shape "
        f"{list(info.feature_shape)}, {info.n_classes} classes)"
    )


def _shape(value: str | None) -> tuple[int, ...] | None:
    if not value:
        return None
    try:
        return tuple(int(part) for part in value.split(","))
    except ValueError:
        raise ValueError(f"--input-shape expects comma-separated integers, got {value!r}") from None


def _lam(value: str) -> float | str:
    if value == "power":
        return value
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--lam expects a number in [0, 1] or 'power', got {value!r}") from None


def train(
    table: Annotated[Path, typer.Argument(help="Featurized training table (file or folder).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the checkpoint and metrics.")
    ],
    eval_table: Annotated[
        Path | None,
        typer.Option(help="Held-out training table; its human labels are the reference."),
    ] = None,
    loss: Annotated[str, typer.Option(help=f"One of {', '.join(LOSSES)}.")] = "act",
    model: Annotated[str, typer.Option(help="linear, mlp, cnn, resnet18, roberta-base.")] = "mlp",
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    lam: Annotated[str, typer.Option(help="Weight of the machine-label term, or 'power'.")] = "1",
    max_weight: Annotated[
        float, typer.Option(help="Clip the human weight delta/pi at this value (>= 1).")
    ] = DEFAULT_MAX_WEIGHT,
    unbiased: Annotated[
        bool, typer.Option("--unbiased", help="Do not clip delta/pi: the unbiased ACT loss.")
    ] = False,
    drop_unlabelled: Annotated[
        bool,
        typer.Option(
            "--drop-unlabelled", help="Drop reviewed rows without a human label (else refuse)."
        ),
    ] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    input_shape: Annotated[
        str | None, typer.Option(help="Shape of one item, e.g. 1,8,8 for the cnn on pixels.")
    ] = None,
    model_path: Annotated[
        Path | None, typer.Option(help="Local weights file or model directory.")
    ] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Train on Ray Train (TorchTrainer).")] = False,
    num_workers: Annotated[int, typer.Option(min=1, help="Ray Train workers.")] = 2,
    use_gpu: Annotated[bool, typer.Option("--use-gpu", help="One GPU per Ray worker.")] = False,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster address; default: a small local Ray for this run."),
    ] = None,
) -> None:
    """Train the downstream model on ACT data and save it with its per-epoch metrics."""
    try:
        config = TrainConfig(
            loss=loss,  # type: ignore[arg-type]
            model=model,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            lam=_lam(lam),
            max_weight=None if unbiased else max_weight,
            unlabelled_reviews="drop" if drop_unlabelled else "error",
            device=device,  # type: ignore[arg-type]
            input_shape=_shape(input_shape),
            model_path=model_path,
            metrics_path=output / "metrics.csv",
        )
        summary = (
            _train_on_ray(config, table, eval_table, output, num_workers, use_gpu, address)
            if ray
            else _train_here(config, table, eval_table, output)
        )
    except (ValueError, FileNotFoundError, ImportError) as exc:
        _fail(exc)
    for note in summary["warnings"]:
        typer.echo(f"note: {note}", err=True)
    accuracy = summary["final_accuracy"]
    typer.echo(
        f"trained {config.model} with loss {config.loss} for {config.epochs} epochs"
        + (f"; eval accuracy {accuracy:.4f}" if accuracy is not None else "")
        + (f"; lam {summary['lam']:.3g}" if summary["lam"] is not None else "")
        + f"; checkpoint {summary['checkpoint']}"
    )


def _train_here(
    config: TrainConfig, table: Path, eval_table: Path | None, output: Path
) -> dict[str, Any]:
    from act.trainer.checkpoint import save_checkpoint
    from act.trainer.loop import train_in_process
    from act.trainer.table import read_eval_table, read_training_table

    data, info = read_training_table(table)
    eval_data = read_eval_table(eval_table) if eval_table is not None else None
    result = train_in_process(config, data, eval_data, progress=True)
    checkpoint = save_checkpoint(
        output / "checkpoint",
        result.model,
        config,
        class_names=info.class_names,
        item_shape=result.item_shape,
        history=result.history,
    )
    return {
        "warnings": result.warnings,
        "final_accuracy": result.final_accuracy,
        "lam": result.lam,
        "checkpoint": checkpoint,
    }


def _train_on_ray(
    config: TrainConfig,
    table: Path,
    eval_table: Path | None,
    output: Path,
    num_workers: int,
    use_gpu: bool,
    address: str | None,
) -> dict[str, Any]:
    from act.trainer.loop import write_metrics
    from act.trainer.ray_train import local_ray_init, train_with_ray

    result = train_with_ray(
        config,
        table,
        eval_table=eval_table,
        num_workers=num_workers,
        use_gpu=use_gpu,
        storage_path=output / "ray",
        ray_init={"address": address} if address else local_ray_init(num_workers),
    )
    if config.metrics_path is not None:
        write_metrics(result.history, config.metrics_path)
    return {
        "warnings": result.warnings,
        "final_accuracy": result.final_accuracy,
        "lam": result.lam,
        "checkpoint": result.checkpoint_path,
    }
