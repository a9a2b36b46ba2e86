"""MuseNet: a GPT-2 style transformer over multi-instrument event tokens.

MuseNet (Payne, OpenAI 2019) is a large GPT-2 like model over a MIDI event stream of many instruments,
each sequence starting with its composer (genre) and instrument tokens. This is that recipe at a
size one GPU (or, small, one CPU) trains, over `datamodules.events.EventRepresentation` (REMI with
a program token per note, behind a genre + instruments prefix):

- pre-LayerNorm blocks (attention, then a 4x MLP, each on a residual path), learned or rotary
  positions, `F.scaled_dot_product_attention` (flash attention on GPUs), tied input and output
  embeddings, dropout, a configurable context;
- a local (sliding-window) attention option after MuseNet's sparse attention: every token sees only
  the ``attention_window`` tokens before it;
- a key/value cache (`KVCache`): generation costs one token's work per token, and gives exactly the
  logits of recomputing the whole sequence;
- sampling with temperature, top-k and top-p (the `TokenModule` base), for the instruments asked for
  (``make sample INSTRUMENTS=piano,violin,cello``), up to a length in tokens or in bars, from a MIDI
  primer; beyond the context the window slides, always keeping the conditioning prefix;
- training at scale: AdamW without weight decay on norms and biases, a cosine schedule with warm-up
  (per optimiser step, so gradient accumulation counts right), bf16 mixed precision
  (``trainer=gpu``) and ``torch.compile`` as options.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.events import EventRepresentation
from datamodules.representations import Representation
from lightning_modules.base import IncompatibleRepresentation
from lightning_modules.layers.sampling import sample_logits
from lightning_modules.token import TokenModule
from muselab.errors import UserError
from muselab.music.evaluation import music_window


# ----------------------------------------------------------------------------------- building blocks
class KVCache:
    """Keys and values of every layer for the tokens seen so far.

    Each layer's buffers hold ``capacity`` positions and are written in place, so a generation step
    copies nothing but its own token's keys and values. They are allocated on first use, in the
    dtype the keys come in (bf16 under autocast).
    """

    def __init__(self, n_layers: int, capacity: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.capacity = capacity
        self.length = 0  # positions filled (the same in every layer once a forward pass ends)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k``, ``v`` ``(B, H, T, D)`` at the current length; all keys and values so far."""
        if self.keys[layer] is None:
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            self.keys[layer] = k.new_empty(shape)
            self.values[layer] = v.new_empty(shape)
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021): each pair of query/key channels is rotated by an
    angle proportional to the position, so attention scores depend on relative positions only."""

    def __init__(self, head_dim: int, context: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(context).float(), inv_freq)  # (context, head_dim / 2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int) -> torch.Tensor:
        """``x`` ``(B, H, T, D)`` at positions ``offset .. offset + T - 1``."""
        cos = self.cos[offset : offset + x.shape[2]].to(x.dtype)
        sin = self.sin[offset : offset + x.shape[2]].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attention_mask(q_len: int, k_len: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """Which keys each of the last ``q_len`` of ``k_len`` positions attends to (``(q_len, k_len)``
    bool): those before it, within ``window`` when attention is local. None: all of them."""
    if window is None and q_len == 1:
        return None
    query = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    key = torch.arange(k_len, device=device)[None, :]
    allowed = key <= query
    if window is not None:
        allowed &= key > query - window
    return allowed


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through `F.scaled_dot_product_attention`."""

    def __init__(
        self, d_model: int, n_heads: int, dropout: float, attention_dropout: float, window: int | None
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.window = window
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.proj_dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, rotary: Rotary | None, cache: KVCache | None, layer: int
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (
            t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in self.qkv(x).split(C, 2)
        )
        offset = cache.length if cache is not None else 0
        if rotary is not None:
            q, k = rotary(q, offset), rotary(k, offset)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        dropout = self.attention_dropout if self.training else 0.0
        if cache is None and self.window is None:
            # The plain causal case: flash attention on GPUs.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            mask = attention_mask(T, k.shape[2], self.window, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.proj_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: ``x + attention(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(
        self, d_model: int, n_heads: int, dropout: float, attention_dropout: float, window: int | None
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = CausalSelfAttention(d_model, n_heads, dropout, attention_dropout, window)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model),
            nn.GELU(),
            nn.Linear(4 * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(
        self, x: torch.Tensor, rotary: Rotary | None, cache: KVCache | None, layer: int
    ) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), rotary, cache, layer)
        return x + self.mlp(self.norm2(x))


def warmup_cosine(warmup_steps: int, total_steps: float, min_ratio: float) -> Callable[[int], float]:
    """Learning-rate factor per optimiser step: linear warm-up, then a cosine down to ``min_ratio``
    at ``total_steps`` (constant after the warm-up when the total is unknown)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if not math.isfinite(total_steps):
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1.0, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


# ----------------------------------------------------------------------------------- the model
class MuseNet(TokenModule):
    """A GPT-2 style transformer over `EventRepresentation` tokens (see the module docstring).

    Args:
        representation: an `EventRepresentation` or its config.
        n_layers, n_heads, d_model: depth, attention heads and width.
        context: the most tokens the model reads at once (training windows must fit).
        dropout: on the embeddings and the residual branches.
        attention_dropout: on the attention weights (0 by default: on a CPU its masks cost 15 % of a
            training step of the small model).
        positions: ``rotary`` (relative; the default: a window cut anywhere has no absolute
            positions to learn) or ``learned`` (GPT-2's table).
        attention_window: local attention: each token attends to this many tokens up to itself
            (None: the whole context).
        tie_weights: share the token embedding with the output layer.
        lr_schedule: ``cosine`` (linear warm-up over ``warmup_steps`` optimiser steps, then a cosine
            to ``min_lr_ratio`` of the peak at the end of training) or ``constant``. A ``scheduler``
            partial, if given, is used instead.
        compile: ``torch.compile`` the training forward pass (generation stays eager).
        **kwargs: optimizer, scheduler, gradient_clip_val, monitor (see `GenerativeModule`).
    """

    supports_cache: ClassVar[bool] = True

    def __init__(
        self,
        representation: Representation | dict[str, Any],
        n_layers: int = 4,
        n_heads: int = 4,
        d_model: int = 256,
        context: int = 256,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        positions: str = "rotary",
        attention_window: int | None = None,
        tie_weights: bool = True,
        lr_schedule: str = "cosine",
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        compile: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(representation, **kwargs)
        if not isinstance(self.representation, EventRepresentation):
            raise IncompatibleRepresentation(
                f"MuseNet needs a multi-instrument event-token representation (representation=events), "
                f"got {type(self.representation).__name__}"
            )
        if d_model % n_heads or (positions == "rotary" and (d_model // n_heads) % 2):
            raise ValueError(f"d_model={d_model} must split into {n_heads} heads of an even width")
        if positions not in ("rotary", "learned"):
            raise ValueError(f"positions must be 'rotary' or 'learned', not {positions!r}")
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', not {lr_schedule!r}")
        self.save_model_hyperparameters()
        self.context = int(context)
        self.lr_schedule = lr_schedule
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)

        self.token_embedding = nn.Embedding(self.input_vocab_size, d_model)
        self.position_embedding = nn.Embedding(context, d_model) if positions == "learned" else None
        self.rotary = Rotary(d_model // n_heads, context) if positions == "rotary" else None
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, dropout, attention_dropout, attention_window) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = None if tie_weights else nn.Linear(d_model, self.n_classes, bias=False)

        # GPT-2's initialisation: N(0, 0.02), residual projections scaled down by depth.
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():
            if name.endswith(("attention.proj.weight", "mlp.2.weight")):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))
        self._compiled = torch.compile(self._forward) if compile else None

    def setup(self, stage: str) -> None:
        # Fail before the first batch, in the config's words, rather than deep in the forward pass.
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        window = getattr(datamodule, "window", None)
        if window is not None and window > self.context:
            raise UserError(
                f"data.window={window} is longer than model.context={self.context}: shorten the windows "
                "or lengthen the context"
            )

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # ----------------------------------------------------------------------------- forward
    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, Any]:
        """Logits ``(B, T, vocab)`` of the token after each of ``tokens`` ``(B, T)``; with a cache,
        ``tokens`` continue what it holds, and it is extended by them."""
        if cache is None and self.training and self._compiled is not None:
            return self._compiled(tokens, None), None
        return self._forward(tokens, cache), cache

    def _forward(self, tokens: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        offset = cache.length if cache is not None else 0
        if offset + tokens.shape[1] > self.context:
            raise ValueError(f"{offset + tokens.shape[1]} tokens do not fit the context of {self.context}")
        x = self.token_embedding(tokens)
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(offset, offset + tokens.shape[1], device=x.device))
        x = self.dropout(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, self.rotary, cache, layer)
        x = self.norm(x)
        if cache is not None:
            cache.length += tokens.shape[1]
        if self.head is not None:
            return self.head(x)
        return F.linear(x, self.token_embedding.weight[: self.n_classes])  # BOS is never an output

    def new_cache(self) -> KVCache:
        return KVCache(len(self.blocks), self.context)

    # ----------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        n: int,
        length: int,
        temperature: float = 1.0,
        prompt: torch.Tensor | None = None,
        top_k: int = 0,
        top_p: float = 1.0,
        use_cache: bool = True,
        instruments: str | list[str | int] | None = None,
        genre: str | None = None,
        bars: int | None = None,
        strict_instruments: bool = True,
    ) -> list[np.ndarray]:
        """``n`` token sequences of at most ``length`` tokens (prefix and primer included).

        Args:
            instruments: the instruments to play (``"piano,violin,cello"``, GM names or programs,
                ``drums``); they replace a primer's own. Without them the model picks its own
                instruments after the genre token.
            genre: the genre token (default: the data's).
            bars: stop each piece at the end of this many bars (counting the primer's).
            strict_instruments: never play an instrument outside the prefix's.
            use_cache: False recomputes the whole visible sequence for each token (the reference the
                cache must equal).
        """
        rep: EventRepresentation = self.representation
        start = self._start_tokens(n, prompt, instruments, genre)
        history = torch.cat([torch.full((n, 1), self.bos_id, device=self.device), start], dim=1)
        prefix_length = 1 + rep.prefix_length(start[0].cpu().numpy())  # BOS + conditioning tokens
        if prefix_length >= self.context:
            raise UserError(f"the conditioning prefix ({prefix_length} tokens) does not fit the context")
        # Beyond the context the window slides by a quarter of it, keeping the prefix in front.
        slide = max(1, self.context // 4)
        body_start = prefix_length
        bar_counts = (start == rep.bar_id).sum(dim=1)
        if bars is not None and int(bar_counts.max()) >= bars:
            raise ValueError(
                f"the primer already has {int(bar_counts.max())} bars: ask for more than bars={bars}"
            )
        ends = torch.full((n,), length, dtype=torch.long)
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        masks = _SamplingMasks(rep, self, start, instruments is not None, strict_instruments)
        cache = None
        while history.shape[1] - 1 < length and not done.all():
            if prefix_length + history.shape[1] - body_start > self.context:
                body_start = history.shape[1] - (self.context - prefix_length - slide)
                cache = None
            visible = torch.cat([history[:, :prefix_length], history[:, body_start:]], dim=1)
            if not use_cache:
                logits, _ = self(visible)
            elif cache is None:
                logits, cache = self(visible, self.new_cache())
            else:
                logits, cache = self(history[:, -1:], cache)
            logits = masks.apply(logits[:, -1])
            tokens = sample_logits(logits, temperature, top_k, top_p)
            tokens = torch.where(done, torch.full_like(tokens, rep.pad_id), tokens)
            masks.update(tokens)
            if bars is not None:
                bar_counts += tokens == rep.bar_id
                finished = ~done & (bar_counts > bars)
                ends[finished.cpu()] = history.shape[1] - 1  # the bar token after the last bar is cut
                done |= finished
            history = torch.cat([history, tokens[:, None]], dim=1)
        out = history[:, 1:].cpu().numpy()
        return [row[: int(end)] for row, end in zip(out, ends)]

    def sample(self, n: int, length: int | None = None, *args: Any, **options: Any) -> list[Any]:
        """`GenerativeModule.sample`; with ``bars``, notes still sounding at the end of the last bar
        are cut there, as a window of real music is cut, so a sample of N bars is N bars long."""
        musics = super().sample(n, length, *args, **options)
        if options.get("bars"):
            musics = [music_window(m, 0, options["bars"] * 4 * m.resolution) for m in musics]
        return musics

    def _start_tokens(
        self, n: int, prompt: torch.Tensor | None, instruments: Any, genre: str | None
    ) -> torch.Tensor:
        """What every sequence starts with: the conditioning prefix, then the primer's tokens."""
        rep: EventRepresentation = self.representation
        body = np.zeros(0, dtype=np.int64)
        prefix = rep.prefix([], genre)  # the genre alone: the model picks the instruments
        if prompt is not None:
            primer = prompt[0].cpu().numpy().astype(np.int64)
            if not len(primer):
                raise UserError(
                    "the primer has no notes this model's tokens keep (instruments and pitch ranges "
                    f"of the data it was trained on: {rep.instrument_mode()} instruments)"
                )
            cut = rep.prefix_length(primer)
            body = primer[cut:]
            prefix = rep.prefix(rep.prefix_programs(primer), genre)
        if instruments is not None:
            prefix = rep.prefix(rep.parse_instruments(instruments), genre)
        start = torch.as_tensor(np.concatenate([prefix, body]), device=self.device)
        return start.unsqueeze(0).expand(n, -1).clone()

    # ----------------------------------------------------------------------------- optimisation
    def optimizer_parameters(self, name: str) -> list[dict[str, Any]]:
        """Weight decay on the weight matrices and embeddings only, none on norms and biases."""
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        if self.scheduler_factory is not None or self.lr_schedule == "constant":
            return config
        trainer = self._trainer
        total = float(trainer.estimated_stepping_batches) if trainer is not None else math.inf
        schedule = warmup_cosine(max(1, self.warmup_steps), total, self.min_lr_ratio)
        config["lr_scheduler"] = {
            "scheduler": torch.optim.lr_scheduler.LambdaLR(config["optimizer"], schedule),
            "interval": "step",  # per optimiser step: accumulated batches count once
        }
        return config


class _SamplingMasks:
    """The tokens a sequence may sample next.

    Never a special token or a genre token; an instrument token only while the prefix lasts (no
    instruments were asked for and no music has started); a ``Bar`` first, as every piece starts;
    with ``strict`` instruments, no program outside the prefix's instruments (known when the prefix
    ends, for a prefix the model writes itself).
    """

    def __init__(
        self, rep: EventRepresentation, model: MuseNet, start: torch.Tensor, given: bool, strict: bool
    ) -> None:
        n, classes, device = start.shape[0], model.n_classes, start.device
        self.rep, self.strict = rep, strict
        self.blocked = torch.zeros(classes, dtype=torch.bool, device=device)
        self.blocked[list(rep.special_ids)] = True
        self.blocked[rep.first_genre : rep.first_instrument] = True
        self.instruments = torch.zeros(classes, dtype=torch.bool, device=device)
        self.instruments[rep.first_instrument :] = True
        self.not_bar = torch.ones(classes, dtype=torch.bool, device=device)
        self.not_bar[rep.bar_id] = False
        started = bool((~torch.as_tensor(rep.is_conditioning(start[0].cpu().numpy()))).any())
        self.started = torch.full((n,), started, dtype=torch.bool, device=device)
        self.in_prefix = torch.full((n,), not (given or started), dtype=torch.bool, device=device)
        self.prefix_tokens = [list(row) for row in start.tolist()]
        self.programs = torch.zeros(n, classes, dtype=torch.bool, device=device)
        for row in range(n):
            if not self.in_prefix[row]:
                self._close_prefix(row)

    def _close_prefix(self, row: int) -> None:
        programs = set(self.rep.prefix_programs(np.array(self.prefix_tokens[row])))
        if self.strict and programs:
            for program, token in self.rep.program_ids.items():
                self.programs[row, token] = program not in programs

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        blocked = self.blocked | self.programs
        blocked = blocked | (~self.in_prefix[:, None] & self.instruments)
        blocked = blocked | (
            ~self.started[:, None] & self.not_bar & ~(self.in_prefix[:, None] & self.instruments)
        )
        return logits.masked_fill(blocked, float("-inf"))

    def update(self, tokens: torch.Tensor) -> None:
        music = tokens < self.rep.first_genre
        for row in (self.in_prefix & ~music).nonzero().flatten().tolist():
            self.prefix_tokens[row].append(int(tokens[row]))
        for row in (self.in_prefix & music).nonzero().flatten().tolist():
            self.in_prefix[row] = False
            self._close_prefix(row)
        self.started |= music
