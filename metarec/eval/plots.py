"""The report's figures as PNG files: the cold-start curve and the training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def _save(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def coldstart_curve(curves: dict[str, list[tuple[int, float, float, float]]], path: Path) -> None:
    """ndcg@10 against support size, one line per method with its 95% CI as a band.

    ``curves``: method -> [(support size, mean, CI low, CI high), ...].
    """
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for method, points in curves.items():
        sizes, means, lows, highs = zip(*sorted(points), strict=True)
        bold = method == "meta-lora"
        axes.plot(sizes, means, marker="o", label=method, linewidth=2.5 if bold else 1.2)
        axes.fill_between(sizes, lows, highs, alpha=0.12)
    axes.set_xlabel("support size (interactions a cold user has given)")
    axes.set_ylabel("ndcg@10")
    axes.set_xticks(sorted({size for points in curves.values() for size, *_ in points}))
    axes.set_title("Cold-start users: ranking quality against support size")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    _save(figure, path)


def training_curves(history: list[dict], path: Path) -> None:
    """Validation support and query losses before and after adaptation, epoch by epoch.

    ``history``: a run's ``metrics.json`` (one dict per epoch with ``stage`` and the
    ``valid_{support,query}_loss_{before,after}`` keys).
    """
    figure, panels = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    epochs = list(range(len(history)))
    labels = [f"{row['stage'][0]}{row['epoch']}" for row in history]
    for axes, loss in zip(panels, ("support", "query"), strict=True):
        for when, style in (("before", "--"), ("after", "-")):
            values = [row[f"valid_{loss}_loss_{when}"] for row in history]
            axes.plot(epochs, values, style, marker="o", label=f"{when} adaptation")
        stage_change = [i for i in epochs[1:] if history[i]["stage"] != history[i - 1]["stage"]]
        for boundary in stage_change:
            axes.axvline(boundary - 0.5, color="grey", linewidth=0.8)
        axes.set_title(f"validation {loss} loss")
        axes.set_xticks(epochs, labels, fontsize=7)
        axes.set_xlabel("epoch (p = pretraining, m = meta-training)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    _save(figure, path)


def reward_curves(rewards: dict[str, np.ndarray], path: Path) -> None:
    """Cumulative reward against counted events, one line per bandit policy."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for policy, values in rewards.items():
        axes.plot(
            np.arange(1, len(values) + 1),
            np.cumsum(values),
            label=f"{policy} (CTR {values.mean():.3f})",
        )
    axes.set_xlabel("events where the policy chose the logged arm")
    axes.set_ylabel("cumulative reward")
    axes.set_title("Replay evaluation of exploration policies (cold users)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    _save(figure, path)
