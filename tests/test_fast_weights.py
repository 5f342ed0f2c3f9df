"""Batched per-user LoRA fast weights against peft's own LoRA, adapted user by user."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from metarec.meta.inner_loop import adapt
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
