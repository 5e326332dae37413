"""``mlwarden train``: train a zoo model and save safetensors weights with a sidecar."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from .._validation import check_output_path
from ..data import load_dataset
from ..defenses.evasion.adversarial_training import build_training_defense
from ..errors import ParameterError
from ..models import TrainingConfig, build, save_weights, train_model
from ..models.training import EpochRecord
from ..models.zoo import ARCHITECTURES

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a zoo model and save its weights",
        description="Train a zoo model on an IDX data set and save safetensors weights with a JSON sidecar "
        "(architecture, data set, clean test accuracy, SHA-256).",
    )
    parser.add_argument("--model", default="lenet5", choices=sorted(ARCHITECTURES), help="architecture (default lenet5)")
    parser.add_argument("--data", default="fashion-mnist", help="data set name or directory of IDX files")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training set (default 10)")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch size (default 128)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 0.001)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialization and shuffling (default 0)")
    parser.add_argument(
        "--output", type=Path, default=Path("lenet5.safetensors"), help="weights file to write (default lenet5.safetensors)"
    )
    parser.add_argument(
        "--defense",
        metavar="NAME[:key=value,...]",
        help="robust training: pgd, fgsm (fast, random start), trades or gaussian (noise for smoothing), e.g. "
        "pgd:eps=0.1,steps=10; each epoch also reports PGD accuracy on 1000 test images",
    )
    parser.set_defaults(func=run)


def _print_epoch(record: EpochRecord) -> None:
    extra = "".join(f"  {key.replace('_', ' ')} {value:.4f}" for key, value in record.extra.items())
    print(
        f"epoch {record.epoch:>3}  loss {record.loss:.4f}  train accuracy {record.train_accuracy:.4f}  "
        f"test accuracy {record.test_accuracy:.4f}{extra}  {record.seconds:.1f} s",
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    if Path(args.output).is_dir():
        raise ParameterError(
            f"train: --output {args.output} is a folder; pass a file name such as {Path(args.output) / 'model.safetensors'}",
            value=str(args.output),
        )
    check_output_path(args.output, "train")
    config = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed)
    defense = build_training_defense(args.defense, seed=args.seed) if args.defense else None
    train = load_dataset(args.data, "train")
    test = load_dataset(args.data, "test")
    import torch

    torch.manual_seed(config.seed)
    kwargs = {"num_classes": train.num_classes}
    model = build(args.model, **kwargs)
    if defense is None:
        history = train_model(model, train, test, config, on_epoch_end=_print_epoch, progress=None)
    else:
        hook = defense.epoch_hook(test)
        history = train_model(
            model, train, test, config, batch_loss=defense, epoch_hook=hook, on_epoch_end=_print_epoch, progress=None
        )
    metadata = {
        "architecture": args.model,
        "architecture_kwargs": kwargs,
        "dataset": train.name,
        "clean_test_accuracy": history[-1].test_accuracy,
        "training": {
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "seed": config.seed,
            "optimizer": "adam",
            "history": [record.to_dict() for record in history],
        },
    }
    if defense is not None:
        metadata["defense"] = defense.describe()
    try:
        path = save_weights(model, args.output, metadata)
    except OSError as error:
        # Keep the trained model even when its output path fails after training.
        rescue = Path(tempfile.gettempdir()) / f"mlwarden-train-{os.getpid()}.safetensors"
        save_weights(model, rescue, metadata)
        raise ParameterError(
            f"failed to write --output {args.output} ({error.strerror or error}); the trained weights were saved to "
            f"{rescue} instead, move them where you need them",
            value=str(args.output),
        ) from None
    print(f"saved {path} and {path.with_suffix('.json')}")
    print(json.dumps({"clean_test_accuracy": history[-1].test_accuracy}))
    return 0
