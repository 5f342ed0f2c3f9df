"""The support loss's softmax estimated on sampled items (``meta.support_negatives``, issue 19).

References: a per-position loop in plain Python floats for the loss; the whole softmax,
which a draw of every item must reproduce; a Monte-Carlo mean for the estimator; users
adapted one at a time for batch invariance; a meta step that projects the catalogue at
every call for the shared projection; an uninterrupted run for resume.
"""

import json
import math
import shutil
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import losses_and_gradients
from safetensors.torch import load_file

from metarec.data.episodes import EpisodeBatch, collate
from metarec.data.prepare import DataConfig
from metarec.data.synthetic import synthetic_raw
from metarec.errors import ConfigError
from metarec.hashing import sha256_of
from metarec.meta.algorithms import MetaConfig
from metarec.meta.losses import sampled_next_item_losses
from metarec.meta.meta_step import MetaStepModule
from metarec.meta.peft_loop import PeftUserLoop
from metarec.meta.personalise import (
    adapt_batch,
    adaptation_negatives,
    sample_negatives,
    support_loss_fn,
)
from metarec.models.backbone import BackboneConfig, load_backbone
from metarec.models.lora import LoRAConfig
from metarec.models.user_model import UserModel, UserModelConfig
from train.meta_train import TrainConfig, train

N_ITEMS = 40
HISTORIES = [np.array([3, 5, 7, 9, 11]), np.array([2, 4, 6]), np.array([30, 31, 32, 33])]


def tiny_model(text: bool = False) -> UserModel:
    """A float64 random model (eager attention: second order needs it); ``text``: items
    also carry random text vectors."""
    torch.manual_seed(0)
    config = UserModelConfig(
        backbone=BackboneConfig(name="tiny-llama", dtype="float64", attention="eager"),
        lora=LoRAConfig(rank=4, alpha=8.0),
        text_encoder="none",
        id_dim=16,
        item_dim=16,
    )
    text_vectors = torch.randn(N_ITEMS, 12, dtype=torch.float64) if text else None
    model = UserModel(config, load_backbone(config.backbone), text_vectors, N_ITEMS)
    torch.nn.init.normal_(model.id_embedding.weight, std=1.0)
    for layer in model.lora_layers.values():  # a trained init: B is not zero any more
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    return model


def support_batch(histories=HISTORIES) -> EpisodeBatch:
    return collate(histories, [np.empty(0, dtype=np.int64)] * len(histories))


def test_sampled_loss_equals_a_per_position_loop():
    generator = torch.Generator().manual_seed(1)
    users, positions, pool_size = 3, 4, 50
    negatives = torch.tensor([4, 9, 17, 23, 31])
    targets = torch.tensor([[9, 1, 2, 3], [5, 31, 31, 7], [0, 4, 9, 11]])  # hits: 9, 31, 4
    lengths = torch.tensor([5, 3, 4])  # real positions: 4, 2, 3
    positive = torch.randn(users, positions, generator=generator, dtype=torch.float64) * 3
    negative = torch.randn(users, positions, 5, generator=generator, dtype=torch.float64) * 3
    losses = sampled_next_item_losses(positive, negative, negatives, targets, lengths, pool_size)
    expected = []
    for u in range(users):
        per_position = []
        for t in range(int(lengths[u]) - 1):
            others = [
                math.exp(float(negative[u, t, j]))
                for j in range(5)
                if int(negatives[j]) != int(targets[u, t])
            ]
            partition = math.exp(float(positive[u, t])) + (pool_size - 1) / len(others) * sum(
                others
            )
            per_position.append(math.log(partition) - float(positive[u, t]))
        expected.append(sum(per_position) / len(per_position))
    torch.testing.assert_close(losses, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("held_out", [False, True])
def test_drawing_every_ranked_item_is_the_whole_softmax(held_out):
    """Every ranked item drawn: each target is drawn once, the weight is (P−1)/(P−1) = 1."""
    model = tiny_model()
    batch = support_batch()
    unranked = None
    if held_out:  # no support item is held out, as in training
        unranked = torch.zeros(N_ITEMS, dtype=torch.bool)
        unranked[[0, 1, 20, 25, 39]] = True
    everything = torch.arange(N_ITEMS) if unranked is None else (~unranked).nonzero()[:, 0]
    expected, expected_grads = losses_and_gradients(
        model, support_loss_fn(model, batch, unranked), len(HISTORIES)
    )
    losses, grads = losses_and_gradients(
        model, support_loss_fn(model, batch, unranked, everything), len(HISTORIES)
    )
    torch.testing.assert_close(losses, expected, rtol=1e-10, atol=1e-10)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-9)


def test_estimated_partition_is_unbiased():
    """exp(loss + positive) = exp(positive) + the estimate; over many uniform draws its
    mean is the whole partition function."""
    generator = torch.Generator().manual_seed(2)
    scores = torch.randn(N_ITEMS, generator=generator, dtype=torch.float64)
    target = 7
    estimates = []
    for _ in range(4000):
        draw = sample_negatives(N_ITEMS, 6, None, generator)
        loss = sampled_next_item_losses(
            scores[target].view(1, 1),
            scores[draw].view(1, 1, -1),
            draw,
            torch.tensor([[target]]),
            torch.tensor([2]),
            N_ITEMS,
        )
        estimates.append(math.exp(float(loss) + float(scores[target])))
    whole = float(torch.exp(scores).sum())
    assert np.mean(estimates) == pytest.approx(whole, rel=0.02)


def test_negatives_are_distinct_uniform_ranked_and_fixed_by_the_seed():
    unranked = torch.zeros(N_ITEMS, dtype=torch.bool)
    unranked[:10] = True
    counts = np.zeros(N_ITEMS)
    generator = torch.Generator().manual_seed(3)
    for _ in range(3000):
        drawn = sample_negatives(N_ITEMS, 6, unranked, generator)
        assert len(set(drawn.tolist())) == 6
        counts[drawn.numpy()] += 1
    assert counts[:10].sum() == 0
    # each of the 30 ranked items is drawn 6/30 of the time: 600 of 3000
    np.testing.assert_allclose(counts[10:], 600, rtol=0.15)
    first = sample_negatives(N_ITEMS, 6, None, torch.Generator().manual_seed(5))
    again = sample_negatives(N_ITEMS, 6, None, torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    assert sample_negatives(N_ITEMS, None) is None
    assert sample_negatives(N_ITEMS, N_ITEMS - 1) is None  # every other item: exact instead
    assert sample_negatives(N_ITEMS, 29, unranked) is None  # 30 ranked items
    assert len(sample_negatives(N_ITEMS, 28, unranked)) == 28


def test_support_negatives_below_two_is_refused():
    with pytest.raises(ConfigError, match="meta.support_negatives 1: expected null"):
        MetaConfig(support_negatives=1)


def test_adaptation_with_negatives_does_not_depend_on_the_batch():
    model = tiny_model()
    meta = MetaConfig(algorithm="fomaml", inner_steps=2, inner_lr=0.5, support_negatives=8)
    negatives = adaptation_negatives(model, meta)
    assert torch.equal(negatives, adaptation_negatives(model, meta))
    together = adapt_batch(model, support_batch(), meta, None, 2)
    for user, history in enumerate(HISTORIES):
        alone = adapt_batch(model, support_batch([history]), meta, None, 2)
        for name, (a, b) in alone.items():
            torch.testing.assert_close(a[0], together[name][0][user], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(b[0], together[name][1][user], rtol=1e-12, atol=1e-12)
    whole = adapt_batch(model, support_batch(), replace(meta, support_negatives=None), None, 2)
    name = next(iter(whole))
    assert (whole[name][1] - together[name][1]).abs().max() > 1e-6  # the sample mattered


def projected_each_time(model: UserModel, hidden_ids=None):
    """`UserModel.shared_item_vectors` undone: every call projects the catalogue again."""
    return nullcontext()


def meta_gradient(model, meta, shared: bool, monkeypatch) -> list[torch.Tensor]:
    if not shared:
        monkeypatch.setattr(UserModel, "shared_item_vectors", projected_each_time)
    step = MetaStepModule(model, meta, None)
    batch = collate(HISTORIES, [np.array([1, 8]), np.array([12]), np.array([0, 2, 4])])
    model.zero_grad()
    step(batch.support, batch.support_lengths, batch.query).backward()
    monkeypatch.undo()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("algorithm", ["fomaml", "maml"])
def test_one_shared_catalogue_projection_keeps_the_meta_gradient(algorithm, monkeypatch):
    model = tiny_model(text=True)
    meta = MetaConfig(algorithm=algorithm, inner_steps=2, inner_lr=0.5)
    shared = meta_gradient(model, meta, True, monkeypatch)
    projected_each_time = meta_gradient(model, meta, False, monkeypatch)
    assert model.item_projection.weight.grad.abs().max() > 0
    for grad, expected in zip(shared, projected_each_time, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def data_config(tmp_path_factory) -> DataConfig:
    folder = tmp_path_factory.mktemp("synthetic")
    synthetic_raw(n_users=120, seed=2).write_csv(folder)
    return DataConfig(
        dataset="custom",
        interactions=folder / "interactions.csv",
        items=folder / "items.csv",
        cache_dir=folder / "cache",
    )


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    newest = sorted((run_dir / "state").glob("step-*"))[-1]
    return {name: t.clone() for name, t in load_file(newest / "trainable.safetensors").items()}


def test_a_resumed_step_draws_the_uninterrupted_steps_negatives(data_config, tmp_path):
    """The newest state removed, a resume redoes the last step from the one before: with
    the generator restored it lands on the same weights; with another generator state (other
    negatives) it does not, so the draw is what the state must carry."""
    config = TrainConfig(
        data=data_config,
        model=UserModelConfig(
            backbone=BackboneConfig(name="tiny-llama"),
            lora=LoRAConfig(rank=4, alpha=8.0),
            text_encoder="none",
            id_dim=16,
            item_dim=16,
        ),
        meta=MetaConfig(algorithm="fomaml", inner_steps=2, inner_lr=0.5, support_negatives=8),
        support_sizes=[5, 10],
        epochs=1,
        outer_lr=3e-3,
        users_per_batch=16,
        state_every=1,
        output_dir=tmp_path / "run",
    )
    train(config)
    uninterrupted = final_weights(tmp_path / "run")
    states = sorted((tmp_path / "run" / "state").glob("step-*"))
    previous = tmp_path / "previous"
    shutil.copytree(states[-2], previous)
    for reseeded in (False, True):
        for state in sorted((tmp_path / "run" / "state").glob("step-*")):
            shutil.rmtree(state)
        shutil.copytree(previous, states[-2])
        if reseeded:
            client = json.loads((states[-2] / "client.json").read_text())
            client["torch_rng_state"] = torch.Generator().manual_seed(9).get_state().tolist()
            (states[-2] / "client.json").write_text(json.dumps(client))
            manifest = json.loads((states[-2] / "manifest.json").read_text())
            manifest["client.json"] = sha256_of(states[-2] / "client.json")
            (states[-2] / "manifest.json").write_text(json.dumps(manifest))
        train(replace(config), resume=True)
        redone = final_weights(tmp_path / "run")
        gap = max((redone[n] - uninterrupted[n]).abs().max() for n in uninterrupted)
        assert (gap > 1e-6) if reseeded else (gap == 0), reseeded


def test_the_per_user_peft_reference_refuses_a_sampling_run(tmp_path):
    """The peft loop (the benches' reference) adapts on the whole softmax: comparing it with
    a run that samples would compare two losses."""
    meta = MetaConfig(algorithm="fomaml", inner_steps=2, inner_lr=0.5, support_negatives=8)
    with pytest.raises(ConfigError, match=r"support_negatives \(8\) samples its 40 items"):
        PeftUserLoop(tiny_model(), tmp_path, meta)
