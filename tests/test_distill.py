"""Distillation: the loss vanishes when the student adapts exactly like the teacher, and a
one-layer student starts from the teacher's item side and shared-layer adapters."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("faiss", reason='needs FAISS: pip install -e ".[cpu]" (or ".[gpu]")')

from metarec.config import from_mapping
from metarec.data.episodes import collate
from metarec.meta.personalise import adapt_batch
from metarec.trained_run import TrainedRun
from train.distill import DistillConfig, DistillRecipe, distill, distillation_loss
from train.meta_train import TrainConfig


def test_distillation_loss_is_zero_for_the_teacher_itself(trained_run):
    folder, data, _ = trained_run
    run = TrainedRun(folder / "run", data)
    teacher, dataset = run.recommender(), run.dataset
    sequences = dataset.sequences()[:6]
    batch = collate([s[:5] for s in sequences], [s[5:8] for s in sequences])
    excluded = batch.support_excluded(dataset.n_items)
    loss = distillation_loss(teacher, temperature=2.0, weight=1.0)(teacher.model, batch, excluded)
    adapted = adapt_batch(teacher.model, batch, teacher.meta, teacher.rates, teacher.inner_steps)
    assert loss(adapted).abs().max() < 1e-4
    unadapted = adapt_batch(teacher.model, batch, teacher.meta, teacher.rates, 0)
    assert loss(unadapted).min() > 1e-3


def test_student_starts_from_the_teacher_and_trains(trained_run, tmp_path):
    folder, data, _ = trained_run
    teacher = TrainedRun(folder / "run", data).recommender()
    raw = json.loads((folder / "run" / "checkpoint" / "config.json").read_text())
    config = replace(from_mapping(TrainConfig, raw), data=data, output_dir=tmp_path / "student",
                     pretrain_epochs=0, epochs=1)  # fmt: skip
    config.model.backbone.num_layers = 1
    recipe = DistillRecipe(DistillConfig(config, folder / "run", distill_epochs=1))
    recipe.setup()
    torch.testing.assert_close(recipe.model.id_embedding.weight, teacher.model.id_embedding.weight)
    student_layer = recipe.model.lora_layers["layers.0.self_attn.q_proj"]
    teacher_layer = teacher.model.lora_layers["layers.0.self_attn.q_proj"]
    torch.testing.assert_close(student_layer.lora_B.weight, teacher_layer.lora_B.weight)
    assert len(recipe.model.backbone.layers) == 1
    recipe.cleanup()
    history = distill(DistillConfig(config, folder / "run", distill_epochs=1))
    assert [row["stage"] for row in history] == ["distill", "meta", "meta"]
    assert (tmp_path / "student" / "distilled" / "checkpoint" / "weights.safetensors").is_file()
    assert np.isfinite(history[-1]["valid_ndcg@10_after"])
