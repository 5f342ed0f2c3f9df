"""coldstart-items (docs/protocols.md): new users meet new items.

Each part against a reference computed another way: the split re-derived in plain Python
from the documented draws, the held-out metrics by hand, the content baseline's scores as
explicit cosines, and the training mask by the id embedding rows it must leave at zero.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import synthetic_files, tiny_user_model

from metarec.baselines import build_baseline
from metarec.baselines.content import Content, ContentConfig
from metarec.cli import main
from metarec.data.episodes import collate, sample_episodes
from metarec.data.splits import ProtocolConfig, UserCase, make_split
from metarec.errors import ConfigError, MetarecError
from metarec.eval.ranking import ranked_cases
from metarec.jobs.evaluate import summarise
from metarec.meta.algorithms import MetaConfig
from metarec.meta.meta_step import MetaStepModule
from metarec.trained_run import TrainedRun
from train.meta_train import MetaTrainRecipe, TrainConfig


def test_split_is_the_plain_python_rederivation_of_the_documented_draws(synthetic_dataset):
    arrays = synthetic_dataset.sequences()
    sequences = [[int(item) for item in history] for history in arrays]
    n_users, n_items, seed, support, query = len(sequences), synthetic_dataset.n_items, 3, 5, 4
    protocol = ProtocolConfig("coldstart-items", support_size=support, query_size=query,
                              split_seed=seed)  # fmt: skip
    split = make_split(arrays, n_items, protocol)

    held = set(np.random.default_rng([seed, 1]).permutation(n_items)[: n_items // 5].tolist())
    users = np.random.default_rng(seed).permutation(n_users).tolist()
    n_train, n_valid = int(0.7 * n_users), int(0.1 * n_users)
    train, valid = sorted(users[:n_train]), sorted(users[n_train : n_train + n_valid])
    test = sorted(users[n_train + n_valid :])

    def known(user):
        return [item for item in sequences[user] if item not in held]

    def cut(history):
        return history[:support], history[support : support + query]

    assert split.held_out_items.tolist() == sorted(held)
    assert [s.tolist() for s in split.train_sequences] == [known(user) for user in train]
    expected_valid = [(u, *cut(known(u))) for u in valid if len(known(u)) > support]
    assert [(c.user, c.history.tolist(), c.relevant.tolist()) for c in split.valid] == (
        expected_valid
    )
    expected_test = [(u, *cut(sequences[u])) for u in test if len(sequences[u]) > support]
    assert [(c.user, c.history.tolist(), c.relevant.tolist()) for c in split.test] == (
        expected_test
    )
    # the held-out items matter here: training users lose some, test queries hold some
    in_query = [sum(item in held for item in relevant) for _, _, relevant in expected_test]
    assert split.counts["test_query_held_out"] == sum(in_query) > 0
    assert split.counts["test_users_with_held_out_query"] == sum(n > 0 for n in in_query)
    removed = sum(len(sequences[user]) - len(known(user)) for user in train)
    assert split.counts["train_interactions_removed"] == removed > 0
    assert split.counts["held_out_items"] == len(held) == 24


def test_held_out_metrics_rank_once_and_count_only_held_out_query_items():
    """Three users over 12 items, held-out items {1, 4, 7}. Scores fall along each user's
    order; the history (scored highest) is excluded, so ranks follow the order."""
    held_out = np.array([1, 4, 7])
    orders = {
        0: [3, 4, 5, 6, 2, 8, 9, 10, 11, 7, 1],  # user A, history [0]
        1: [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11],  # user B, history [5]
        2: [7, 0, 3, 1, 4, 5, 6, 8, 9, 10, 11],  # user C, history [2]
    }
    cases = [
        UserCase(0, np.array([0]), np.array([2, 4, 1])),  # held out: 4 (rank 2), 1 (rank 11)
        UserCase(1, np.array([5]), np.array([3, 6])),  # none held out
        UserCase(2, np.array([2]), np.array([7, 3])),  # held out: 7 (rank 1)
    ]
    scores = np.zeros((3, 12))
    for row, case in enumerate(cases):
        scores[row, orders[row]] = np.arange(20, 9, -1)
        scores[row, case.history] = 100.0

    per_user, _ = ranked_cases(lambda histories: scores, cases, (10,), held_out=held_out)

    def gain(rank):
        return 1 / math.log2(rank + 1)

    ndcg_a = gain(2) / (gain(1) + gain(2))  # only rank 2 of the two is in the top 10
    np.testing.assert_allclose(per_user["held_out_recall@10"], [1 / 2, np.nan, 1.0])
    np.testing.assert_allclose(per_user["held_out_ndcg@10"], [ndcg_a, np.nan, 1.0])
    # the whole query: A hits 2 (rank 5) and 4 (rank 2) of three, C hits 7 (1) and 3 (3)
    np.testing.assert_allclose(per_user["recall@10"][[0, 2]], [2 / 3, 1.0])
    all_a = (gain(2) + gain(5)) / (gain(1) + gain(2) + gain(3))
    all_c = (gain(1) + gain(3)) / (gain(1) + gain(2))
    np.testing.assert_allclose(per_user["ndcg@10"][[0, 2]], [all_a, all_c])
    # means over the users the held-out set covers (A and C), the others over all three
    summary = summarise(per_user, 20, 0)
    assert summary["held_out_recall@10"] == pytest.approx(0.75)
    assert summary["held_out_ndcg@10"] == pytest.approx((ndcg_a + 1.0) / 2)
    assert summary["recall@10"] == pytest.approx(per_user["recall@10"].mean())


def test_content_scores_are_mean_cosines_to_the_history():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(9, 5)) * rng.uniform(0.5, 3.0, size=(9, 1))  # not unit length
    asked = []

    def text_vectors(encoder):
        asked.append(encoder)
        return vectors

    method = build_baseline("content", {"content": {"text_encoder": "my-encoder"}}, text_vectors)
    method.fit([], 9, [])
    histories = [np.array([2, 5, 7]), np.array([0]), np.array([], dtype=np.int64)]
    scores = method.score(histories)

    def cosine(a, b):
        return float(a @ b / np.sqrt(a @ a) / np.sqrt(b @ b))

    for row, history in enumerate(histories):
        for item in range(9):
            cosines = [cosine(vectors[item], vectors[other]) for other in history]
            expected = sum(cosines) / len(cosines) if cosines else 0.0
            assert scores[row, item] == pytest.approx(expected, abs=1e-6)
    assert asked == ["my-encoder"]
    with pytest.raises(ConfigError, match="content scores item text"):
        build_baseline("content", {})
    with pytest.raises(MetarecError, match="9 item texts for 10 items"):
        Content(ContentConfig(), text_vectors).fit([], 10, [])


@pytest.fixture(scope="module")
def data_config(tmp_path_factory):
    return synthetic_files(tmp_path_factory.mktemp("synthetic"), n_users=120, seed=2)


def data_options(data):
    return ["--dataset", "custom", "--interactions", str(data.interactions),
            "--items", str(data.items), "--cache-dir", str(data.cache_dir)]  # fmt: skip


def tiny_config(data, output_dir, protocol="coldstart-items", algorithm="fomaml"):
    return TrainConfig(
        data=data,
        model=tiny_user_model(),
        meta=MetaConfig(algorithm=algorithm, inner_steps=2, inner_lr=0.5),
        protocol=protocol,
        support_sizes=[5, 10],
        pretrain_epochs=1,
        epochs=1,
        outer_lr=3e-2,
        users_per_batch=16,
        output_dir=output_dir,
    )


@pytest.fixture(scope="module")
def items_run(data_config, tmp_path_factory):
    """A tiny coldstart-items run (pretraining and meta stages), its id embeddings at the start."""
    recipe = MetaTrainRecipe(tiny_config(data_config, tmp_path_factory.mktemp("items") / "run"))
    recipe.setup()
    start = recipe.model.id_embedding.weight.detach().clone()
    recipe.train()
    recipe.cleanup()
    return recipe, start


def test_training_leaves_held_out_id_embeddings_exactly_zero(items_run, data_config):
    recipe, start = items_run
    held_out = torch.from_numpy(recipe.split.held_out_items)
    known = torch.ones(recipe.n_items, dtype=torch.bool)
    known[held_out] = False
    trained = recipe.model.id_embedding.weight.detach()
    assert torch.equal(start[held_out], torch.zeros_like(start[held_out]))
    assert torch.equal(trained[held_out], torch.zeros_like(trained[held_out]))
    assert (trained[known] != start[known]).any(dim=1).float().mean() > 0.5  # others learn
    # the saved runs (the meta stage's and its pretraining stage's) hold the same zeros
    for folder in (recipe.config.output_dir, recipe.config.output_dir / "pretrained"):
        saved = TrainedRun(folder, data_config).model.id_embedding.weight.detach()
        assert torch.equal(saved[held_out], torch.zeros_like(saved[held_out]))
    # and nothing the model trained or selected epochs on holds a held-out item
    seen = [*recipe.split.train_sequences, *(c.history for c in recipe.split.valid),
            *(c.relevant for c in recipe.split.valid)]  # fmt: skip
    assert not np.isin(np.concatenate(seen), recipe.split.held_out_items).any()


def test_the_mask_is_what_keeps_gradient_off_held_out_items(data_config, tmp_path):
    """One second-order meta step (support and query softmaxes both differentiated): the
    held-out rows' gradient is exactly zero with the mask and not without it."""
    recipe = MetaTrainRecipe(tiny_config(data_config, tmp_path / "run", algorithm="maml"))
    recipe.setup()
    episodes = sample_episodes(recipe.split.train_sequences, [5, 10], 10, recipe.rng)[:8]
    batch = collate([s for s, _ in episodes], [q for _, q in episodes])
    held_out = torch.from_numpy(recipe.split.held_out_items)
    gradients = {}
    for label, unranked in (("masked", recipe.step_module.unranked), ("unmasked", None)):
        module = MetaStepModule(recipe.model, recipe.config.meta, None, unranked)
        recipe.model.zero_grad()
        module(batch.support, batch.support_lengths, batch.query).backward()
        gradients[label] = recipe.model.id_embedding.weight.grad[held_out].clone()
    recipe.cleanup()
    assert torch.equal(gradients["masked"], torch.zeros_like(gradients["masked"]))
    assert gradients["unmasked"].abs().max() > 0


@pytest.fixture(scope="module")
def coldstart_run(data_config, tmp_path_factory):
    config = tiny_config(data_config, tmp_path_factory.mktemp("cold") / "run", "coldstart")
    config.pretrain_epochs = 0
    recipe = MetaTrainRecipe(config)
    recipe.setup()
    recipe.train()
    recipe.cleanup()
    return config.output_dir


def test_runs_are_evaluated_only_on_the_split_they_held_out(
    items_run, coldstart_run, data_config, tmp_path, capsys
):
    common = ["evaluate", *data_options(data_config), "--methods", "meta-lora",
              "--bootstrap-resamples", "10"]  # fmt: skip
    items_dir = str(items_run[0].config.output_dir)
    assert main([*common, "--protocol", "coldstart-items", "--checkpoint", str(coldstart_run)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert error[0].endswith(
        "trained on the coldstart split, so it can be evaluated on coldstart, not "
        "coldstart-items (whose held-out items it trained on)"
    )
    assert main([*common, "--protocol", "coldstart", "--checkpoint", items_dir]) == 2
    assert "not coldstart (whose baselines train on the items it held out)" in (
        capsys.readouterr().err
    )
    seed = ["--protocol", "coldstart-items", "--split-seed", "1", "--checkpoint", items_dir]
    assert main([*common, *seed]) == 2
    assert "split seed 0 (given 1)" in capsys.readouterr().err
    output = tmp_path / "results.json"
    assert main([*common, "--protocol", "coldstart-items", "--checkpoint", items_dir,
                 "--output", str(output)]) == 0  # fmt: skip
    assert "held_out_ndcg@10" in json.loads(output.read_text())["methods"]["meta-lora"]


def test_evaluate_reports_both_metric_sets_and_who_cannot_rank_new_items(
    data_config, tmp_path, capsys
):
    output = tmp_path / "results.json"
    status = main(["evaluate", *data_options(data_config), "--protocol", "coldstart-items",
                   "--methods", "pop,itemknn,content", "--bootstrap-resamples", "50",
                   "--output", str(output)])  # fmt: skip
    assert status == 0
    results = json.loads(output.read_text())
    split = results["split"]
    assert results["cannot_rank_new_items"] == ["pop", "itemknn"]
    assert split["held_out_items"] == 24 and split["test_users_with_held_out_query"] > 0
    methods = results["methods"]
    # scored 0, a held-out item ranks below every item these two learned anything about
    assert methods["pop"]["held_out_recall@10"] == methods["itemknn"]["held_out_recall@10"] == 0
    # the synthetic items' text names their topic, and users keep to their topics
    assert methods["content"]["held_out_recall@10"] > 0.1
    printed = capsys.readouterr().out
    assert f"over the {split['test_users_with_held_out_query']} test users" in printed
    assert "pop, itemknn learn items from interactions only" in printed


def test_id_dropout_hides_a_fresh_set_of_ids_per_step(data_config, tmp_path):
    """One meta step with id_dropout 0.5: the items it drew (replayed from the same torch
    seed) are projected from a zero id and get exactly no id gradient, while most others
    do; without dropout the step draws no random number at all."""
    recipe = MetaTrainRecipe(tiny_config(data_config, tmp_path / "run", protocol="coldstart"))
    recipe.setup()
    model = recipe.model
    episodes = sample_episodes(recipe.split.train_sequences, [5, 10], 10, recipe.rng)[:8]
    batch = collate([s for s, _ in episodes], [q for _, q in episodes])
    module = MetaStepModule(model, recipe.config.meta, None, None, id_dropout=0.5)
    torch.manual_seed(7)
    model.zero_grad()
    module(batch.support, batch.support_lengths, batch.query).backward()
    torch.manual_seed(7)
    hidden = torch.rand(recipe.n_items) < 0.5
    gradient = model.id_embedding.weight.grad
    assert 0 < hidden.sum() < recipe.n_items
    assert torch.equal(gradient[hidden], torch.zeros_like(gradient[hidden]))
    assert (gradient[~hidden] != 0).any(dim=1).float().mean() > 0.5
    with torch.no_grad():
        vectors = model.item_vectors(hidden_ids=hidden)
        whole = model.item_vectors()
        text_only = model.item_projection(torch.zeros(model.config.id_dim))
    torch.testing.assert_close(vectors[~hidden], whole[~hidden], rtol=0, atol=0)
    torch.testing.assert_close(vectors[hidden], text_only.expand(int(hidden.sum()), -1))
    state = torch.get_rng_state()
    MetaStepModule(model, recipe.config.meta, None)(
        batch.support, batch.support_lengths, batch.query
    )
    assert torch.equal(torch.get_rng_state(), state)
    recipe.cleanup()


def test_id_dropout_outside_zero_to_one_is_refused(data_config, tmp_path):
    with pytest.raises(ConfigError, match=r"id_dropout 1.0: expected a fraction in \[0, 1\)"):
        TrainConfig(data=data_config, id_dropout=1.0)
