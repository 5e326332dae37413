"""Assessments: plans, the runner, metrics and the versioned results file."""

from .context import AssessmentContext
from .plan import AttackSpec, DefenseSpec, Plan, load_plan, parse_spec
from .results import SCHEMA, read_results, write_results
from .runner import run_assessment, run_attack

__all__ = [
    "SCHEMA",
    "AssessmentContext",
    "AttackSpec",
    "DefenseSpec",
    "Plan",
    "load_plan",
    "parse_spec",
    "read_results",
    "run_assessment",
    "run_attack",
    "write_results",
]
