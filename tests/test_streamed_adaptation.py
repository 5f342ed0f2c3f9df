"""Serving memory that does not grow with the catalogue or the users (issue 19).

References are the straightforward forms: the training support loss over a whole (U, T, N)
score tensor, the catalogue projected in one pass, and the histories table grouped user by
user with pandas.
"""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import losses_and_gradients

from metarec.data.episodes import collate
from metarec.meta.personalise import streamed_support_loss_fn, support_loss_fn
from metarec.models.backbone import BackboneConfig, load_backbone
from metarec.models.lora import LoRAConfig, initial_fast_weights
from metarec.models.user_model import UserModel, UserModelConfig

pytest.importorskip("faiss", reason='needs FAISS: pip install -e ".[cpu]" (or ".[gpu]")')

from retrieval.rerank import file_inputs  # noqa: E402  (after the FAISS skip)

N_ITEMS = 40
HISTORIES = [np.array([3, 5, 7, 9, 11]), np.array([2, 4, 6]), np.array([30, 31, 32, 33])]


def tiny_model(spread: float = 1.0) -> UserModel:
    """A float64 random model (so the two loss forms agree to rounding), items spread by
    ``spread``: a large one makes logits large, where a naive sum of exponentials overflows."""
    torch.manual_seed(0)
    config = UserModelConfig(
        backbone=BackboneConfig(name="tiny-llama", dtype="float64"),
        lora=LoRAConfig(rank=4, alpha=8.0),
        text_encoder="none",
        id_dim=16,
        item_dim=16,
    )
    model = UserModel(config, load_backbone(config.backbone), None, N_ITEMS)
    torch.nn.init.normal_(model.id_embedding.weight, std=spread)
    for layer in model.lora_layers.values():  # a trained init: B is not zero any more
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    return model


@pytest.mark.parametrize("spread", [1.0, 300.0])
@pytest.mark.parametrize("chunk_items", [1, 7, N_ITEMS])
def test_streamed_support_loss_and_gradient_equal_the_whole_softmax(spread, chunk_items):
    model = tiny_model(spread)
    batch = collate(HISTORIES, [np.empty(0, dtype=np.int64)] * len(HISTORIES))
    whole = support_loss_fn(model, batch)
    expected, expected_grads = losses_and_gradients(model, whole, len(HISTORIES))
    streamed = streamed_support_loss_fn(model, batch, chunk_items)
    losses, grads = losses_and_gradients(model, streamed, len(HISTORIES))
    assert torch.isfinite(expected).all() and expected.max() > (10 if spread > 1 else 0)
    torch.testing.assert_close(losses, expected, rtol=1e-10, atol=1e-10)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-9)


def test_streamed_support_loss_refuses_to_build_a_second_derivative():
    model = tiny_model()
    batch = collate(HISTORIES, [np.empty(0, dtype=np.int64)] * len(HISTORIES))
    fast = {
        name: (a.detach().requires_grad_(), b.detach().requires_grad_())
        for name, (a, b) in initial_fast_weights(model.lora_layers, len(HISTORIES)).items()
    }
    flat = [tensor for pair in fast.values() for tensor in pair]
    losses = streamed_support_loss_fn(model, batch, 7)(fast)
    with pytest.raises(RuntimeError, match="first order"):
        torch.autograd.grad(losses.sum(), flat, create_graph=True)


def test_catalogue_projected_in_chunks_equals_the_whole_projection():
    model = tiny_model()
    with torch.no_grad():
        whole = model.item_vectors()
    chunks = list(model.catalogue_chunks(chunk_rows=7))
    assert [start for start, _ in chunks] == list(range(0, N_ITEMS, 7))
    torch.testing.assert_close(torch.cat([vectors for _, vectors in chunks]), whole)
    with model.frozen_item_vectors():
        torch.testing.assert_close(model.held_vectors, whole, rtol=0, atol=0)


def grouped_reference(table: pd.DataFrame, item_ids: np.ndarray, path) -> list[tuple]:
    """(user id, history, problem) per user the straightforward way: sort, then group by user."""
    table = table.assign(line=np.arange(len(table)))
    table = table.sort_values(["timestamp", "line"], kind="stable")
    position = pd.Index(item_ids.astype(str)).get_indexer(table["item_id"].astype(str))
    table = table.assign(position=position)
    users = []
    for user, history in table.groupby("user_id", sort=False):
        unknown = history["item_id"][history["position"] < 0].tolist()
        problem = f"unknown item ids {unknown[:5]} in {path}" if unknown else None
        users.append((user, history["position"].to_numpy(), problem))
    return users


@pytest.mark.parametrize("text_ids", [False, True])
def test_histories_file_reads_into_what_grouping_user_by_user_gives(tmp_path, text_ids):
    rng = np.random.default_rng(3)
    item_ids = np.arange(100, 160)
    rows = 400
    table = pd.DataFrame(
        {
            "user_id": rng.integers(0, 70, rows),
            "item_id": rng.choice(np.concatenate([item_ids, [7, 8, 9]]), rows),  # 7-9 unknown
            "timestamp": rng.integers(0, 50, rows),  # ties: file order decides
        }
    )
    if text_ids:
        item_ids = np.array([f"i{i}" for i in item_ids], dtype=object)
        table["user_id"] = "u" + table["user_id"].astype(str)
        table["item_id"] = "i" + table["item_id"].astype(str)
    path = tmp_path / "histories.csv"
    table.to_csv(path, index=False)
    inputs = file_inputs(path, SimpleNamespace(item_ids=item_ids))
    expected = grouped_reference(table, item_ids, path)
    assert len(inputs) == len(expected) and sum(bool(p) for *_, p in expected) > 3
    got = inputs.users(range(len(inputs)))
    for user, (user_id, history, problem) in zip(got, expected, strict=True):
        assert str(user.user_id) == str(user_id)
        np.testing.assert_array_equal(user.history, history)
        assert user.problem == problem
