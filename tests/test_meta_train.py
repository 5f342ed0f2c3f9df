"""The meta-training recipe on synthetic data with a tiny random-weight Llama."""

import json

import numpy as np
import pytest
import torch
from peft import PeftModel

from metarec.cli import main
from metarec.data.episodes import collate
from metarec.data.prepare import DataConfig
from metarec.data.synthetic import synthetic_raw
from metarec.errors import ConfigError
from metarec.meta.algorithms import MetaConfig
from metarec.meta.personalise import episode_losses
from metarec.meta.recommender import LLMRecommender
from metarec.models.backbone import BackboneConfig, load_backbone
from metarec.models.lora import LoRAConfig
from metarec.models.user_model import UserModelConfig
from metarec.trained_run import TrainedRun
from train.meta_train import MetaTrainRecipe, TrainConfig


@pytest.fixture(scope="module")
def data_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    raw = synthetic_raw(n_users=120, seed=2)
    raw.write_csv(folder)
    return DataConfig(
        dataset="custom",
        interactions=folder / "interactions.csv",
        items=folder / "items.csv",
        cache_dir=folder / "cache",
    )


def tiny_config(data_config, output_dir, algorithm="fomaml", text_encoder="none"):
    return TrainConfig(
        data=data_config,
        model=UserModelConfig(
            backbone=BackboneConfig(name="tiny-llama"),
            lora=LoRAConfig(rank=4, alpha=8.0),
            text_encoder=text_encoder,
            id_dim=16,
            item_dim=16,
        ),
        meta=MetaConfig(algorithm=algorithm, inner_steps=2, inner_lr=0.5),
        support_sizes=[5, 10],
        epochs=2,
        outer_lr=3e-3,
        users_per_batch=16,
        output_dir=output_dir,
    )


def trained(config):
    recipe = MetaTrainRecipe(config)
    recipe.setup()
    recipe.train()
    recipe.cleanup()
    return recipe


def test_checkpoint_adapter_reloads_in_peft_and_reproduces_scores(data_config, tmp_path):
    recipe = trained(tiny_config(data_config, tmp_path / "run", text_encoder="all-minilm-l6-v2"))
    recipe.save_checkpoint()  # the final state, whichever epoch validated best
    checkpoint = tmp_path / "run" / "checkpoint"
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics] == [1, 2]
    model = recipe.model.eval()
    fresh = load_backbone(BackboneConfig(name="tiny-llama"))
    peft_model = PeftModel.from_pretrained(fresh, str(checkpoint / "adapter")).eval()
    history = torch.tensor([[3, 17, 42, 8]])
    with torch.no_grad():
        inputs = model.input_projection(model.item_vectors()[history])
        ours = model.scores(model.output_projection(model.backbone(inputs_embeds=inputs)[0]))
        theirs = model.scores(model.output_projection(peft_model(inputs_embeds=inputs)[0]))
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_training_is_deterministic_and_moves_the_initialisation(data_config, tmp_path):
    first = trained(tiny_config(data_config, tmp_path / "a"))
    second = trained(tiny_config(data_config, tmp_path / "b"))
    without_timing = [{k: v for k, v in row.items() if k != "users_per_s"} for row in first.history]
    assert without_timing == [
        {k: v for k, v in row.items() if k != "users_per_s"} for row in second.history
    ]
    for name, layer in first.model.lora_layers.items():
        torch.testing.assert_close(
            layer.lora_A.weight, second.model.lora_layers[name].lora_A.weight
        )
        assert layer.lora_B.weight.abs().max() > 0  # started at zero, as peft does
    assert np.isfinite(first.history[-1]["objective"])


def test_evaluate_llm_methods_from_checkpoints(data_config, tmp_path):
    meta_run = trained(tiny_config(data_config, tmp_path / "meta"))
    meta_run.save_checkpoint()
    plain = tiny_config(data_config, tmp_path / "plain")
    plain.meta = MetaConfig(algorithm="fomaml", inner_steps=0, inner_lr=0.5)
    trained(plain).save_checkpoint()
    output = tmp_path / "results.json"
    status = main([
        "evaluate", "--dataset", "custom", "--interactions", str(data_config.interactions),
        "--items", str(data_config.items), "--cache-dir", str(data_config.cache_dir),
        "--support-size", "5", "--methods", "pop,llm-noadapt,llm-finetune,meta-lora",
        "--checkpoint", str(tmp_path / "meta"), "--baseline-checkpoint", str(tmp_path / "plain"),
        "--output", str(output), "--bootstrap-resamples", "50",
    ])  # fmt: skip
    assert status == 0
    methods = json.loads(output.read_text())["methods"]
    assert set(methods) == {"pop", "llm-noadapt", "llm-finetune", "meta-lora"}
    # the checkpoint reproduces the live model: same scores for the same users
    loaded = TrainedRun(tmp_path / "meta", data_config).recommender()
    live = LLMRecommender(meta_run.model, meta_run.config.meta)
    histories = [case.history for case in meta_run.split.valid[:6]]
    np.testing.assert_allclose(loaded.score(histories), live.score(histories), atol=1e-5)
    # a checkpoint is never scored on another split, where its training users are tested
    assert main(["evaluate", "--dataset", "custom", "--interactions", str(data_config.interactions),
                 "--items", str(data_config.items), "--cache-dir", str(data_config.cache_dir),
                 "--split-seed", "1", "--methods", "meta-lora",
                 "--checkpoint", str(tmp_path / "meta")]) == 2  # fmt: skip
    # fine-tuning really adapts: its scores differ from the unadapted model's
    assert methods["llm-finetune"]["ndcg@10"] != methods["llm-noadapt"]["ndcg@10"]


def test_pretraining_stage_is_the_noadapt_run_and_starts_meta_training(data_config, tmp_path):
    config = tiny_config(data_config, tmp_path / "run")
    config.pretrain_epochs, config.epochs = 2, 1
    recipe = trained(config)
    assert [(row["stage"], row["epoch"]) for row in recipe.history] == [
        ("pretrain", 1), ("pretrain", 2), ("meta", 0), ("meta", 1),
    ]  # fmt: skip
    pretrain_rows = recipe.history[:2]
    best_pretrain = max(row["valid_ndcg@10_after"] for row in pretrain_rows)
    # meta-training continues from where pretraining ended
    last_pretrain = pretrain_rows[-1]["valid_ndcg@10_after"]
    assert recipe.history[2]["valid_ndcg@10_before"] == pytest.approx(last_pretrain, abs=1e-9)
    saved = json.loads((tmp_path / "run/pretrained/checkpoint/config.json").read_text())
    assert saved["meta"]["inner_steps"] == 0 and saved["pretrain_epochs"] == 0
    metrics = json.loads((tmp_path / "run/pretrained/checkpoint/metrics.json").read_text())
    assert {row["stage"] for row in metrics} == {"pretrain"}  # up to the best epoch
    assert metrics[-1]["valid_ndcg@10_after"] == best_pretrain
    # a run on another split may not start from it: its test users would be seen
    other = tiny_config(data_config, tmp_path / "other")
    other.split_seed, other.init_from = 1, tmp_path / "run" / "pretrained"
    with pytest.raises(ConfigError, match="its split_seed is 0, this run's is 1"):
        MetaTrainRecipe(other).setup()


def test_loo_training_is_evaluated_on_sampled_not_coldstart(data_config, tmp_path):
    config = tiny_config(data_config, tmp_path / "loo")
    config.protocol, config.epochs = "loo", 1
    trained(config)
    common = ["evaluate", "--dataset", "custom", "--interactions", str(data_config.interactions),
              "--items", str(data_config.items), "--cache-dir", str(data_config.cache_dir),
              "--methods", "meta-lora", "--checkpoint", str(tmp_path / "loo"),
              "--bootstrap-resamples", "10"]  # fmt: skip
    output = tmp_path / "sampled.json"
    assert main(common + ["--protocol", "sampled", "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    assert results["n_test_users"] == 120  # every user is a loo test user
    assert results["methods"]["meta-lora"]["hr@1"] > 1 / 20  # better than a random candidate
    assert main(common + ["--protocol", "coldstart"]) == 2


def test_meta_lora_beats_noadapt_when_users_follow_their_own_rule(tmp_path):
    """Half the synthetic users walk their topics backwards: a per-user rule that only the
    user's own support reveals. After a few adaptation steps from the meta-learned
    initialisation, the held-out test users' query items (the coldstart objective) must be
    likelier than under the same model trained without adaptation (its pretraining stage)."""
    folder = tmp_path / "data"
    raw = synthetic_raw(n_users=400, seed=2, follow_probability=0.9, reverse_fraction=0.5)
    raw.write_csv(folder)
    data = DataConfig(
        dataset="custom",
        interactions=folder / "interactions.csv",
        items=folder / "items.csv",
        cache_dir=folder / "cache",
    )
    config = tiny_config(data, tmp_path / "run")
    config.meta = MetaConfig(algorithm="fomaml", inner_steps=3, inner_lr=0.1)
    config.pretrain_epochs, config.epochs = 4, 6
    recipe = trained(config)
    test = recipe.split.test
    batch = collate([case.history for case in test], [case.relevant for case in test])
    losses = {}
    for name, run in (("llm-noadapt", "run/pretrained"), ("meta-lora", "run")):
        method = TrainedRun(tmp_path / run, data).recommender()
        losses[name] = episode_losses(method.model, batch, config.meta, None)
    assert len(test) == 80
    noadapt = losses["llm-noadapt"]["query_loss_before"]
    assert losses["meta-lora"]["query_loss_after"] < noadapt - 0.05, losses


def test_missing_checkpoint_is_a_clear_error(capsys):
    assert main(["evaluate", "--methods", "meta-lora"]) == 2
    assert "meta-lora: needs --checkpoint (a meta-lora run dir)" in capsys.readouterr().err


def test_capped_epochs_take_the_cap_and_report_the_full_batch_count(data_config, tmp_path):
    full = trained(tiny_config(data_config, tmp_path / "full"))
    config = tiny_config(data_config, tmp_path / "capped")
    config.max_steps_per_epoch = 2
    capped = trained(config)
    batches = full.history[0]["batches_in_epoch"]
    assert batches > 2 and capped.history[0]["batches_in_epoch"] == batches
    assert (full.step, capped.step) == (2 * batches, 4)


@pytest.mark.parametrize("train_query_size", [None, 25])
def test_training_episodes_query_train_query_size_items(
    data_config, tmp_path, monkeypatch, train_query_size
):
    config = tiny_config(data_config, tmp_path / "run")
    config.epochs, config.train_query_size = 1, train_query_size
    stepped = []
    meta_step = MetaTrainRecipe.meta_step

    def recording(recipe, episodes):
        stepped.extend(episodes)
        return meta_step(recipe, episodes)

    monkeypatch.setattr(MetaTrainRecipe, "meta_step", recording)
    recipe = trained(config)
    wanted = train_query_size or config.query_size
    longest = 0
    for support, query in stepped:
        # the query is the wanted number of items right after the support, or the rest
        starts = [
            s for s in recipe.split.train_sequences if np.array_equal(s[: len(support)], support)
        ]
        assert any(np.array_equal(s[len(support) : len(support) + wanted], query) for s in starts)
        longest = max(longest, len(query))
    assert longest == wanted
    # validation keeps the protocol's query
    assert max(len(case.relevant) for case in recipe.split.valid) == config.query_size


def test_an_empty_training_query_is_refused():
    with pytest.raises(ConfigError, match="train_query_size 0"):
        TrainConfig(train_query_size=0)
