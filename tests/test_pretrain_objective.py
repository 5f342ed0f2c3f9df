"""``pretrain_objective: next_item``: windows that cover every history, and an objective
that is plain next-item cross-entropy at every position of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_user_model
from torch.nn import functional as F

from metarec.data.episodes import collate, history_windows
from metarec.data.synthetic import synthetic_raw
from metarec.errors import ConfigError
from metarec.meta.algorithms import MetaConfig
from metarec.meta.meta_step import MetaStepModule
from metarec.models.user_model import UserModel
from metarec.trained_run import TrainConfig


def test_windows_cover_every_position_once():
    rng = np.random.default_rng(3)
    sequences = [rng.permutation(50)[: int(n)] for n in rng.integers(1, 40, size=30)]
    windows = history_windows(sequences, 7, np.random.default_rng(0))
    assert all(2 <= len(window) <= 7 and len(query) == 0 for window, query in windows)
    covered = sorted(tuple(window) for window, _ in windows)
    # every history cut into 7-item pieces from its start; a 1-item last piece predicts nothing
    expected = sorted(
        tuple(sequence[start : start + 7])
        for sequence in sequences
        for start in range(0, len(sequence), 7)
        if len(sequence) - start >= 2
    )
    assert covered == expected


def test_next_item_objective_is_cross_entropy_at_every_position(tmp_path):
    raw = synthetic_raw(n_users=20, n_items=30, seed=1)
    sequences = [
        group["item_id"].to_numpy() - 1 for _, group in raw.interactions.groupby("user_id")
    ]
    torch.manual_seed(0)
    model = UserModel.build(tiny_user_model(), [f"item {i}" for i in range(30)], tmp_path)
    windows = [window for window, _ in history_windows(sequences, 9, np.random.default_rng(1))][:5]
    batch = collate(windows, [np.zeros(0, dtype=np.int64)] * len(windows))
    module = MetaStepModule(model, MetaConfig(inner_steps=0), None)
    module.next_item = True
    objective = module(batch.support, batch.support_lengths, batch.query)
    per_window = []
    for window in windows:  # one window at a time, no padding
        items = torch.from_numpy(window)[None]
        scores = model.scores(model.states(items, torch.tensor([len(window)])))[0]
        per_window.append(F.cross_entropy(scores[:-1], items[0, 1:]))
    assert objective.item() == pytest.approx(torch.stack(per_window).mean().item(), rel=1e-5)


def test_an_unknown_pretrain_objective_is_refused():
    with pytest.raises(ConfigError, match="pretrain_objective 'softmax'"):
        TrainConfig(pretrain_objective="softmax")
