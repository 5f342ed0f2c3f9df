"""Score fusion learns to trust the member that ranks validation users' items well."""

from pathlib import Path

import numpy as np
import pytest

from metarec.baselines.fusion import Fusion, FusionConfig, simplex_grid, zscores
from metarec.data.splits import UserCase
from metarec.eval.ranking import evaluate_cases
from metarec.eval.recommender import Recommender

N_ITEMS = 60
REPO = Path(__file__).resolve().parents[1]


class Planted(Recommender):
    """Scores each user's planted relevant items higher by ``signal`` on a noisy scale."""

    def __init__(self, relevant: dict[int, np.ndarray], signal: float, scale: float, seed: int):
        self.relevant, self.signal, self.scale, self.seed = relevant, signal, scale, seed
        self.fitted = 0

    def fit(self, train_sequences, n_items, valid):
        self.fitted += 1

    def score(self, histories):
        rows = []
        for history in histories:
            user = int(history[0])  # each synthetic user's first history item names it
            rng = np.random.default_rng([self.seed, user])
            row = rng.standard_normal(N_ITEMS)
            row[self.relevant[user]] += self.signal
            rows.append(self.scale * row + 1000.0)  # offset and scale fusion must undo
        return np.array(rows, dtype=np.float32)


def cases(users, relevant):
    return [UserCase(u, np.array([u]), relevant[u]) for u in users]


@pytest.fixture()
def setup():
    rng = np.random.default_rng(0)
    relevant = {u: rng.choice(np.arange(50, N_ITEMS), 3, replace=False) for u in range(50)}
    good = Planted(relevant, signal=2.0, scale=0.01, seed=1)  # small scale, strong signal
    noise = Planted(relevant, signal=0.0, scale=100.0, seed=2)  # large scale, no signal
    return relevant, good, noise


@pytest.mark.parametrize("stacking", [False, True])
def test_fusion_recovers_the_better_member(setup, stacking):
    relevant, good, noise = setup
    fusion = Fusion(FusionConfig(grid_step=0.1), {"noise": noise, "good": good}, stacking)
    fusion.fit([], N_ITEMS, cases(range(25), relevant))
    assert good.fitted == noise.fitted == 1
    if stacking:
        assert fusion.weights["good"] > 5 * abs(fusion.weights["noise"])
    else:
        assert fusion.weights == pytest.approx({"noise": 0.0, "good": 1.0})
    test = cases(range(25, 50), relevant)
    fused = evaluate_cases(fusion.score, test, (10,))["ndcg@10"].mean()
    alone = evaluate_cases(good.score, test, (10,))["ndcg@10"].mean()
    assert fused == pytest.approx(alone, abs=0.02)


def test_prefitted_members_are_not_fitted_again(setup):
    relevant, good, noise = setup
    fusion = Fusion(FusionConfig(), {"noise": noise, "good": good}, prefitted={"good"})
    fusion.fit([], N_ITEMS, cases(range(10), relevant))
    assert (good.fitted, noise.fitted) == (0, 1)


def test_grid_and_zscores():
    grid = simplex_grid(3, 0.5)
    assert sorted(map(tuple, grid)) == sorted(
        [(0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)]
    )
    scores = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    np.testing.assert_allclose(zscores(scores), [[-1.2247449, 0, 1.2247449], [0, 0, 0]])


def test_evaluate_reports_fusion_and_its_weights(trained_run, tmp_path):
    import json

    import yaml

    from metarec.cli import main

    folder, _, data_options = trained_run
    config = tmp_path / "baselines.yaml"
    hyperparameters = yaml.safe_load((REPO / "configs" / "baselines.yaml").read_text())
    hyperparameters["fusion"] = {"members": ["meta-lora", "itemknn", "pop"]}
    config.write_text(yaml.safe_dump(hyperparameters))
    output = tmp_path / "results.json"
    status = main(["evaluate", *data_options, "--checkpoint", str(folder / "run"),
                   "--support-size", "5", "--methods", "pop,itemknn,fusion,fusion-stack",
                   "--baselines-config", str(config), "--bootstrap-resamples", "50",
                   "--output", str(output)])  # fmt: skip
    assert status == 0
    results = json.loads(output.read_text())
    weights = results["fusion_weights"]["fusion"]
    assert list(weights) == ["meta-lora", "itemknn", "pop"]
    assert sum(weights.values()) == pytest.approx(1.0)
    assert set(results["methods"]) == {"pop", "itemknn", "fusion", "fusion-stack"}
