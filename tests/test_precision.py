"""Mixed precision: a bfloat16 backbone with float32 adapters and item side (issue 17).

peft keeps LoRA adapters in float32 over a bfloat16 model; metarec's fast weights, the
meta-learned initialisation and the Meta-SGD rates must too, or a small inner step rounds
away in bfloat16's 8-bit mantissa.
"""

import copy

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from metarec.data.episodes import collate
from metarec.meta.algorithms import MetaConfig, MetaSGDRates, meta_objective
from metarec.meta.personalise import (
    adapt_batch,
    adapted_scores,
    query_loss_fn,
    support_loss_fn,
)
from metarec.models.backbone import BackboneConfig, load_backbone, trainable_dtype
from metarec.models.lora import (
    BatchedLoRALinear,
    LoRAConfig,
    bind_fast_weights,
    initial_fast_weights,
    inject_lora,
)
from metarec.models.user_model import UserModel, UserModelConfig

N_ITEMS = 40
HISTORIES = [np.array([3, 5, 7, 9, 11]), np.array([2, 4, 6]), np.array([30, 31, 32, 33])]
QUERIES = [np.array([12, 13]), np.array([8]), np.array([34, 35, 36])]


def tiny_model(dtype, layers=None, attention="sdpa"):
    """The same random model whatever ``dtype``: a bfloat16 backbone is the float32 one rounded."""
    torch.manual_seed(0)
    config = UserModelConfig(
        backbone=BackboneConfig(name="tiny-llama", dtype=dtype, attention=attention),
        lora=LoRAConfig(rank=4, alpha=8.0, layers=layers),
        text_encoder="none",
        id_dim=16,
        item_dim=16,
    )
    text_vectors = torch.randn(N_ITEMS, 8)
    model = UserModel(config, load_backbone(config.backbone), text_vectors, N_ITEMS)
    torch.nn.init.normal_(model.id_embedding.weight)
    for layer in model.lora_layers.values():  # a trained init: B is not zero any more
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    return model


def batch():
    return collate(HISTORIES, QUERIES)


def item_side(model):
    return {
        "text_vectors": model.text_vectors,
        **{
            name: parameter
            for name, parameter in model.named_parameters()
            if not name.startswith("backbone.")
        },
    }


def test_bfloat16_backbone_keeps_adapters_fast_weights_and_item_side_in_float32():
    model = tiny_model("bfloat16")
    frozen = [p for n, p in model.backbone.named_parameters() if "lora_" not in n]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # the backbone is bf16
    lora = [model.get_parameter(name) for name in model.lora_parameter_names()]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    for fast_a, fast_b in initial_fast_weights(model.lora_layers, 3).values():
        assert fast_a.dtype == fast_b.dtype == torch.float32
    assert all(rate.dtype == torch.float32 for rate in MetaSGDRates(model.lora_layers, 0.1).rates)
    side = item_side(model)
    assert len(side) == 8 and all(t.dtype == torch.float32 for t in side.values())
    adapted = adapt_batch(model, batch(), MetaConfig(inner_steps=2, inner_lr=0.5), None, 2)
    assert all(t.dtype == torch.float32 for pair in adapted.values() for t in pair)


@pytest.mark.parametrize(
    ("backbone", "adapters"),
    [
        ("bfloat16", torch.float32),
        ("float16", torch.float32),
        ("float32", torch.float32),
        ("float64", torch.float64),  # the finite-difference tests keep float64 throughout
    ],
)
def test_adapters_are_at_least_float32(backbone, adapters):
    assert trainable_dtype(getattr(torch, backbone)) == adapters
    layers = inject_lora(
        load_backbone(BackboneConfig(name="tiny-llama", dtype=backbone)), LoRAConfig()
    )
    for layer in layers.values():
        assert layer.base.weight.dtype == getattr(torch, backbone)
        assert layer.lora_A.weight.dtype == layer.lora_B.weight.dtype == adapters


def test_a_small_inner_step_moves_float32_fast_weights_where_bfloat16_would_round_it_away():
    model = tiny_model("bfloat16")
    lr = 1e-4  # lr × gradient is far below bfloat16's resolution relative to the weights
    start = initial_fast_weights(model.lora_layers, len(HISTORIES))
    adapted = adapt_batch(model, batch(), MetaConfig(inner_steps=1, inner_lr=lr), None, 1)
    moved = kept_in_bf16 = total = 0
    for name, pair in adapted.items():
        for before, after in zip(start[name], pair, strict=True):
            step = after - before.detach()
            moved += (step != 0).sum().item()
            # the reason: the very same step taken on bfloat16 weights leaves them unchanged
            weights = before.detach().to(torch.bfloat16)
            kept_in_bf16 += (weights + step.to(torch.bfloat16) == weights).sum().item()
            total += step.numel()
    assert moved / total > 0.9
    assert kept_in_bf16 / total > 0.95


@pytest.mark.parametrize("layers", [None, [1]])  # [1]: the frozen-prefix path
def test_bfloat16_scores_are_finite_float32_and_close_to_float32_ones(layers):
    # gentle steps: lr 0.5 × 3 steps on a random model amplifies rounding chaotically
    meta = MetaConfig(algorithm="fomaml", inner_steps=2, inner_lr=0.2)
    reference = adapted_scores(tiny_model("float32", layers), batch(), meta)
    scores = adapted_scores(tiny_model("bfloat16", layers), batch(), meta)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    error = (scores - reference).abs().max()
    assert error <= 0.02 * reference.abs().max()
    unadapted = adapted_scores(tiny_model("float32", layers), batch(), meta, inner_steps=0)
    assert (reference - unadapted).abs().max() > 20 * error  # adaptation dwarfs the rounding
    assert np.corrcoef(scores.flatten().numpy(), reference.flatten().numpy())[0, 1] > 0.99
    assert not torch.equal(scores, reference)  # the backbone did run in bfloat16


def test_bfloat16_second_order_meta_gradient_reaches_the_float32_init():
    model = tiny_model("bfloat16", attention="eager")  # sdpa's CPU kernel: no double backward
    episodes = batch()
    excluded = episodes.support_excluded(N_ITEMS)
    objective, _ = meta_objective(
        MetaConfig(algorithm="maml", inner_steps=2, inner_lr=0.5),
        support_loss_fn(model, episodes),
        query_loss_fn(model, episodes, excluded),
        initial_fast_weights(model.lora_layers, len(HISTORIES)),
    )
    assert objective.dtype == torch.float32
    lora = [model.get_parameter(name) for name in model.lora_parameter_names()]
    grads = torch.autograd.grad(objective, lora)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def lora_linear(dtype):
    torch.manual_seed(3)
    layer = BatchedLoRALinear(torch.nn.Linear(16, 12).to(dtype), rank=4, alpha=8.0, dropout=0.0)
    torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    return layer


def test_float32_lora_forward_is_exactly_the_plain_formula():
    layer = lora_linear(torch.float32)
    x = torch.randn(3, 5, 16)
    a, b = layer.lora_A.weight, layer.lora_B.weight
    with torch.no_grad():
        expected = layer.base(x) + layer.scaling * (x @ a.T @ b.T)
        assert torch.equal(layer(x), expected)
        fast_a, fast_b = a + torch.randn(3, *a.shape), b + torch.randn(3, *b.shape)
        layer.fast = (fast_a, fast_b)
        update = torch.bmm(torch.bmm(x, fast_a.transpose(1, 2)), fast_b.transpose(1, 2))
        assert torch.equal(layer(x), layer.base(x) + layer.scaling * update)


def test_float32_user_model_states_are_exactly_the_uncast_forward():
    model = tiny_model("float32")
    episodes = batch()
    fast = initial_fast_weights(model.lora_layers, len(HISTORIES))
    with torch.no_grad(), bind_fast_weights(model.lora_layers, fast):
        states = model.states(episodes.support, episodes.support_lengths)
        inputs = model.input_projection(model.item_vectors()[episodes.support])
        mask = model._attention_mask(episodes.support, episodes.support_lengths)
        hidden = model.backbone(inputs_embeds=inputs, attention_mask=mask, use_cache=False)
        assert torch.equal(states, model.output_projection(hidden.last_hidden_state))


def test_bfloat16_lora_forward_is_exactly_peft_with_its_float32_adapters():
    model = tiny_model("bfloat16")
    reference = copy.deepcopy(model)
    for name, layer in reference.lora_layers.items():
        parent, _, child = name.rpartition(".")
        setattr(reference.backbone.get_submodule(parent), child, layer.base)
    lora = model.config.lora
    peft_model = get_peft_model(
        reference.backbone,
        LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=lora.target_modules),
    )
    adapters = {
        f"base_model.model.{name}.{part}.default.weight": getattr(layer, part).weight.detach()
        for name, layer in model.lora_layers.items()
        for part in ("lora_A", "lora_B")
    }
    assert not peft_model.load_state_dict(adapters, strict=False).unexpected_keys
    assert all(p.dtype == torch.float32 for p in peft_model.parameters() if p.requires_grad)
    inputs = torch.randn(3, 6, model.backbone.config.hidden_size).to(torch.bfloat16)
    with torch.no_grad():
        ours = model.backbone(inputs_embeds=inputs).last_hidden_state
        theirs = peft_model(inputs_embeds=inputs).last_hidden_state
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, theirs)
