"""Render evaluation results for people (Markdown) and machines (JSON, Parquet).

Files are written with `metarec.atomic.atomic_file`, so an interrupted run never leaves
a half-written results file in place of a previous good one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metarec.atomic import atomic_file


def markdown_table(summary: dict[str, Any]) -> str:
    """One row per method: each metric's mean, with the 95% CI for the first ndcg."""
    methods = summary["methods"]
    metric_names = [name for name in next(iter(methods.values())) if not name.endswith("_ci")]
    headline = next((name for name in metric_names if name.startswith("ndcg@")), metric_names[0])
    header = ["method", *[f"{headline} (95% CI)" if n == headline else n for n in metric_names]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, values in methods.items():
        cells = [method]
        for name in metric_names:
            cell = f"{values[name]:.4f}"
            if name == headline:
                low, high = values[f"{name}_ci"]
                cell += f" [{low:.4f}, {high:.4f}]"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    protocol = summary["protocol"]
    described = ", ".join(f"{k}={v}" for k, v in protocol.items())
    return f"{described}; {summary['n_test_users']} test users\n\n" + "\n".join(lines)


def _cell(summary: dict[str, Any], method: str, metric: str) -> str:
    values = summary["methods"].get(method)
    if values is None:
        return "–"
    low, high = values[f"{metric}_ci"]
    return f"{values[metric]:.4f} [{low:.4f}, {high:.4f}]"


def comparison_table(columns: dict[str, tuple[dict[str, Any], str]], methods: list[str]) -> str:
    """One row per method, one column per evaluation: ``metric`` mean [95% CI].

    ``columns``: header -> (an `evaluate` summary, the metric to show from it).
    """
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for method in methods:
        cells = [_cell(summary, method, metric) for summary, metric in columns.values()]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: Path, summary: dict[str, Any]) -> None:
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(summary, indent=2) + "\n")


def write_per_user(
    path: Path, per_user: dict[str, dict[str, np.ndarray]], user_ids: np.ndarray
) -> None:
    """Parquet with one row per (method, test user) and one column per metric; ``user_ids``
    (U,) are the users' raw ids, integers or strings, and are written as they are."""
    frames = [
        pd.DataFrame({"method": method, "user_id": user_ids, **metrics})
        for method, metrics in per_user.items()
    ]
    table = pd.concat(frames, ignore_index=True)
    with atomic_file(path) as temporary:
        table.to_parquet(temporary, index=False)
