"""SASRec: a causal self-attention transformer over a user's item sequence.

The hidden state at position t is trained to predict item t+1 with cross-entropy over the
whole catalogue; logits are the hidden state times the item embedding matrix (tied weights).
Positions count from the start of the sequence (left-aligned, padding on the right), as a
cold user's first items do, so a model trained on histories' beginnings reads a support set
in the frame it was trained in. With a causal mask, right padding needs no key-padding mask:
real positions never attend to the padding that follows them.

Training windows are cuts of ``max_len + 1`` items with stride ``max_len`` (consecutive
windows share one item, so each transition is trained once) from
each user's first item; validation ndcg@10 picks the best epoch, with patience counted in
evaluations.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from metarec.data.splits import UserCase
from metarec.eval.ranking import evaluate_cases
from metarec.eval.recommender import Recommender


@dataclass
class SASRecConfig:
    """``eval_every``: epochs between validation evaluations; ``patience``: evaluations
    without improvement before stopping; ``device``: "cpu", "cuda" or "auto"."""

    max_len: int
    hidden: int
    layers: int
    heads: int
    dropout: float
    lr: float
    weight_decay: float
    batch_size: int
    max_epochs: int
    eval_every: int
    patience: int
    seed: int
    device: str


def make_windows(sequences: list[np.ndarray], max_len: int, padding_id: int) -> torch.Tensor:
    """(W, max_len + 1) int64 windows, right-padded with ``padding_id``.

    Window k of a sequence is ``sequence[k * max_len : k * max_len + max_len + 1]``, so
    consecutive windows share one item (the last target of one is the first input of the
    next) and every transition is trained exactly once. Windows of fewer than two items
    hold no transition and are dropped.
    """
    windows = []
    for sequence in sequences:
        for start in range(0, len(sequence) - 1, max_len):
            window = np.full(max_len + 1, padding_id, dtype=np.int64)
            chunk = sequence[start : start + max_len + 1]
            window[: len(chunk)] = chunk
            windows.append(window)
    if not windows:
        return torch.empty((0, max_len + 1), dtype=torch.int64)
    return torch.from_numpy(np.stack(windows))


def left_aligned_batch(
    histories: list[np.ndarray], max_len: int, padding_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``max_len`` items of each history, left-aligned and right-padded.

    Returns ``items`` (B, T) int64 with T = the longest kept length, and ``last`` (B,) int64:
    the position of each row's last real item.
    """
    kept = [history[-max_len:] for history in histories]
    width = max(len(history) for history in kept)
    items = np.full((len(kept), width), padding_id, dtype=np.int64)
    for row, history in enumerate(kept):
        items[row, : len(history)] = history
    last = np.array([len(history) - 1 for history in kept], dtype=np.int64)
    return torch.from_numpy(items), torch.from_numpy(last)


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """(T, T) float mask: 0 where position i may attend to j <= i, -inf above the diagonal."""
    return nn.Transformer.generate_square_subsequent_mask(length, device=device)


class SASRecNetwork(nn.Module):
    """Item + position embeddings, a causal transformer encoder, tied output over items.

    Item embeddings start at std 1/sqrt(d) and are scaled by sqrt(d) on input, so inputs
    have unit scale and the initial logits (unit-norm-ish states times embeddings) are O(1).
    """

    def __init__(self, n_items: int, config: SASRecConfig) -> None:
        super().__init__()
        self.n_items = n_items
        self.item_embedding = nn.Embedding(n_items + 1, config.hidden, padding_idx=n_items)
        nn.init.normal_(self.item_embedding.weight, std=config.hidden**-0.5)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()
        self.position_embedding = nn.Embedding(config.max_len, config.hidden)
        self.embedding_dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=config.hidden,
            nhead=config.heads,
            dim_feedforward=config.hidden,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(config.hidden)

    def hidden_states(self, items: torch.Tensor) -> torch.Tensor:
        """(B, T, d) causal hidden states of (B, T) left-aligned item ids."""
        length = items.shape[1]
        positions = torch.arange(length, device=items.device)
        scale = math.sqrt(self.item_embedding.embedding_dim)
        states = self.item_embedding(items) * scale + self.position_embedding(positions)
        states = self.encoder(
            self.embedding_dropout(states), mask=causal_mask(length, items.device), is_causal=True
        )
        return self.final_norm(states)

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """(..., n_items) scores of (..., d) hidden states against the item embeddings."""
        return states @ self.item_embedding.weight[: self.n_items].T


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; other names are passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SASRec(Recommender):
    def __init__(self, config: SASRecConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.network: SASRecNetwork | None = None
        self.epochs_trained = 0
        self.best_valid_ndcg: float | None = None

    def fit(self, train_sequences: list[np.ndarray], n_items: int, valid: list[UserCase]) -> None:
        config = self.config
        torch.manual_seed(config.seed)
        self.network = SASRecNetwork(n_items, config).to(self.device)
        optimizer = torch.optim.Adam(
            self.network.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        windows = make_windows(train_sequences, config.max_len, padding_id=n_items)
        shuffler = torch.Generator().manual_seed(config.seed)
        best_state, evaluations_without_gain = None, 0
        self.best_valid_ndcg = None
        progress = tqdm(range(1, config.max_epochs + 1), desc="sasrec", unit="epoch")
        for epoch in progress:
            loss = self._train_epoch(windows, optimizer, shuffler)
            self.epochs_trained = epoch
            if not valid or epoch % config.eval_every != 0:
                progress.set_postfix(loss=f"{loss:.4f}")
                continue
            ndcg = float(evaluate_cases(self.score, valid, (10,))["ndcg@10"].mean())
            progress.set_postfix(loss=f"{loss:.4f}", valid_ndcg=f"{ndcg:.4f}")
            if self.best_valid_ndcg is None or ndcg > self.best_valid_ndcg:
                self.best_valid_ndcg = ndcg
                best_state = copy.deepcopy(self.network.state_dict())
                evaluations_without_gain = 0
            else:
                evaluations_without_gain += 1
                if evaluations_without_gain >= config.patience:
                    break
        progress.close()
        if best_state is not None:
            self.network.load_state_dict(best_state)

    def _train_epoch(
        self, windows: torch.Tensor, optimizer: torch.optim.Optimizer, shuffler: torch.Generator
    ) -> float:
        """One pass over (W, max_len + 1) windows in shuffled batches; mean batch loss.

        Logits are computed only at the positions whose target is a real item.
        """
        self.network.train()
        padding_id = self.network.n_items
        order = torch.randperm(len(windows), generator=shuffler)
        losses = []
        for start in range(0, len(windows), self.config.batch_size):
            batch = windows[order[start : start + self.config.batch_size]].to(self.device)
            inputs, targets = batch[:, :-1], batch[:, 1:]
            real = targets != padding_id
            states = self.network.hidden_states(inputs)[real]
            loss = F.cross_entropy(self.network.logits(states), targets[real])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return float(np.mean(losses))

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        self.network.eval()
        items, last = left_aligned_batch(histories, self.config.max_len, self.network.n_items)
        with torch.no_grad():
            states = self.network.hidden_states(items.to(self.device))
            final = states[torch.arange(len(histories)), last.to(self.device)]
            scores = self.network.logits(final)
        return scores.float().cpu().numpy()
