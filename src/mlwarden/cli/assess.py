"""``mlwarden assess``: run a model and data set through attacks and write a report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ..assess import AttackSpec, DefenseSpec, Plan, load_plan, parse_spec, write_results
from ..assess.engines import ENGINE_NAMES, UNITS_FOLDER, run_plan
from ..assess.poisoning import split_attack_specs, split_defense_specs
from .._validation import check_output_path
from ..errors import ParameterError, PlanError
from ..attacks.registry import ATTACKS, DEFAULT_ATTACKS, get_attack_entry
from ..defenses.registry import get_defense_entry
from ..report import ATTACK_COLUMNS, attack_rows, format_table, render_report
from ..report.defenses import defense_matrix
from ..report.poisoning import poisoning_table

__all__ = ["register", "run", "build_plan"]

# The plan of each run, saved in its output directory so that --resume DIR repeats it.
PLAN_FILE = "plan.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "assess",
        help="measure a model's accuracy under attack and write a report",
        description="Run a model and a data set through attacks; print the accuracy table and write "
        "results.json, report.md and one figure per attack. Defaults: the shipped LeNet-5 on the Fashion-MNIST "
        f"test set with the attacks {', '.join(DEFAULT_ATTACKS)}.",
    )
    parser.add_argument(
        "--model",
        help="zoo name (lenet5), a .safetensors file with its sidecar, a TorchScript file, an .onnx file (black-box "
        "and transfer attacks only), or package.module:factory (with --weights); default lenet5",
    )
    parser.add_argument("--weights", help="weights file for --model package.module:factory")
    parser.add_argument("--data", help="data set name (fashion-mnist, mnist) or directory of IDX files; default fashion-mnist")
    parser.add_argument(
        "--attack",
        action="append",
        metavar="NAME[:key=value,...]",
        help="attack to run, repeatable, e.g. fgsm:eps=0.05 or deepfool:steps=100; default "
        f"{' '.join(DEFAULT_ATTACKS)}. 'mlwarden assess --list-attacks' lists the names",
    )
    parser.add_argument(
        "--defense",
        action="append",
        metavar="NAME[:key=value,...]",
        help="defense to evaluate against every attack, standard and adaptive, repeatable, e.g. bit-depth:bits=4, "
        "jpeg, median, random-resize, random-transform, ensemble:members=[FILE],vote=majority, smoothing:sigma=0.25, "
        "squeeze-detector, mahalanobis; a robust-trained model goes through --model FILE.safetensors",
    )
    parser.add_argument("--plan", type=Path, help="YAML plan with model, data, attacks and settings")
    parser.add_argument("--limit", type=int, help="assess only the first N samples of the split")
    parser.add_argument("--batch-size", type=int, help="samples per attack batch (default 500)")
    parser.add_argument("--seed", type=int, help="seed of every random choice (default 0)")
    parser.add_argument("--output", type=Path, help="directory for results.json, report.md and figures (default assessment)")
    parser.add_argument("--list-attacks", action="store_true", help="list the attack names and exit")
    add_engine_arguments(parser)
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue an interrupted assessment whose output directory is DIR: reuse its finished units and "
        "write the results there",
    )
    parser.set_defaults(func=run)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that choose where work units run (shared with ``scan-data``)."""
    group = parser.add_argument_group("scale-out")
    group.add_argument(
        "--engine",
        choices=ENGINE_NAMES,
        default="local",
        help="where work units run: local (a process pool on this machine, default) or dask (a Dask cluster; "
        "needs pip install 'mlwarden[dask]')",
    )
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="with --engine dask, the address of a running Dask scheduler (tcp://HOST:8786); default: start a "
        "local cluster on 127.0.0.1",
    )
    group.add_argument(
        "--workers",
        type=int,
        help="worker processes of the local pool or cluster (default: one per CPU; the local engine runs in this "
        "process when the data fit in one shard)",
    )
    group.add_argument(
        "--shard-size",
        type=int,
        metavar="N",
        help="samples per work unit, rounded up to a multiple of the batch size (default: four batches)",
    )


def build_plan(args: argparse.Namespace) -> Plan:
    """Combine the plan file (if any) with the options given on the command line, which take precedence."""
    plan = load_plan(args.plan) if args.plan else Plan()
    attacks = None
    if args.attack:
        attacks = tuple(AttackSpec(*parse_spec(text)) for text in args.attack)
    plan = plan.updated(
        model=args.model,
        weights=args.weights,
        data=args.data,
        limit=args.limit,
        batch_size=args.batch_size,
        seed=args.seed,
        output=None if args.output is None else str(args.output),
        attacks=attacks,
        defenses=tuple(DefenseSpec(*parse_spec(text, "defense")) for text in args.defense) if args.defense else None,
    )
    for defense in split_defense_specs(plan.defenses)[0]:
        get_defense_entry(defense.name)
    if not plan.attacks:
        if args.plan is not None:
            print(f"plan {args.plan} names no attacks: running the defaults {', '.join(DEFAULT_ATTACKS)}", file=sys.stderr)
        plan = plan.updated(attacks=tuple(AttackSpec(name) for name in DEFAULT_ATTACKS))
    for spec in split_attack_specs(plan.attacks)[0]:
        # Build each attack once, so that a bad setting fails before plan.yaml of an earlier run is replaced.
        try:
            get_attack_entry(spec.name).build(dict(spec.settings))
        except TypeError as error:
            raise PlanError(f"attack {spec.label()!r}: {error}", value=spec.label()) from None
    return plan


def run(args: argparse.Namespace) -> int:
    if args.list_attacks:
        get_attack_entry(DEFAULT_ATTACKS[0])
        for name in sorted(ATTACKS):
            print(f"{name:<12} {ATTACKS[name].summary}")
        return 0
    if args.resume is not None and args.plan is None and (args.resume / PLAN_FILE).is_file():
        # Resume the plan of the interrupted run. Options on the command line still override it.
        args.plan = args.resume / PLAN_FILE
    plan = build_plan(args)
    output = check_output_path(plan.output, "assess", folder=True)
    if args.resume is not None:
        if not args.resume.is_dir():
            raise ParameterError(f"--resume {args.resume}: directory not found", value=str(args.resume))
        if not (args.resume / PLAN_FILE).is_file() and not (args.resume / UNITS_FOLDER).is_dir():
            raise ParameterError(
                f"--resume {args.resume}: no earlier assessment found there (no {PLAN_FILE} and no {UNITS_FOLDER} "
                f"folder); start one with --output {args.resume}",
                value=str(args.resume),
            )
        if args.output is not None and args.output != args.resume:
            raise ParameterError(
                f"--resume {args.resume} writes its results there; drop --output {args.output}", value=str(args.output)
            )
        output = check_output_path(args.resume, "assess", name="--resume", folder=True)
    try:
        output.mkdir(parents=True, exist_ok=True)
        (output / PLAN_FILE).write_text(yaml.safe_dump(plan.to_dict(), sort_keys=False))
    except OSError as error:
        raise ParameterError(
            f"assess: cannot write to {str(output)!r} ({error.strerror or error}); pass a writable folder with --output",
            value=str(output),
        ) from error
    results = run_plan(
        plan,
        engine=args.engine,
        scheduler=args.scheduler,
        workers=args.workers,
        shard_size=args.shard_size,
        units_dir=output / UNITS_FOLDER,
        resume=args.resume is not None,
        progress=None,
    )
    results_path = write_results(results, output)
    report_path = render_report(results, output)
    print(format_table(ATTACK_COLUMNS, attack_rows(results)))
    if results.get("defenses"):
        print("\n" + format_table(*defense_matrix(results)))
    if results.get("poisoning"):
        print("\n" + format_table(*poisoning_table(results)))
    figures = sorted(output.glob("*.png"))
    noun = "figure" if len(figures) == 1 else "figures"
    print(f"\nwrote {results_path}, {report_path} and {len(figures)} {noun} in {output}/")
    return 0
