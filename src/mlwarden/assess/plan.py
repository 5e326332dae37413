"""Assessment plans: what to attack, with which settings, from the command line or a YAML file.

A plan names the model, the data, the attacks and their settings. On the
command line an attack is ``NAME[:key=value,...]``; values are read as YAML
scalars or lists, so ``pgd:eps=[0.05,0.1],steps=40`` sweeps two budgets. A
YAML plan holds the same fields::

    model: lenet5
    data: fashion-mnist
    limit: 1000
    seed: 0
    attacks:
      - fgsm
      - name: bim
        eps: 0.05
        steps: 20
      - deepfool:steps=100
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..errors import PlanError

__all__ = ["AttackSpec", "DefenseSpec", "Plan", "parse_spec", "load_plan", "PLAN_KEYS"]

PLAN_KEYS = (
    "model",
    "weights",
    "data",
    "split",
    "limit",
    "batch_size",
    "seed",
    "attacks",
    "defenses",
    "output",
)


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a plan: its registered name and the settings the user gave."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        """Return ``name`` followed by the user's settings, as shown in reports."""
        if not self.settings:
            return self.name
        inner = ",".join(f"{key}={_format(value)}" for key, value in self.settings.items())
        return f"{self.name}:{inner}"


@dataclass(frozen=True)
class DefenseSpec:
    """One defense of a plan: its registered name and settings."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        """Return ``name`` followed by the user's settings, as shown in reports."""
        return AttackSpec(self.name, self.settings).label()


@dataclass(frozen=True)
class Plan:
    """Everything an assessment needs to run, validated."""

    model: str = "lenet5"
    weights: str | None = None
    data: str = "fashion-mnist"
    split: str = "test"
    limit: int | None = None
    batch_size: int = 500
    seed: int = 0
    attacks: tuple[AttackSpec, ...] = ()
    defenses: tuple[DefenseSpec, ...] = ()
    output: str = "assessment"

    def __post_init__(self) -> None:
        if self.limit is not None and (not isinstance(self.limit, int) or isinstance(self.limit, bool) or self.limit < 1):
            raise PlanError(f"limit must be a positive integer, got {self.limit!r}", value=self.limit)
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise PlanError(f"batch_size must be a positive integer, got {self.batch_size!r}", value=self.batch_size)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise PlanError(f"seed must be an integer, got {self.seed!r}", value=self.seed)
        if self.split not in ("train", "test"):
            raise PlanError(f"split must be 'train' or 'test', got {self.split!r}", value=self.split)

    def updated(self, **changes: Any) -> Plan:
        """Return a copy with the given fields replaced (None values are ignored)."""
        return replace(self, **{key: value for key, value in changes.items() if value is not None})

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as plain data, as stored in ``results.json``."""
        return {
            "model": self.model,
            "weights": self.weights,
            "data": self.data,
            "split": self.split,
            "limit": self.limit,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "attacks": [{"name": a.name, **a.settings} for a in self.attacks],
            "defenses": [{"name": d.name, **d.settings} for d in self.defenses],
        }


def _format(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so list values may contain commas."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_spec(text: str, kind: str = "attack") -> tuple[str, dict[str, Any]]:
    """Parse ``NAME[:key=value,...]`` into the name and a dict of settings.

    Raises
    ------
    PlanError
        The name is empty, a setting has no ``=``, or a key repeats.
    """
    if not isinstance(text, str) or not text.strip():
        raise PlanError(f"{kind} must be NAME[:key=value,...], got {text!r}", value=text)
    name, _, rest = text.strip().partition(":")
    name = name.strip().lower()
    if not name:
        raise PlanError(f"{kind} {text!r} has no name; write NAME[:key=value,...], for example fgsm:eps=0.1", value=text)
    settings: dict[str, Any] = {}
    if rest.strip():
        for item in _split_top_level(rest):
            key, equals, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if not equals or not key:
                raise PlanError(
                    f"{kind} setting {item.strip()!r} in {text!r} must be key=value, for example eps=0.1", value=item
                )
            if key in settings:
                raise PlanError(f"{kind} setting {key!r} is given twice in {text!r}", value=key)
            try:
                settings[key] = yaml.safe_load(raw.strip()) if raw.strip() else ""
            except yaml.YAMLError:
                raise PlanError(f"cannot read the value of {key!r} in {text!r}: {raw.strip()!r}", value=raw) from None
    return name, settings


def _specs(items: Any, kind: str, source: str) -> list[tuple[str, dict[str, Any]]]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise PlanError(f"{source}: '{kind}s' must be a list, got {type(items).__name__}", value=items)
    specs = []
    for item in items:
        if isinstance(item, str):
            specs.append(parse_spec(item, kind))
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            settings = {str(k).replace("-", "_"): v for k, v in item.items() if k != "name"}
            specs.append((item["name"].strip().lower(), settings))
        else:
            raise PlanError(
                f"{source}: each of '{kind}s' must be a string NAME[:key=value,...] or a mapping with 'name', "
                f"got {item!r}",
                value=item,
            )
    return specs


def load_plan(path: str | Path) -> Plan:
    """Read a YAML plan.

    Raises
    ------
    PlanError
        The file is missing, is not YAML, is not a mapping, or has an
        unknown key or an invalid value.
    """
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"plan file not found: {path}", value=str(path)) from None
    except IsADirectoryError:
        raise PlanError(f"plan {path} is a folder; pass a YAML file", value=str(path)) from None
    except UnicodeDecodeError:
        raise PlanError(f"plan {path} is not UTF-8 text; pass a YAML file", value=str(path)) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(error, "problem", None) or "syntax error"
        raise PlanError(f"plan {path} is not valid YAML{where}: {problem}; fix the file there", value=str(path)) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise PlanError(f"plan {path} must be a YAML mapping with keys such as model, data, attacks", value=str(path))
    unknown = [key for key in document if key not in PLAN_KEYS and key != "version"]
    if unknown:
        raise PlanError(f"plan {path} has unknown key {unknown[0]!r}; known keys: {', '.join(PLAN_KEYS)}", value=unknown[0])
    fields: dict[str, Any] = {key: document[key] for key in PLAN_KEYS if key in document and key not in ("attacks", "defenses")}
    for key in ("model", "weights", "data", "output"):
        if key in fields and fields[key] is not None:
            fields[key] = str(fields[key])
    fields["attacks"] = tuple(AttackSpec(n, s) for n, s in _specs(document.get("attacks"), "attack", str(path)))
    fields["defenses"] = tuple(DefenseSpec(n, s) for n, s in _specs(document.get("defenses"), "defense", str(path)))
    return Plan(**fields)
