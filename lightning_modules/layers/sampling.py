"""Choosing the next token from logits: temperature, top-k and top-p (nucleus) sampling.

Pure functions over a batch of logits ``(B, C)``, so every token model samples the same way.
"""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits with every class outside the top-k and outside the top-p nucleus set to -inf.

    - top-k keeps the ``top_k`` largest logits of each row (0: all); ties at the k-th value are all kept.
    - top-p keeps the smallest set of classes, largest first, whose probability reaches ``top_p``
      (Holtzman et al. 2020): class i is kept when the probability of the classes ranked above it
      is below ``top_p``, so the most likely class is always kept (1.0: all).

    Non-finite logits (a diverged model) count as -inf; a row with no finite logit is left for
    `sample_logits` to resolve.
    """
    logits = torch.nan_to_num(logits.float(), nan=float("-inf"), posinf=float("-inf"))
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        above = torch.cumsum(probs, dim=-1) - probs  # probability of the classes ranked above
        drop_sorted = above >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One class per row of ``logits`` ``(B, C)``: argmax at ``temperature`` 0, else a draw from
    ``softmax(filter_logits(logits) / temperature)``. A row with no finite logit gives class 0."""
    logits = filter_logits(logits, top_k, top_p)
    dead = ~torch.isfinite(logits).any(dim=-1)
    if dead.any():
        logits = logits.clone()
        logits[dead, 0] = 0.0
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
