"""The defenses section of the report: accuracy under standard and adaptive attacks, detection and certificates.

Rendered from the ``defenses`` records of ``results.json`` (written by
:mod:`mlwarden.assess.defended`). The undefended row comes from the
assessment's own attack records, joined by attack label.
"""

from __future__ import annotations

from typing import Any

from .table import number, percent

__all__ = ["render_defenses_markdown", "defense_matrix"]


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _attack_labels(results: dict[str, Any]) -> list[str]:
    labels: list[str] = []
    for defense in results.get("defenses", []):
        for attack in defense.get("attacks", []):
            if attack["label"] not in labels:
                labels.append(attack["label"])
    return labels


def defense_matrix(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Return the headers and rows of the defense x attack matrix of accuracy under attack.

    Each attack has two columns, standard and adaptive. The first row is
    the undefended model, for which the white-box attack is already the
    adaptive one, so both columns show the same figure. Detector rows count a
    sample as defended when it is classified correctly or flagged.
    """
    labels = _attack_labels(results)
    headers = ["defense", "clean"]
    for label in labels:
        headers += [f"{label} standard", f"{label} adaptive"]
    undefended = {attack["label"]: attack["accuracy"] for attack in results.get("attacks", [])}
    row = ["none", percent(results.get("clean", {}).get("accuracy"))]
    for label in labels:
        row += [percent(undefended.get(label))] * 2
    rows = [row]
    for defense in results.get("defenses", []):
        by_label = {attack["label"]: attack for attack in defense.get("attacks", [])}
        clean = defense.get("clean_accuracy_with_rejection", defense.get("clean_accuracy"))
        row = [defense["label"], percent(clean)]
        for label in labels:
            attack = by_label.get(label)
            row += ["-", "-"] if attack is None else [percent(attack["standard"]["accuracy"]), percent(attack["adaptive"]["accuracy"])]
        rows.append(row)
    return headers, rows


def render_defenses_markdown(results: dict[str, Any]) -> str:
    """Return the Markdown section on defenses after a blank line, or an empty string when the assessment has none."""
    defenses = results.get("defenses") or []
    if not defenses:
        return ""
    lines = [
        "",
        "## Defenses",
        "",
        "Accuracy under attack per defense. *Standard*: the attack run on the defended model as it is. *Adaptive*: "
        "the per-sample worst case of the standard attack and an attack that sees through the defense (BPDA for "
        "non-differentiable steps, EOT for randomness, a joint loss for detectors). A defense whose adaptive figure is "
        "far below its standard one only hides gradients. For detectors, a sample counts as defended when it is "
        "classified correctly or flagged, and the clean column excludes flagged clean inputs.",
        "",
    ]
    headers, rows = defense_matrix(results)
    lines += _table(headers, rows)

    lines += ["", "### Adaptive attacks used", ""]
    lines += _table(
        ["defense", "adaptive attack", "known to fall to"],
        [[d["label"], d.get("adaptive_method", "-"), d.get("known_bypass", "-")] for d in defenses],
    )

    detector_rows = []
    for defense in defenses:
        if defense.get("kind") != "detector":
            continue
        for attack in defense.get("attacks", []):
            detector_rows.append(
                [
                    defense["label"],
                    attack["label"],
                    percent(defense.get("fpr_target")),
                    percent(defense.get("fpr_measured")),
                    percent(attack["standard"].get("tpr")),
                    number(attack["standard"].get("roc_auc")),
                    percent(attack["adaptive"].get("tpr")),
                    number(attack["adaptive"].get("roc_auc")),
                ]
            )
    if detector_rows:
        lines += [
            "",
            "### Detection",
            "",
            "True-positive rate on successful adversarial inputs at the threshold set for the target false-positive "
            "rate on clean data, and ROC AUC of clean against successful adversarial inputs.",
            "",
        ]
        lines += _table(
            ["detector", "attack", "target FPR", "measured FPR", "TPR standard", "AUC standard", "TPR adaptive", "AUC adaptive"],
            detector_rows,
        )

    certified = [d for d in defenses if d.get("certified")]
    if certified:
        radii = certified[0]["certified"]["radii"]
        lines += [
            "",
            "### Certified accuracy",
            "",
            "Fraction of samples whose smoothed prediction is correct with a certified L2 radius of at least r "
            "(Cohen et al., 2019); each certificate holds with probability at least 1 - alpha.",
            "",
        ]
        rows = []
        for defense in certified:
            figures = defense["certified"]
            rows.append(
                [
                    defense["label"],
                    f"{figures['sigma']:g}",
                    str(figures["samples"]),
                    f"{figures['n0']}/{figures['n']}",
                    percent(figures["clean_accuracy"]),
                    *[percent(value) for value in figures["accuracy"]],
                    percent(figures["abstain_rate"]),
                ]
            )
        lines += _table(
            ["defense", "sigma", "samples", "n0/n", "accuracy", *[f"r = {r:g}" for r in radii], "abstained"], rows
        )
    return "\n".join(lines) + "\n"
