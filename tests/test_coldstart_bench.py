"""bench/coldstart_llm.py's three-seed table with SASRec, and the LLM, run per training seed,
from per-user result files already on disk (nothing trained), against sums done by hand."""

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "coldstart_llm.py"
USERS = ["u1", "u2", "u3", "u4", "u5", "u6"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("coldstart_llm", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_part(folder: Path, name: str, scores: dict[str, list[float]]) -> None:
    """``<name>.parquet`` as `metarec evaluate --per-user-output` writes it, and its JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.concat(
        pd.DataFrame({"method": method, "user_id": USERS, "ndcg@10": values})
        for method, values in scores.items()
    )
    frame.to_parquet(folder / f"{name}.parquet", index=False)
    (folder / f"{name}.json").write_text("{}")


def test_sasrec_is_the_mean_of_its_training_seeds(bench, tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    draws = {}  # (split seed, method, training seed) -> per-user ndcg@10
    for split in (0, 1):
        draws[split, "meta-lora", None] = rng.uniform(0.3, 0.6, len(USERS))
        draws[split, "itemknn", None] = rng.uniform(0.0, 0.2, len(USERS))
        for fit in (0, 1, 2):
            draws[split, "sasrec", fit] = rng.uniform(0.2, 0.5, len(USERS))
        runs = tmp_path / "runs" / f"seed{split}"
        write_part(runs, "llm_s5", {"llm-noadapt": draws[split, "itemknn", None],
                                    "llm-finetune": draws[split, "itemknn", None],
                                    "meta-lora": draws[split, "meta-lora", None]})  # fmt: skip
        baselines = tmp_path / "baselines" / f"seed{split}"
        write_part(baselines, "baselines_s5", {"itemknn": draws[split, "itemknn", None],
                                               "sasrec": draws[split, "sasrec", 0]})  # fmt: skip
        for fit in (1, 2):
            refit = {"sasrec": draws[split, "sasrec", fit]}
            write_part(baselines, f"baselines_s5_train{fit}", refit)
    output = tmp_path / "table.json"
    monkeypatch.setattr(sys, "argv", [
        "coldstart_llm.py", "--config", str(REPO / "configs" / "ml100k_smollm2.yaml"),
        "--run-dir", str(tmp_path / "runs"),
        "--baselines-dir", str(tmp_path / "baselines"), "--baselines", "itemknn,sasrec",
        "--split-seeds", "0,1", "--supports", "5", "--protocols", "coldstart",
        "--baseline-seeds", "0,1,2", "--json", str(output),
    ])  # fmt: skip
    bench.main()
    found = json.loads(output.read_text())

    per_fit = {
        fit: statistics.mean(float(draws[split, "sasrec", fit].mean()) for split in (0, 1))
        for fit in (0, 1, 2)
    }
    summary = found["training_seeds"]["support 5"]["sasrec"]
    assert summary["per_training_seed"] == pytest.approx({str(f): v for f, v in per_fit.items()})
    assert summary["mean"] == pytest.approx(statistics.mean(per_fit.values()))
    assert summary["sd"] == pytest.approx(statistics.stdev(per_fit.values()))
    # the paired difference is taken against each user's mean over the three SASRec fits
    differences = [
        meta - statistics.mean(draws[split, "sasrec", fit][user] for fit in (0, 1, 2))
        for split in (0, 1)
        for user, meta in enumerate(draws[split, "meta-lora", None])
    ]
    comparison = found["comparisons"]["support 5"]
    assert comparison["best_other"] == "sasrec"
    assert comparison["pairs"] == 2 * len(USERS)
    assert comparison["difference"] == pytest.approx(statistics.mean(differences))
    sasrec_mean = statistics.mean(per_fit.values())
    meta_mean = statistics.mean(float(draws[s, "meta-lora", None].mean()) for s in (0, 1))
    assert comparison["ratio"] == pytest.approx(meta_mean / sasrec_mean)
    changed = (tmp_path / "baselines" / "baselines_train2.yaml").read_text()
    assert "seed: 2" in changed


def test_the_llm_methods_are_the_mean_of_their_training_seeds(bench, tmp_path, monkeypatch):
    config = tmp_path / "seed1.yaml"
    config.write_text("seed: 1\n")  # its own run is coldstart/, seed 2's coldstart_train2/
    rng = np.random.default_rng(11)
    draws = {}  # (split seed, method, training seed) -> per-user ndcg@10
    for split in (0, 1):
        draws[split, "pop", None] = rng.uniform(0.1, 0.3, len(USERS))
        runs = tmp_path / "runs" / f"seed{split}"
        for fit, suffix in ((1, ""), (2, "_train2")):
            for method in bench.LLM_METHODS:
                draws[split, method, fit] = rng.uniform(0.2, 0.6, len(USERS))
            scores = {method: draws[split, method, fit] for method in bench.LLM_METHODS}
            write_part(runs, f"llm_s5{suffix}", scores)
        draws[split, "meta-lora-ensemble", None] = rng.uniform(0.2, 0.6, len(USERS))
        write_part(
            runs, "ensemble_s5", {"meta-lora-ensemble": draws[split, "meta-lora-ensemble", None]}
        )
        write_part(runs, "baselines_s5", {"pop": draws[split, "pop", None]})
    output = tmp_path / "table.json"
    monkeypatch.setattr(sys, "argv", [
        "coldstart_llm.py", "--config", str(config), "--run-dir", str(tmp_path / "runs"),
        "--baselines", "pop", "--split-seeds", "0,1", "--supports", "5",
        "--protocols", "coldstart", "--llm-seeds", "1,2", "--json", str(output),
    ])  # fmt: skip
    bench.main()
    found = json.loads(output.read_text())

    def mean_over_splits(method: str, fit: int) -> float:
        return statistics.mean(float(draws[split, method, fit].mean()) for split in (0, 1))

    summaries = found["training_seeds"]["support 5"]
    assert set(summaries) == set(bench.LLM_METHODS)
    for method in bench.LLM_METHODS:
        per_fit = {str(fit): mean_over_splits(method, fit) for fit in (1, 2)}
        assert summaries[method]["per_training_seed"] == pytest.approx(per_fit)
        assert summaries[method]["sd"] == pytest.approx(statistics.stdev(per_fit.values()))
    comparison = found["comparisons"]["support 5"]
    means = {
        method: statistics.mean(mean_over_splits(method, fit) for fit in (1, 2))
        for method in bench.LLM_METHODS
    }
    best = max(["llm-noadapt", "llm-finetune"], key=means.get)
    assert comparison["best_other"] == best
    assert comparison["ratio"] == pytest.approx(means["meta-lora"] / means[best])
    differences = [
        statistics.mean(draws[split, "meta-lora", fit][user] - draws[split, best, fit][user]
                        for fit in (1, 2))
        for split in (0, 1)
        for user in range(len(USERS))
    ]  # fmt: skip
    assert comparison["difference"] == pytest.approx(statistics.mean(differences))
    # the ensemble is one method per split seed, compared with the same best other
    ensemble = found["ensemble_comparisons"]["support 5"]
    ensemble_mean = mean_over_splits("meta-lora-ensemble", None)
    assert ensemble["best_other"] == best
    assert ensemble["ratio"] == pytest.approx(ensemble_mean / means[best])


def test_one_fit_per_method_keeps_its_figures(bench):
    frame = pd.DataFrame({
        "method": ["itemknn", "itemknn", "sasrec", "sasrec"],
        "seed": [0, 0, 0, 0],
        "user_id": ["a", "b", "a", "b"],
        "ndcg@10": [0.1, 0.3, 0.2, 0.4],
        "fit": [np.nan, np.nan, 0, 0],
    })  # fmt: skip
    pooled = bench.mean_over_fits(frame).set_index(["method", "user_id"])["ndcg@10"]
    assert pooled.to_dict() == {
        ("itemknn", "a"): 0.1, ("itemknn", "b"): 0.3, ("sasrec", "a"): 0.2, ("sasrec", "b"): 0.4
    }  # fmt: skip
