"""``lora.fast_layers``: only some layers' adapters are per-user fast weights (ANIL-style);
the others are trained like the item side and shared by every user."""

import copy

import numpy as np
import pytest
import torch
from conftest import tiny_trained_model

from metarec.data.episodes import collate
from metarec.errors import MetarecError
from metarec.meta.algorithms import MetaConfig
from metarec.meta.losses import next_item_losses
from metarec.meta.meta_step import MetaStepModule
from metarec.meta.personalise import adapt_batch, adapted_states
from metarec.models.lora import LoRAConfig

HISTORIES = [np.array([3, 5, 7, 9, 11]), np.array([2, 4, 6]), np.array([30, 31, 32, 33])]
META = MetaConfig(algorithm="fomaml", inner_steps=3, inner_lr=0.5)


def tiny_model(fast_layers):
    """The 2-layer tiny Llama with adapters in both layers, fast in ``fast_layers`` only."""
    return tiny_trained_model(LoRAConfig(rank=4, alpha=8.0, fast_layers=fast_layers))


def per_user_sgd_states(model, meta):
    """Reference: each user alone, plain SGD on the top layer's adapters only (the model's
    own modules, no fast weights), then the state after its last item."""
    states = []
    for history in HISTORIES:
        user = copy.deepcopy(model)
        user.requires_grad_(False)
        top = [p for name, p in user.named_parameters() if "layers.1." in name and "lora" in name]
        for parameter in top:
            parameter.requires_grad_(True)
        optimizer = torch.optim.SGD(top, lr=meta.inner_lr)
        items = torch.from_numpy(history)[None]
        lengths = torch.tensor([len(history)])
        for _ in range(meta.inner_steps):
            optimizer.zero_grad()
            loss = next_item_losses(user.scores(user.states(items, lengths)), items, lengths)
            loss.sum().backward()
            optimizer.step()
        with torch.no_grad():
            states.append(user.states(items, lengths)[0, len(history) - 1])
    return torch.stack(states)


def test_only_the_fast_layers_adapt_and_match_a_per_user_loop():
    model = tiny_model(fast_layers=[1])
    batch = collate(HISTORIES, [np.empty(0, dtype=np.int64)] * len(HISTORIES))
    fast = adapt_batch(model, batch, META, None, META.inner_steps)
    assert fast.keys() == model.fast_layers.keys()
    assert {name.split(".")[1] for name in fast} == {"1"} and len(model.lora_layers) > len(fast)
    # batched, with the bottom layer (shared adapters included) run once for every step
    assert model.first_adapted_layer() == 1
    adapted = adapted_states(model, batch, META)
    torch.testing.assert_close(adapted, per_user_sgd_states(model, META), rtol=1e-4, atol=1e-5)
    every_layer = tiny_model(fast_layers=None)
    assert not torch.allclose(adapted, adapted_states(every_layer, batch, META), atol=1e-4)


def test_shared_adapters_are_trained_by_the_meta_step():
    model = tiny_model(fast_layers=[1])
    step = MetaStepModule(model, META, None)
    support = collate(HISTORIES, [np.array([1, 2]), np.array([8]), np.array([20, 21])])
    step(support.support, support.support_lengths, support.query).backward()
    for name, layer in model.lora_layers.items():
        assert layer.lora_B.weight.grad is not None, name
        assert layer.lora_B.weight.grad.abs().max() > 0, name


def test_fast_layers_without_an_adapter_are_refused():
    with pytest.raises(MetarecError, match=r"lora.fast_layers \[5\].*layers \[0, 1\]"):
        tiny_model(fast_layers=[5])
