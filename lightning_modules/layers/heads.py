"""Output heads for frame-level piano-roll models.

A head turns a context vector ``h_t`` (everything the model knows before frame ``t``) into a
distribution over the multi-hot frame ``x_t`` (tracks x pitches flattened to ``units``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrameHead(nn.Module):
    """Interface: ``nll(h, x) -> (B, T)`` nats summed over units; ``sample(h, temperature) -> (B, units)``."""

    def __init__(self, hidden_size: int, units: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.units = units

    def nll(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, h: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        raise NotImplementedError


class BernoulliHead(FrameHead):
    """Independent Bernoulli per pitch and track (as in the TCN paper's polyphonic experiments)."""

    def __init__(self, hidden_size: int, units: int) -> None:
        super().__init__(hidden_size, units)
        self.proj = nn.Linear(hidden_size, units)
        # Piano-rolls are sparse (a few of ~100 keys sound at once): starting at p = 0.5 spends the
        # first epochs unlearning it, and the "hold the previous frame" pathway is found much later.
        nn.init.constant_(self.proj.bias, -3.0)

    def nll(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = self.proj(h)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)

    def sample(self, h: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        probs = torch.sigmoid(self.proj(h) / max(temperature, 1e-4))
        # A diverged model's NaN probabilities sample as silence rather than failing the run.
        return torch.bernoulli(torch.nan_to_num(probs, nan=0.0))


class NADEHead(FrameHead):
    """A NADE over the units of one frame, its biases set by ``h_t`` (RNN-NADE, Boulanger-Lewandowski 2012).

    Independent Bernoullis cannot say "C or E, but not both": the notes of a chord are strongly
    dependent. NADE factorises the frame exactly, unit by unit in a fixed order (track-major, low
    pitch first)::

        p(x | h) = prod_i p(x_i | x_<i, h),   p(x_i = 1 | ...) = sigmoid(b_v(h)_i + V_i . sigmoid(a_i))
        a_i = b_h(h) + sum_{j<i} x_j W_j

    ``W`` and ``V`` are shared over time; only the biases ``b_v(h)`` and ``b_h(h)`` depend on the
    context, as in RNN-NADE. The NLL is exact and costs one pass; sampling goes unit by unit.

    Args:
        hidden_size: size of the context ``h``.
        units: units per frame (tracks x pitches).
        hidden_units: NADE hidden layer size (RNN-NADE used 150).
    """

    def __init__(self, hidden_size: int, units: int, hidden_units: int = 150) -> None:
        super().__init__(hidden_size, units)
        self.hidden_units = hidden_units
        # Row i of W: what unit i, once known, adds to the NADE hidden pre-activation of later units.
        self.W = nn.Parameter(torch.empty(units, hidden_units).uniform_(-1, 1) / units**0.5)
        # Row i of V: read-out of unit i's own hidden vector.
        self.V = nn.Parameter(torch.empty(units, hidden_units).uniform_(-1, 1) / hidden_units**0.5)
        self.bias_v = nn.Linear(hidden_size, units)
        self.bias_h = nn.Linear(hidden_size, hidden_units)
        # Piano-rolls are sparse (a few keys of 88 sound at once): start near p = 0.05, not 0.5.
        nn.init.constant_(self.bias_v.bias, -3.0)

    def logits(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logit of ``p(x_i = 1 | x_<i, h)`` for every unit ``i`` (teacher forcing), shaped like ``x``.

        ``x`` is 0/1. Between two notes that are on, ``a_i`` does not change: a frame with ``k``
        notes has only ``k + 1`` distinct hidden states (state ``s``: the first ``s`` notes known).
        Computing those and picking one per unit is exact, and ~10x cheaper in time and memory than
        materialising ``a_i`` for all units (piano-rolls have ~4 notes on out of 88).
        """
        lead = x.shape[:-1]
        h, x = h.reshape(-1, h.shape[-1]), x.reshape(-1, x.shape[-1])
        state = (torch.cumsum(x, -1) - x).long()  # notes on strictly before unit i: its hidden state
        k = int(x.sum(-1).max()) if x.numel() else 0
        nth = torch.arange(k, device=x.device)
        # which[n, s, j] = 1 iff unit j is the (s+1)-th note on in frame n
        which = ((state.unsqueeze(1) == nth[:, None]) & (x.unsqueeze(1) > 0)).to(h.dtype)
        prefix = F.pad(torch.cumsum(which @ self.W, dim=1), (0, 0, 1, 0))  # (N, k + 1, hidden_units)
        hidden = torch.sigmoid(self.bias_h(h).unsqueeze(1) + prefix)
        per_state = hidden @ self.V.T  # (N, k + 1, units): every unit's logit in every state
        logits = per_state.gather(1, state.unsqueeze(1)).squeeze(1) + self.bias_v(h)
        return logits.reshape(*lead, self.units)

    def nll(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(h, x)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)

    def sample(self, h: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        bias_v = self.bias_v(h)
        a = self.bias_h(h)
        out = h.new_zeros(len(h), self.units)
        # x_i = 1 iff u_i < sigmoid(logit_i / T)  <=>  logit_i > T * logit(u_i): draw all u up front.
        u = torch.rand_like(out)
        threshold = (torch.log(u) - torch.log1p(-u)) * max(temperature, 1e-4)
        for i in range(self.units):  # one unit at a time, the whole batch at once
            logit = torch.addmv(bias_v[:, i], torch.sigmoid(a), self.V[i])
            x_i = (logit > threshold[:, i]).to(out.dtype)
            out[:, i] = x_i
            a = a + torch.outer(x_i, self.W[i])  # unit i is now known to the units after it
        return out


HEADS: dict[str, type[FrameHead]] = {"bernoulli": BernoulliHead, "nade": NADEHead}


def build_head(name: str, hidden_size: int, units: int, **kwargs) -> FrameHead:
    """Instantiate a head by name (``"bernoulli"``, ``"nade"``)."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {sorted(HEADS)}")
    return HEADS[name](hidden_size, units, **kwargs)
