"""The Markdown report of an assessment, rendered from ``results.json`` data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .defenses import render_defenses_markdown
from .poisoning import render_poisoning_markdown
from .figures import figure_name
from .table import ATTACK_COLUMNS, attack_rows

__all__ = ["render_markdown"]


def _markdown_table(headers: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def render_markdown(results: dict[str, Any], figures: list[Path] | None = None) -> str:
    """Return the report: setup, the accuracy table, the threat profiles and the figures."""
    model, data, plan = results["model"], results["data"], results["plan"]
    lines = [
        "# mlwarden assessment",
        "",
        f"- model: `{model['name']}` ({model['source']}), SHA-256 `{model.get('sha256') or 'unknown'}`",
        f"- data: {data['name']}, {data['split']} split, {data['samples']} samples of shape {tuple(data['shape'])}, "
        f"bounds {tuple(data['bounds'])}",
        f"- seed {plan['seed']}, batch size {plan['batch_size']}, mlwarden {results['mlwarden_version']}, "
        f"torch {results['environment']['torch']} on {results['environment']['threads']} threads",
        f"- total time {results['seconds']:.1f} s, created {results['created']}",
        "",
        "## Accuracy under attack",
        "",
        "Accuracy counts every sample; success rate counts the samples the model classified correctly (or not as "
        "the target) before the attack; perturbation norms are over the successful ones, in pixel units.",
        "",
    ]
    lines += _markdown_table(list(ATTACK_COLUMNS), attack_rows(results))
    lines += ["", "## Threat profiles", ""]
    profile_rows = []
    for attack in results["attacks"]:
        profile = attack["profile"]
        queries = attack.get("queries_per_sample") or {}
        profile_rows.append(
            [
                attack["label"],
                profile["knowledge"],
                profile["frequency"],
                "targeted" if attack["targeted"] else "untargeted",
                profile["scope"],
                profile["level"],
                str(attack.get("norm") or "-"),
                "-" if attack.get("eps") is None else f"{attack['eps']:g}",
                "-" if queries.get("median_successful") is None else f"{queries['median_successful']:.0f}",
                f"{attack['fitting_queries']:,}" if attack.get("fitting_queries") else "-",
            ]
        )
    lines += _markdown_table(
        ["attack", "knowledge", "frequency", "mode", "scope", "level", "norm", "eps", "median queries (successful)",
         "fitting queries"],
        profile_rows,
    )
    lines += ["", "Median queries count the queries spent on each sample. Fitting queries were spent once, before any "
              "sample, to fit the attack (for example the target's labels that trained a transfer surrogate)."]
    lines += render_defenses_markdown(results).splitlines()
    lines += render_poisoning_markdown(results).splitlines()
    if figures:
        lines += ["", "## Examples", "", "Original image, perturbation (amplified) and adversarial image, with the "
                  "class the model predicts for each.", ""]
        names = {path.name for path in figures}
        for position, attack in enumerate(results["attacks"], start=1):
            name = figure_name(position, attack["label"])
            if name in names:
                lines += [f"### {attack['label']}", "", f"![{attack['label']}]({name})", ""]
    return "\n".join(lines).rstrip() + "\n"
