"""Running the frozen bottom layers once gives exactly the states of the full model."""

import numpy as np
import torch
from conftest import tiny_trained_model

from metarec.data.episodes import collate
from metarec.meta.algorithms import MetaConfig
from metarec.meta.peft_loop import PeftUserLoop
from metarec.meta.personalise import adapt_batch, adapted_states, last_states
from metarec.models.backbone import BackboneConfig, load_backbone
from metarec.models.frozen_prefix import run_layers
from metarec.models.lora import LoRAConfig, save_peft_adapter


def tiny_model(layers):
    return tiny_trained_model(LoRAConfig(rank=4, alpha=8.0, layers=layers))


def test_bottom_then_top_layers_compose_to_the_full_forward():
    backbone = load_backbone(BackboneConfig(name="tiny-llama"))
    inputs = torch.randn(3, 7, backbone.config.hidden_size)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    full = backbone(inputs_embeds=inputs, attention_mask=mask, use_cache=False).last_hidden_state
    bottom = run_layers(backbone, inputs, mask, 0, 1)
    top = run_layers(backbone, bottom, mask, 1, backbone.config.num_hidden_layers)
    real = mask.bool()
    torch.testing.assert_close(top[real], full[real], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(bottom[real], full[real])  # the bottom alone is not the answer


def test_adaptation_reuses_the_bottom_and_matches_running_every_layer():
    model = tiny_model(layers=[1])
    assert model.first_adapted_layer() == 1
    histories = [np.array([3, 5, 7, 9, 11]), np.array([2, 4, 6]), np.array([30, 31, 32, 33])]
    batch = collate(histories, [np.empty(0, dtype=np.int64)] * 3)
    meta = MetaConfig(algorithm="fomaml", inner_steps=3, inner_lr=0.5)
    calls = []
    model.backbone.layers[0].register_forward_hook(lambda *_: calls.append(1))
    reused = adapted_states(model, batch, meta)
    assert len(calls) == 1  # the bottom layer ran once for 3 steps and the final pass
    calls.clear()
    fast = adapt_batch(model, batch, meta, None, 3)
    with torch.no_grad():
        every_layer = last_states(model, batch, fast)
    assert len(calls) == 4
    torch.testing.assert_close(reused, every_layer, rtol=1e-5, atol=1e-5)
    unadapted = adapted_states(model, batch, meta, inner_steps=0)
    assert (reused - unadapted).abs().max() > 1e-3


def test_top_layer_adapter_loads_in_peft_and_adapts_like_the_batched_path(tmp_path):
    model = tiny_model(layers=[1])
    save_peft_adapter(model.lora_layers, model.config.lora, tmp_path / "adapter", "tiny-llama")
    meta = MetaConfig(algorithm="fomaml", inner_steps=3, inner_lr=0.5)
    loop = PeftUserLoop(model, tmp_path / "adapter", meta)
    adapted_names = [n for n, p in loop.peft.named_parameters() if p.requires_grad]
    assert adapted_names and all(".layers.1." in name for name in adapted_names)
    histories = [np.array([3, 5, 7, 9, 11]), np.array([2, 4, 6])]
    batch = collate(histories, [np.empty(0, dtype=np.int64)] * 2)
    states = adapted_states(model, batch, meta)
    for history, state in zip(histories, states, strict=True):
        torch.testing.assert_close(loop.adapted_state(history, 3), state, rtol=1e-4, atol=1e-5)
