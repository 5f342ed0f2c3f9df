"""meta-lora-ensemble: two tiny runs trained with different seeds, each adapted on its own,
their log-softmax averaged; against the members scored one by one and combined in torch."""

import numpy as np
import pytest
import torch

from metarec.data.splits import ProtocolConfig
from metarec.errors import ConfigError
from metarec.eval.ranking import evaluate_cases
from metarec.jobs.evaluate import EvaluateConfig, evaluate
from metarec.meta.ensemble import mean_log_probabilities
from metarec.trained_run import TrainedRun
from tests.conftest import synthetic_files, train_tiny_run


def torch_mean_log_softmax(member_scores: list[np.ndarray]) -> np.ndarray:
    stacked = torch.tensor(np.stack(member_scores), dtype=torch.float64)
    return torch.log_softmax(stacked, dim=-1).mean(dim=0).numpy()


def test_mean_log_probabilities_ignores_each_members_offset():
    rng = np.random.default_rng(3)
    members = [rng.normal(size=(4, 30)) * scale for scale in (1.0, 5.0, 0.2)]
    expected = torch_mean_log_softmax(members)
    assert mean_log_probabilities(members) == pytest.approx(expected, abs=1e-12)
    # a member's logits are defined up to a per-user constant: it must not matter
    shifted = [members[0] + rng.normal(size=(4, 1)) * 100, *members[1:]]
    assert mean_log_probabilities(shifted) == pytest.approx(expected, abs=1e-9)


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ensemble")
    data = synthetic_files(folder, n_users=120, seed=4)
    for seed in (0, 1):
        train_tiny_run(folder / f"seed{seed}", data, seed=seed, index=False)
    return data, [folder / f"seed{seed}" / "run" for seed in (0, 1)]


def test_ensemble_ranks_by_the_members_mean_log_softmax(two_seeds):
    data, (first, second) = two_seeds
    config = EvaluateConfig(
        data=data,
        protocol=ProtocolConfig(support_size=5),
        methods=["meta-lora", "meta-lora-ensemble"],
        checkpoint=first,
        ensemble_checkpoints=[second],
        bootstrap_resamples=10,
    )
    result = evaluate(config)

    histories = [case.history for case in result.split.test]
    member_scores = [
        TrainedRun(run, data).recommender().score(histories) for run in (first, second)
    ]
    assert not np.allclose(member_scores[0], member_scores[1])  # the seeds made two models
    reference = torch_mean_log_softmax(member_scores)
    expected = evaluate_cases(lambda batch: reference, result.split.test, (10,), batch_size=10**6)
    found = result.per_user["meta-lora-ensemble"]
    assert found["ndcg@10"] == pytest.approx(expected["ndcg@10"])
    assert found["recall@10"] == pytest.approx(expected["recall@10"])
    alone = evaluate_cases(lambda batch: member_scores[0], result.split.test, (10,), 10**6)
    assert result.per_user["meta-lora"]["ndcg@10"] == pytest.approx(alone["ndcg@10"])


def test_ensemble_without_other_runs_is_refused(two_seeds):
    data, (first, _) = two_seeds
    config = EvaluateConfig(data=data, methods=["meta-lora-ensemble"], checkpoint=first)
    with pytest.raises(ConfigError, match="--ensemble-checkpoints"):
        evaluate(config)
