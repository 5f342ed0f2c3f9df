"""The files of an RL run dir (`metarec rl train`'s output), written and read back.

    config.json                 the RL config the run was trained with
    run.json                    its seed and provenance (versions, commit)
    adapted_scores.safetensors  <side>_users (U,) and <side>_states (U, d) per side, and the
                                item_vectors (n_items, d) a state's scores are taken against
    simulator/                  the fitted response model (`metarec.rl.response`)
    behaviour.safetensors       the behaviour policy's network
    policy.safetensors          the learned slate policy's networks
    tensorboard/                training curves
    results.json                the evaluation

Everything `metarec rl evaluate` needs is here; no language model is loaded to read it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from metarec.atomic import recover
from metarec.errors import MetarecError
from metarec.provenance import provenance
from metarec.rl.users import AdaptedScores

CONFIG = "config.json"
SCORES = "adapted_scores.safetensors"
SIMULATOR = "simulator"
BEHAVIOUR = "behaviour.safetensors"
POLICY = "policy.safetensors"
RESULTS = "results.json"
TRAINED = (SCORES, BEHAVIOUR, POLICY)  # written once the policies are trained


def write_description(folder: Path, config: dict, seed: int) -> None:
    """``config.json`` (the config as a mapping) and ``run.json`` (seed and provenance)."""
    with open(folder / CONFIG, "w") as handle:
        json.dump(config, handle, indent=2, default=str)
    with open(folder / "run.json", "w") as handle:
        json.dump({"seed": seed, **provenance()}, handle, indent=2)


def write_results(folder: Path, results: dict) -> None:
    with open(folder / RESULTS, "w") as handle:
        handle.write(json.dumps(results, indent=2) + "\n")


def save_scores(
    path: Path, users: dict[str, np.ndarray], adapted: dict[str, AdaptedScores]
) -> None:
    """Each side's user indices and adapted states, and the item vectors they share."""
    tensors = {f"{side}_users": users[side].astype(np.int64) for side in users}
    tensors |= {f"{side}_states": adapted[side].states.astype(np.float32) for side in adapted}
    tensors["item_vectors"] = next(iter(adapted.values())).item_vectors.astype(np.float32)
    save_numpy(tensors, str(path))


def load_scores(
    path: Path, sides: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], dict[str, AdaptedScores]]:
    """``save_scores``' (users, adapted scores) of ``sides``, each keyed by side."""
    saved = load_numpy(str(path))
    if f"{sides[0]}_scores" in saved:
        raise MetarecError(
            f"{path}: dense (users × items) adapted scores, from before they were saved as "
            "states and item vectors; train the RL run again (`metarec rl train`)"
        )
    try:
        return (
            {side: saved[f"{side}_users"] for side in sides},
            {side: AdaptedScores(saved[f"{side}_states"], saved["item_vectors"]) for side in sides},
        )
    except KeyError as err:
        raise MetarecError(f"{path}: no {err.args[0]}; not an RL run's adapted scores") from None


def save_module(module: torch.nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))


def load_module(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    """``module`` with the weights at ``path``, in eval mode; refused when they do not fit."""
    try:
        module.load_state_dict(load_file(str(path)))
    except (OSError, RuntimeError, KeyError) as err:
        raise MetarecError(f"{path}: cannot load into the configured network ({err})") from None
    return module.eval()


def read_config(run_dir: Path, data_dir: Path | None = None, cache_dir: Path | None = None) -> dict:
    """An RL run's config as a mapping (the run dir made whole first, `metarec.atomic`);
    ``data_dir`` / ``cache_dir`` say where its data is now."""
    recover(run_dir)
    path = run_dir / CONFIG
    if not path.is_file():
        raise MetarecError(f"{path}: missing; expected a `metarec rl train` output dir")
    raw = json.loads(path.read_text())
    for key, value in (("data_dir", data_dir), ("cache_dir", cache_dir)):
        if value is not None:
            raw["data"][key] = str(value)
    return raw


def check_trained(run_dir: Path) -> None:
    """Refuse a run dir whose policies were never saved."""
    for name in TRAINED:
        if not (run_dir / name).is_file():
            raise MetarecError(f"{run_dir / name}: missing; the RL run did not finish training")
