"""Batched per-user LoRA fast weights against peft's own LoRA, adapted user by user."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from metarec.errors import MetarecError
from metarec.meta.algorithms import MetaConfig, MetaSGDRates, meta_objective
from metarec.meta.inner_loop import adapt
from metarec.models.activation_checkpointing import enable_activation_checkpointing
from metarec.models.backbone import BackboneConfig, load_backbone
from metarec.models.lora import (
    LoRAConfig,
    bind_fast_weights,
    initial_fast_weights,
    inject_lora,
)

N_USERS, LENGTH, N_ITEMS, STEPS, LR = 4, 6, 20, 3, 0.5


def next_item_losses(model, item_embeddings, items):
    """(U,) mean next-item cross-entropy of each user's sequence (U, T) of item ids."""
    hidden = model(inputs_embeds=item_embeddings[items]).last_hidden_state  # (U, T, d)
    logits = hidden[:, :-1] @ item_embeddings.T  # (U, T-1, N)
    targets = items[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, N_ITEMS), targets.reshape(-1), reduction="none"
    )
    return losses.view(len(items), -1).mean(dim=1)


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    base = load_backbone(BackboneConfig(name="tiny-llama"))
    reference_base = copy.deepcopy(base)
    lora_config = LoRAConfig(rank=4, alpha=8.0, target_modules=["q_proj", "v_proj"])
    layers = inject_lora(base, lora_config)
    for layer in layers.values():  # a trained init: B is not zero any more
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    item_embeddings = torch.randn(N_ITEMS, base.config.hidden_size)
    items = torch.randint(0, N_ITEMS, (N_USERS, LENGTH))
    return base, reference_base, layers, lora_config, item_embeddings, items


def test_batched_inner_loop_equals_per_user_peft_loop(setup):
    base, reference_base, layers, lora_config, item_embeddings, items = setup

    def support_loss(fast):
        with bind_fast_weights(layers, fast):
            return next_item_losses(base, item_embeddings, items)

    start = initial_fast_weights(layers, N_USERS)
    adapted = adapt(support_loss, start, STEPS, LR, create_graph=False)

    peft_model = get_peft_model(
        reference_base,
        LoraConfig(
            r=lora_config.rank,
            lora_alpha=lora_config.alpha,
            lora_dropout=0.0,
            target_modules=lora_config.target_modules,
        ),
    )
    init_state = {
        f"base_model.model.{name}.{part}.default.weight": getattr(layer, part).weight.detach()
        for name, layer in layers.items()
        for part in ("lora_A", "lora_B")
    }
    for user in range(N_USERS):
        peft_model.load_state_dict(init_state, strict=False)
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(trainable, lr=LR)
        for _ in range(STEPS):
            optimizer.zero_grad()
            next_item_losses(peft_model, item_embeddings, items[user : user + 1]).sum().backward()
            optimizer.step()
        state = peft_model.state_dict()
        for name, (fast_a, fast_b) in adapted.items():
            expected_a = state[f"base_model.model.{name}.lora_A.default.weight"]
            expected_b = state[f"base_model.model.{name}.lora_B.default.weight"]
            assert (fast_a[user] - expected_a).abs().max() <= 1e-5
            assert (fast_b[user] - expected_b).abs().max() <= 1e-5
            assert (fast_a[user] - layers[name].lora_A.weight).abs().max() > 1e-4  # it moved


@pytest.fixture()
def float64_setup():
    torch.manual_seed(1)
    base = load_backbone(BackboneConfig(name="tiny-llama", dtype="float64", attention="eager"))
    layers = inject_lora(base, LoRAConfig(rank=2, alpha=4.0, target_modules=["v_proj"]))
    for layer in layers.values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.2)
    item_embeddings = torch.randn(N_ITEMS, base.config.hidden_size, dtype=torch.float64)
    support = torch.randint(0, N_ITEMS, (N_USERS, LENGTH))
    query = torch.randint(0, N_ITEMS, (N_USERS, LENGTH))

    def loss_on(items):
        def loss(fast):
            with bind_fast_weights(layers, fast):
                return next_item_losses(base, item_embeddings, items)

        return loss

    return layers, loss_on(support), loss_on(query), base


def meta_gradient(layers, support_loss, query_loss, algorithm, rates=None):
    config = MetaConfig(algorithm=algorithm, inner_steps=2, inner_lr=0.3)
    start = initial_fast_weights(layers, N_USERS)
    objective, _ = meta_objective(config, support_loss, query_loss, start, rates)
    parameters = [
        p for layer in layers.values() for p in (layer.lora_A.weight, layer.lora_B.weight)
    ]
    return objective, torch.autograd.grad(objective, parameters)


def test_maml_meta_gradient_matches_finite_differences_and_differs_from_fomaml(float64_setup):
    layers, support_loss, query_loss, _ = float64_setup
    _, maml_grads = meta_gradient(layers, support_loss, query_loss, "maml")
    _, fomaml_grads = meta_gradient(layers, support_loss, query_loss, "fomaml")
    weight = next(iter(layers.values())).lora_A.weight
    # Llama's RMSNorm computes in float32 even for a float64 model, so the function is only
    # float32-smooth: a step of 1e-3 keeps rounding noise far below the second-order term.
    step = 1e-3
    for index in [(0, 0), (1, 5), (0, 17)]:
        with torch.no_grad():
            weight[index] += step
        plus, _ = meta_gradient(layers, support_loss, query_loss, "maml")
        with torch.no_grad():
            weight[index] -= 2 * step
        minus, _ = meta_gradient(layers, support_loss, query_loss, "maml")
        with torch.no_grad():
            weight[index] += step
        numeric = (plus - minus).item() / (2 * step)
        assert maml_grads[0][index].item() == pytest.approx(numeric, rel=1e-2, abs=1e-5)
        first_order_error = abs(fomaml_grads[0][index].item() - numeric)
        assert first_order_error > 5 * abs(maml_grads[0][index].item() - numeric)


def test_reptile_step_moves_init_towards_mean_adapted_weights(float64_setup):
    layers, support_loss, query_loss, _ = float64_setup
    parameters = [
        p for layer in layers.values() for p in (layer.lora_A.weight, layer.lora_B.weight)
    ]
    before = [p.detach().clone() for p in parameters]
    config = MetaConfig(algorithm="reptile", inner_steps=2, inner_lr=0.3)
    objective, adapted = meta_objective(
        config, support_loss, query_loss, initial_fast_weights(layers, N_USERS)
    )
    epsilon = 0.25
    optimizer = torch.optim.SGD(parameters, lr=epsilon)
    objective.backward()
    optimizer.step()
    means = [t.mean(dim=0).detach() for pair in adapted.values() for t in pair]
    for old, new, mean in zip(before, parameters, means, strict=True):
        torch.testing.assert_close(new.detach(), old + epsilon * (mean - old))


def test_metasgd_learning_rates_receive_gradients(float64_setup):
    layers, support_loss, query_loss, _ = float64_setup
    rates = MetaSGDRates(layers, inner_lr=0.3)
    config = MetaConfig(algorithm="metasgd", inner_steps=2)
    objective, _ = meta_objective(
        config, support_loss, query_loss, initial_fast_weights(layers, N_USERS), rates
    )
    gradients = torch.autograd.grad(objective, list(rates.parameters()))
    assert all(g.abs().sum() > 0 for g in gradients)
    # with equal rates everywhere, Meta-SGD's objective is MAML's
    maml_objective, _ = meta_gradient(layers, support_loss, query_loss, "maml")
    assert objective.item() == pytest.approx(maml_objective.item(), rel=1e-12)


def test_unmatched_target_modules_name_the_expected_ones():
    backbone = load_backbone(BackboneConfig(name="tiny-llama"))
    with pytest.raises(MetarecError, match=r"target_modules \['query'\].*q_proj"):
        inject_lora(backbone, LoRAConfig(target_modules=["query"]))


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_activation_checkpointing_keeps_meta_gradients_exact(float64_setup, algorithm):
    layers, support_loss, query_loss, backbone = float64_setup
    objective, plain = meta_gradient(layers, support_loss, query_loss, algorithm)
    assert enable_activation_checkpointing(backbone) == backbone.config.num_hidden_layers
    recomputed_objective, recomputed = meta_gradient(layers, support_loss, query_loss, algorithm)
    assert recomputed_objective.item() == pytest.approx(objective.item(), rel=1e-12)
    for ours, reference in zip(recomputed, plain, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-12)
