"""``mlwarden serve``: run the guarded model service on uvicorn (127.0.0.1 by default).

The model is verified before the server binds its port. A weights file
whose hash differs from its sidecar stops the command with status 2 and a
``service.refused`` log line, and so does a model file that a given signed
manifest does not list as intact. Logs are JSON lines on stderr by default.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MlwardenError, ParameterError
from ..serve.config import GUARDS, MONITOR_ACTIONS, OUTPUT_MODES, MonitorSettings, OutputPolicy, PayloadLimits, ServiceConfig
from ..serve.logs import configure_logging
from ..serve.model import ServedModel, load_served_model
from ..serve.server import build_service, run_server
from .keys import DEFAULT_DATABASE


if TYPE_CHECKING:
    from ..defenses.evasion.base import AdversarialDetector

__all__ = ["register", "run", "parse_guards", "DETECTORS"]

logger = logging.getLogger(__name__)

DETECTORS = ("mahalanobis", "squeeze-detector")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the guarded model service",
        description="Serve a model over HTTP behind API keys, rate limits, payload limits, an extraction monitor "
        "and output hardening, with device ingest into a quarantine. Stops gracefully on Ctrl-C or SIGTERM.",
    )
    parser.add_argument("--model", default="lenet5", help="zoo name, .safetensors with sidecar, TorchScript file, or package.module:factory (default lenet5)")
    parser.add_argument("--weights", type=Path, help="weights for a package.module:factory model")
    parser.add_argument("--input-shape", help="input shape C,H,W of the model (default: the zoo's, else 1,28,28)")
    parser.add_argument("--manifest", type=Path, help="signed manifest that must list the model file as intact")
    parser.add_argument("--public-key", type=Path, help="public key that signed --manifest")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DATABASE, help=f"service database (default {DEFAULT_DATABASE})")
    parser.add_argument(
        "--guards",
        default="all",
        help=f"comma-separated guards to switch on, 'all' or 'none' (default all: {','.join(GUARDS)})",
    )
    parser.add_argument("--output", choices=OUTPUT_MODES, default="scores", help="what predictions reveal (default scores)")
    parser.add_argument("--top-k", type=int, default=1, help="classes returned with --output top-k (default 1)")
    parser.add_argument("--decimals", type=int, default=4, help="decimals of returned probabilities (default 4; -1 for no rounding)")
    parser.add_argument("--max-batch", type=int, default=64, help="images per prediction request (default 64)")
    parser.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="largest request body in bytes (default 4 MiB)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second of the anonymous key when auth is off (default 20)")
    parser.add_argument("--monitor-threshold", type=float, default=0.94, help="Shapiro-Wilk W below which a key is flagged (default 0.94)")
    parser.add_argument("--monitor-action", choices=MONITOR_ACTIONS, default="block", help="what a flag does beyond the alert (default block)")
    parser.add_argument("--detector", choices=DETECTORS, help="adversarial-input detector to fit at start (needs the detector guard)")
    parser.add_argument("--detector-data", default="fashion-mnist", help="clean data the detector is fitted on (default fashion-mnist)")
    parser.add_argument("--detector-samples", type=int, default=5000, help="training images the detector is fitted on (default 5000)")
    parser.add_argument(
        "--screen",
        action="store_true",
        help="fit a k-NN poisoning screen on --detector-samples images of --detector-data for the uploads",
    )
    parser.add_argument(
        "--train-uploads",
        action="store_true",
        help="release screened uploads to the rollback-guarded trainer (implies --screen); its gold set is "
        "--gold-samples images of the test split of --detector-data",
    )
    parser.add_argument("--gold-samples", type=int, default=1000, help="trusted held-out images of the trainer's checks (default 1000)")
    parser.add_argument("--reject-flagged", action="store_true", help="answer 422 when the detector flags an image, instead of only logging it")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="threads of each model call (default 1: requests already run in parallel worker threads)",
    )
    parser.add_argument("--log-format", choices=("json", "text"), default="json", help="format of the logs on stderr (default json)")
    parser.set_defaults(func=run)


def parse_guards(text: str) -> frozenset[str]:
    """Return the guards of a ``--guards`` value: 'all', 'none', or a comma-separated list."""
    value = text.strip().lower()
    if value == "all":
        return frozenset(GUARDS)
    if value in ("", "none"):
        return frozenset()
    chosen = frozenset(part.strip() for part in value.split(",") if part.strip())
    unknown = sorted(chosen - set(GUARDS))
    if unknown:
        raise ParameterError(f"--guards: unknown guard {unknown[0]!r}; the guards are {', '.join(GUARDS)}", value=unknown[0])
    return chosen


def _input_shape(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        parts = tuple(int(part) for part in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise ParameterError(f"--input-shape must be three positive integers C,H,W such as 1,28,28, got {text!r}", value=text)
    return parts  # type: ignore[return-value]


def build_config(args: argparse.Namespace) -> ServiceConfig:
    """Return the service settings that the command-line options set."""
    return ServiceConfig(
        guards=parse_guards(args.guards),
        output=OutputPolicy(mode=args.output, top_k=args.top_k, decimals=None if args.decimals < 0 else args.decimals),
        limits=PayloadLimits(max_body_bytes=args.max_body_bytes, max_batch=args.max_batch),
        monitor=MonitorSettings(threshold=args.monitor_threshold, action=args.monitor_action),
        default_rate=args.rate,
        default_burst=max(1, int(2 * args.rate)),
        reject_flagged=args.reject_flagged,
    )


def _fit_detector(name: str, model: ServedModel, data: str, samples: int) -> AdversarialDetector:
    import torch

    from ..data import load_dataset
    from ..defenses.evasion import FeatureSqueezingDetector, MahalanobisDetector

    train = load_dataset(data, "train").subset(samples)
    detector: AdversarialDetector
    if name == "mahalanobis":
        detector = MahalanobisDetector(model.module)
    else:
        detector = FeatureSqueezingDetector(model.module)
    with torch.no_grad():
        detector.fit(train.images, train.labels)
    logger.info("fitted the %s detector on %d images of %s", name, len(train), data, extra={"event": "detector.fitted"})
    return detector


def run(args: argparse.Namespace) -> int:
    if "auth" in parse_guards(args.guards) and not args.db.exists():
        # A new database contains no API key, so a server that checks keys would reject every request.
        raise ParameterError(
            f"serve: database {str(args.db)!r} not found, so no API key could authenticate; check --db, or create a key "
            f"with `mlwarden keys create --db {args.db} --scope predict` first",
            value=str(args.db),
        )
    configure_logging(logging.INFO, json_format=args.log_format == "json")
    if not 0 < args.port < 65536:
        raise ParameterError(f"--port must be in 1..65535, got {args.port}", value=args.port)
    if args.torch_threads < 1:
        raise ParameterError(f"--torch-threads must be at least 1, got {args.torch_threads}", value=args.torch_threads)
    import torch

    torch.set_num_threads(args.torch_threads)
    config = build_config(args)
    try:
        model = load_served_model(
            args.model,
            weights=args.weights,
            input_shape=_input_shape(args.input_shape),
            manifest=args.manifest,
            public_key=args.public_key,
        )
    except MlwardenError as error:
        logger.error("refusing to start: %s", error.message, extra={"event": "service.refused", "model": args.model})
        raise
    detector = None
    if args.detector:
        if not config.has("detector"):
            raise ParameterError("--detector needs the detector guard; add it to --guards", value=args.guards)
        detector = _fit_detector(args.detector, model, args.detector_data, args.detector_samples)
    screen = trainer = None
    if args.screen or args.train_uploads:
        from ..data import load_dataset
        from ..serve.release import UploadScreen

        trusted = load_dataset(args.detector_data, "train").subset(args.detector_samples)
        screen = UploadScreen.fit(model, trusted.images, trusted.labels)
    if args.train_uploads:
        from ..data import load_dataset
        from ..defenses.poisoning.incremental import IncrementalTrainer
        from ..defenses.poisoning.quarantine import QuarantineStore

        gold = load_dataset(args.detector_data, "test").subset(args.gold_samples)
        # The trainer's quarantine shares the service's database file; its tables have other names.
        trainer = IncrementalTrainer(model.module, gold.images, gold.labels, quarantine=QuarantineStore(args.db))
    service = build_service(model, args.db, config, detector=detector, screen=screen, trainer=trainer)
    run_server(service, args.host, args.port)
    return 0
