"""The poisoning section of the report, rendered from the ``poisoning`` records of ``results.json``.

Each attack and rate gives one row without defense (the model trained on
the poisoned data) and one row per detector (the model retrained on the
samples the detector kept), with the detector's precision and recall
against the known poison.
"""

from __future__ import annotations

from typing import Any

from .table import percent

__all__ = ["POISONING_COLUMNS", "poisoning_table", "render_poisoning_markdown"]

POISONING_COLUMNS = (
    "attack",
    "rate",
    "poisoned",
    "defense",
    "removed",
    "precision",
    "recall",
    "clean accuracy",
    "backdoor success",
)


def _success(entry: dict[str, Any]) -> str:
    if entry.get("backdoor_success_rate") is not None:
        return percent(entry["backdoor_success_rate"])
    if entry.get("target_success") is not None:
        return "target hit" if entry["target_success"] else "target missed"
    return "-"


def poisoning_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Return the headers and rows of the poisoning table."""
    rows: list[list[str]] = []
    for record in results.get("poisoning", []):
        head = [record["name"], f"{record['rate']:g}", str(record["poisoned"])]
        rows.append([*head, "none", "-", "-", "-", percent(record["clean_accuracy"]), _success(record)])
        for defense in record["defenses"]:
            rows.append(
                [
                    *head,
                    defense["label"],
                    str(defense["removed"]),
                    percent(defense["precision"]),
                    percent(defense["recall"]),
                    percent(defense["clean_accuracy"]),
                    _success(defense),
                ]
            )
    return list(POISONING_COLUMNS), rows


def render_poisoning_markdown(results: dict[str, Any]) -> str:
    """Return the Markdown section, or an empty string when the assessment ran no poisoning attack."""
    records = results.get("poisoning")
    if not records:
        return ""
    headers, rows = poisoning_table(results)
    first = records[0]
    lines = [
        "",
        "## Poisoning",
        "",
        f"Each model is trained from scratch for {first['epochs']} epochs on the first {first['train_samples']} "
        "training samples, poisoned at the given rate. Clean accuracy is measured on the assessment's test data; "
        "backdoor success is the share of triggered test inputs from other classes assigned to the target class. "
        "Defense rows retrain on the samples the detector keeps; precision and recall are against the known poison.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
