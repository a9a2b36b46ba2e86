"""Melody RNN (Magenta, 2016): an LSTM over monophonic melody events, in Magenta's three configurations.

One event per 16th-note step (`MelodyRepresentation`): 0 "no event" (hold), 1 "note off", 2.. a
note-on of pitch ``pitch_low + token - 2``. Over Magenta's range 48..83 that is 38 classes. The
configurations differ in what the LSTM reads at each step and in what it predicts:

- ``basic`` (basic_rnn): the one-hot of the previous event; predicts the next event (38 classes).
- ``lookback`` (lookback_rnn): also the events one and two bars back from the *next* step (what
  comes next if the music repeats), whether the current event repeats the events one and two bars
  back, and a ±1 binary counter of the next step's position in a two-bar span (121 inputs). It
  predicts 40 classes: the 38 events and "repeat the event 1 bar ago" / "2 bars ago", the more
  distant preferred when both apply; sampling resolves them back into events.
- ``key`` (the input of attention_rnn, Magenta's ``KeyMelodyEncoderDecoder``): the sounding pitch,
  note/silence, attack, melodic direction, the repeat flags, a 7-bit counter, a bar-start flag and
  two multi-hot major-key estimates (of the whole melody so far and of its last 3 distinct pitches;
  74 inputs), with the same 40 labels.

``attention_length > 0`` wraps the first LSTM layer in Magenta's attention (`AttentionLSTM`): it
attends over its own last ``attention_length`` outputs. Magenta's attention_rnn uses the key
encoder with attention over 40 steps; ``conf/model/melody_rnn_attention.yaml`` does the same with
the lookback encoder by default and the key encoder as an option (``model.encoder=key``).

Every step's input is computed from the token history by vectorised tensor operations (no Python
loop over time), so training reads whole melodies and generation extends them one step at a time
through a cache that holds the history, the LSTM state and the attention window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import muspy
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.melody import MAJOR_SCALE
from datamodules.notes import NoteTable
from datamodules.representations import MelodyRepresentation, Representation
from lightning_modules.base import IncompatibleRepresentation
from lightning_modules.layers.sampling import filter_logits, sample_logits
from lightning_modules.token import TokenModule
from muselab.errors import UserError

NO_EVENT = MelodyRepresentation.NO_EVENT
NOTE_OFF = MelodyRepresentation.NOTE_OFF
FIRST_NOTE_ON = MelodyRepresentation.FIRST_NOTE_ON
# Magenta's counter bits: 5 (a two-bar span of 16ths) for lookback_rnn, 7 for attention_rnn's key encoder.
DEFAULT_COUNTER_BITS = {"basic": 0, "lookback": 5, "key": 7}


# --------------------------------------------------------------------------------------------- helpers
def lag(x: torch.Tensor, steps: int, fill: int) -> torch.Tensor:
    """``x`` delayed along time (dim 1): ``out[:, j] = x[:, j - steps]``, and ``fill`` where ``j < steps``."""
    if steps <= 0:
        return x
    steps = min(steps, x.shape[1])
    return torch.cat([x.new_full((x.shape[0], steps, *x.shape[2:]), fill), x[:, : x.shape[1] - steps]], 1)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """For every position ``j`` along dim 1, the last ``k <= j`` where ``mask`` holds (0 if none).

    Position 0 is always the begin token, which no mask selects, so 0 also means "never".
    """
    shape = [1, mask.shape[1]] + [1] * (mask.dim() - 2)
    positions = torch.arange(mask.shape[1], device=mask.device).view(shape)
    return torch.where(mask, positions, 0).cummax(dim=1).values


def binary_counter(positions: torch.Tensor, bits: int) -> torch.Tensor:
    """Magenta's metric clock: bit ``i`` of each position as +1 (set) or -1 (clear), lowest bit first.

    Bit 0 flips every 16th, bit 1 every 8th, bit 2 every quarter, bit 3 every half note, bit 4 every bar.
    """
    shifts = torch.arange(bits, device=positions.device)
    return ((positions[..., None] >> shifts) & 1).float() * 2 - 1


def major_key_vector(pitch_class_counts: torch.Tensor) -> torch.Tensor:
    """Multi-hot over the 12 major keys: those whose scale holds the most of the counted notes.

    Ties are all set, so with no notes every key is set (Magenta's ``get_major_key_histogram``).
    """
    classes = torch.arange(12, device=pitch_class_counts.device)
    in_scale = torch.zeros(12, device=pitch_class_counts.device)
    in_scale[list(MAJOR_SCALE)] = 1
    membership = in_scale[(classes[:, None] - classes[None, :]) % 12]  # [pitch class, key]
    score = pitch_class_counts.float() @ membership
    return (score == score.amax(dim=-1, keepdim=True)).float()


# --------------------------------------------------------------------------------------------- encoders
class MelodyEncoder:
    """What the LSTM reads at every step, computed from the whole token history at once.

    ``history`` is ``(B, T)`` input tokens: the begin token (``vocab_size``) first, then events.
    Position ``j`` reads the event ``history[:, j]`` and predicts event ``j`` of the melody, so the
    "next step" a counter describes is ``j`` itself (Magenta's ``n = position + 1``).
    """

    input_size: int

    def __init__(
        self, vocab_size: int, pitch_low: int, steps_per_bar: int, lookbacks: Sequence[int], counter_bits: int
    ) -> None:
        self.vocab_size = vocab_size
        self.n_pitches = vocab_size - FIRST_NOTE_ON
        self.pitch_low = pitch_low
        self.steps_per_bar = steps_per_bar
        self.lookbacks = tuple(lookbacks)
        self.counter_bits = counter_bits

    def __call__(self, history: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def one_hot(self, tokens: torch.Tensor) -> torch.Tensor:
        """One-hot of events over the vocabulary; the begin token gives a zero vector."""
        return F.one_hot(tokens.clamp_min(0), self.vocab_size + 1)[..., : self.vocab_size].float()

    def repeat_flags(self, events: torch.Tensor) -> torch.Tensor:
        """Per lookback ``d``: 1 where the current event equals the event ``d`` steps earlier."""
        flags = [(lag(events, d, -1) == events) & (events >= 0) for d in self.lookbacks]
        return torch.stack(flags, dim=-1).float()


class OneHotEncoder(MelodyEncoder):
    """basic_rnn: the one-hot of the current event (38 inputs on 48..83)."""

    @property
    def input_size(self) -> int:  # type: ignore[override]
        return self.vocab_size

    def __call__(self, history: torch.Tensor) -> torch.Tensor:
        return self.one_hot(history)


class LookbackEncoder(MelodyEncoder):
    """lookback_rnn's input (Magenta's ``LookbackEventSequenceEncoderDecoder``; 121 on 48..83), in order:

    the current event (one-hot); per lookback ``d`` (one bar, two bars) the event ``d`` steps before
    the *next* step, i.e. what a repeat would bring (no-event before the melody starts); the ±1
    counter of the next step's position; per lookback, whether the current event repeats the event
    ``d`` steps back.
    """

    @property
    def input_size(self) -> int:  # type: ignore[override]
        return self.vocab_size * (1 + len(self.lookbacks)) + self.counter_bits + len(self.lookbacks)

    def __call__(self, history: torch.Tensor) -> torch.Tensor:
        events = history.masked_fill(history == self.vocab_size, -1)  # -1: before the melody
        parts = [self.one_hot(events)]
        for d in self.lookbacks:
            parts.append(self.one_hot(lag(events, d - 1, NO_EVENT).clamp_min(NO_EVENT)))
        position = torch.arange(history.shape[1], device=history.device).expand_as(history)
        parts += [binary_counter(position, self.counter_bits), self.repeat_flags(events)]
        return torch.cat(parts, dim=-1)


class KeyEncoder(MelodyEncoder):
    """attention_rnn's input (Magenta's ``KeyMelodyEncoderDecoder``; 74 on 48..83), in order:

    the sounding pitch (one-hot, none in silence); note sounding / silence; attack (the last event
    other than a note-off was a note-on: a note-off right after a note-on leaves it set, as in
    Magenta); direction (+1 the last change of pitch between consecutive notes went up, -1 down, 0
    none yet); the repeat flags; the ±1 counter of the next step; whether the next step starts a
    bar; the major keys that fit the whole melody so far best, and those that fit its last 3
    distinct pitches best (multi-hot: every tied key).
    """

    @property
    def input_size(self) -> int:  # type: ignore[override]
        return self.n_pitches + 4 + len(self.lookbacks) + self.counter_bits + 1 + 24

    def __call__(self, history: torch.Tensor) -> torch.Tensor:
        batch, steps = history.shape
        position = torch.arange(steps, device=history.device).expand(batch, steps)
        note_on = (history >= FIRST_NOTE_ON) & (history < self.vocab_size)
        pitch = (history - FIRST_NOTE_ON).clamp(0, self.n_pitches - 1)  # meaningful where note_on
        # The last note-on or note-off decides what sounds.
        change = last_index(note_on | (history == NOTE_OFF))
        sounding = note_on.gather(1, change)
        current = F.one_hot(pitch.gather(1, change), self.n_pitches).float() * sounding[..., None]
        attack = note_on.gather(1, last_index(history != NOTE_OFF))
        # Direction: sign of (note - previous note) at each note-on, carried until the next change.
        previous = lag(last_index(note_on), 1, 0)
        step = torch.where(
            note_on & note_on.gather(1, previous), torch.sign(history - history.gather(1, previous)), 0
        )
        direction = step.gather(1, last_index(step != 0))
        events = history.masked_fill(history == self.vocab_size, -1)
        # Keys: pitch-class counts of every note so far, and of the last 3 distinct pitches.
        pitch_class = F.one_hot((pitch + self.pitch_low) % 12, 12) * note_on[..., None]
        played = F.one_hot(pitch, self.n_pitches).bool() & note_on[..., None]
        last_played, which = last_index(played).topk(min(3, self.n_pitches), dim=-1)
        recent = (F.one_hot((which + self.pitch_low) % 12, 12) * (last_played > 0)[..., None]).sum(-2)
        parts = [
            current,
            torch.stack([sounding, ~sounding, attack], dim=-1).float(),
            direction[..., None].float(),
            self.repeat_flags(events),
            binary_counter(position, self.counter_bits),
            (position % self.steps_per_bar == 0)[..., None].float(),
            major_key_vector(pitch_class.cumsum(dim=1)),
            major_key_vector(recent),
        ]
        return torch.cat(parts, dim=-1)


ENCODERS: dict[str, type[MelodyEncoder]] = {
    "basic": OneHotEncoder,
    "lookback": LookbackEncoder,
    "key": KeyEncoder,
}


# --------------------------------------------------------------------------------------------- labels
def repeat_labels(events: torch.Tensor, vocab_size: int, lookbacks: Sequence[int]) -> torch.Tensor:
    """Magenta's lookback labels of ``events`` ``(B, T)`` (event ``q`` of a melody at index ``q``).

    ``vocab_size + i``: the event repeats the one ``lookbacks[i]`` steps back, the most distant
    lookback preferred; otherwise the event itself. A no-event within the first ``lookbacks[-1]``
    steps is labelled "repeat the most distant lookback", which decodes to a no-event there, so it
    is never mistaken for a rest of the tune (Magenta's rule).
    """
    labels = events.clone()
    for i, d in enumerate(lookbacks):  # shortest first: a longer lookback overwrites it
        labels = torch.where(events == lag(events, d, -1), vocab_size + i, labels)
    early = torch.arange(events.shape[1], device=events.device) < lookbacks[-1]
    return torch.where(early & (events == NO_EVENT), vocab_size + len(lookbacks) - 1, labels)


def lookback_events(events: torch.Tensor, lookbacks: Sequence[int]) -> list[torch.Tensor]:
    """Per lookback ``d``, the event a "repeat ``d``" label stands for at each position of ``events``."""
    return [lag(events, d, NO_EVENT) for d in lookbacks]


# --------------------------------------------------------------------------------------------- attention
@dataclass
class AttentionState:
    """The attention layer's state: LSTM ``(h, c)``, the last attention vector and the window of the
    last ``L`` outputs (``(B, L, H)``, newest last) with their projected keys."""

    h: torch.Tensor
    c: torch.Tensor
    attention: torch.Tensor
    window: torch.Tensor
    keys: torch.Tensor

    def select(self, index: torch.Tensor) -> AttentionState:
        return AttentionState(*(t[index] for t in (self.h, self.c, self.attention, self.window, self.keys)))


class AttentionLSTM(nn.Module):
    """One LSTM layer with Magenta's attention over its own last ``length`` outputs (``AttentionCellWrapper``).

    At step t, with ``a`` the previous attention vector and ``y_{t-L} .. y_{t-1}`` the window:

    - ``x' = W_in [x_t; a_{t-1}]`` (back to the input size), then ``(h_t, c_t) = LSTM(x', state)``;
    - ``u_i = v^T tanh(W_1 y_i + W_2 [c_t; h_t])`` over the window, ``a_t = Σ softmax(u)_i y_i``;
    - the output ``y_t = W_out [h_t; a_t]`` goes to the next layer and into the window (the oldest
      slot drops out). Empty slots hold zeros and take part in the softmax, as in Magenta.
    """

    def __init__(self, input_size: int, hidden_size: int, length: int) -> None:
        super().__init__()
        self.hidden_size, self.length = hidden_size, length
        self.input_mix = nn.Linear(input_size + hidden_size, input_size)
        self.cell = nn.LSTMCell(input_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size, bias=False)  # W_1, on the window
        self.query = nn.Linear(2 * hidden_size, hidden_size)  # W_2, on the cell state [c; h]
        self.score = nn.Linear(hidden_size, 1, bias=False)  # v
        self.output = nn.Linear(2 * hidden_size, hidden_size)

    def initial_state(self, batch: int, like: torch.Tensor) -> AttentionState:
        zeros = like.new_zeros(batch, self.hidden_size)
        window = like.new_zeros(batch, self.length, self.hidden_size)
        return AttentionState(zeros, zeros, zeros, window, window)

    def forward(
        self,
        x: torch.Tensor,
        state: AttentionState | None = None,
        lengths: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, AttentionState] | tuple[torch.Tensor, AttentionState, torch.Tensor]:
        """Outputs ``(B, T, H)`` and the new state (and with ``return_weights`` the attention weights
        ``(B, T, L)`` over the window slots, oldest first).

        ``lengths`` (rows sorted longest first) skips the padding of a batch of melodies: a row stops
        being computed after its last real step (its outputs there are zeros). The returned state is
        then only that of the rows that run to the end.
        """
        batch, steps, input_size = x.shape
        state = state or self.initial_state(batch, x)
        h, c, attention = state.h, state.c, state.attention
        # The window as lists of its outputs and their keys, oldest first: stacking the last L each
        # step costs what shifting a window tensor costs, but its gradient needs no window-sized
        # buffer per step (that zero-filling was a third of the layer's time).
        ys, ks = list(state.window.unbind(1)), list(state.keys.unbind(1))
        if lengths is None:
            active = [batch] * steps
        else:
            active = (lengths[None, :] > torch.arange(steps, device=x.device)[:, None]).sum(1).tolist()
        # The input's share of W_in for every step at once; only the attention's share is recurrent.
        # (Unbound per step: a slice of the whole tensor per step would cost a tensor-sized gradient.)
        mixed = F.linear(x, self.input_mix.weight[:, :input_size], self.input_mix.bias).unbind(1)
        attention_weight = self.input_mix.weight[:, input_size:]
        outputs, weights = [], []
        for t in range(steps):
            rows = active[t]
            if rows < len(h):  # the shortest melodies have ended: drop their rows
                h, c, attention = h[:rows], c[:rows], attention[:rows]
                ys, ks = [y[:rows] for y in ys], [k[:rows] for k in ks]
            h, c = self.cell(mixed[t][:rows] + attention @ attention_weight.T, (h, c))
            query = self.query(torch.cat([c, h], dim=-1))
            window, keys = torch.stack(ys, dim=1), torch.stack(ks, dim=1)
            alpha = torch.softmax(self.score(torch.tanh(keys + query[:, None])).squeeze(-1), dim=-1)
            attention = torch.bmm(alpha[:, None], window).squeeze(1)
            y = self.output(torch.cat([h, attention], dim=-1))
            ys, ks = [*ys[1:], y], [*ks[1:], self.key(y)]
            outputs.append(y)
            weights.append(alpha)
        state = AttentionState(h, c, attention, torch.stack(ys, dim=1), torch.stack(ks, dim=1))
        out = _unpack(outputs, active, batch)
        return (out, state, _unpack(weights, active, batch)) if return_weights else (out, state)


def _unpack(per_step: list[torch.Tensor], rows: list[int], batch: int) -> torch.Tensor:
    """``(batch, steps, ...)`` from each step's ``(rows[t], ...)`` outputs (the first rows), zeros elsewhere."""
    if all(r == batch for r in rows):
        return torch.stack(per_step, dim=1)
    steps = len(per_step)
    where = torch.cat([torch.arange(r) * steps + t for t, r in enumerate(rows)]).to(per_step[0].device)
    flat = per_step[0].new_zeros(batch * steps, *per_step[0].shape[1:])
    return flat.index_copy(0, where, torch.cat(per_step)).view(batch, steps, *per_step[0].shape[1:])


# --------------------------------------------------------------------------------------------- the model
@dataclass
class MelodyCache:
    """What generation carries from step to step: every input token so far (the lookback and key
    inputs read it), the attention layer's state and the LSTM stack's ``(h, c)``."""

    history: torch.Tensor
    attention: AttentionState | None
    lstm: tuple[torch.Tensor, torch.Tensor] | None

    def select(self, index: torch.Tensor) -> MelodyCache:
        """The cache of the rows ``index`` (beam search keeps, drops and copies rows)."""
        return MelodyCache(
            self.history[index],
            None if self.attention is None else self.attention.select(index),
            None if self.lstm is None else (self.lstm[0][:, index], self.lstm[1][:, index]),
        )


class MelodyRNN(TokenModule):
    """Magenta's Melody RNN: basic, lookback or attention (see the module docstring).

    Args:
        representation: a `MelodyRepresentation` (Magenta's range is ``pitch_low=48, pitch_high=83``).
        encoder: ``"basic"``, ``"lookback"`` or ``"key"`` (what the LSTM reads; see the module docstring).
        attention_length: attend over the first layer's last this many outputs (0: no attention).
        hidden_size, num_layers: the LSTM stack (Magenta: 2 x 128).
        dropout: dropout on every layer's output (Magenta: keep probability 0.5).
        counter_bits: bits of the metric counter (None: 5 for lookback, 7 for key, as in Magenta).
        max_steps: training melodies are cut to this many steps (Magenta's ``max_steps_truncate``;
            None: as they come).
        kwargs: `GenerativeModule` arguments (optimizer, gradient_clip_val, monitor, ...).
    """

    supports_cache = True

    def __init__(
        self,
        representation: Representation | dict[str, Any],
        encoder: str = "basic",
        attention_length: int = 0,
        hidden_size: int = 128,
        num_layers: int = 2,
        dropout: float = 0.5,
        counter_bits: int | None = None,
        max_steps: int | None = 512,
        **kwargs: Any,
    ) -> None:
        super().__init__(representation, **kwargs)
        self.save_model_hyperparameters()
        if not isinstance(self.representation, MelodyRepresentation):
            raise IncompatibleRepresentation(
                f"MelodyRNN needs a melody representation, got {type(self.representation).__name__}"
            )
        if encoder not in ENCODERS:
            raise UserError(f"model.encoder must be one of {', '.join(ENCODERS)}, not {encoder!r}")
        if attention_length < 0 or num_layers < 1:
            raise UserError("model.attention_length must be >= 0 and model.num_layers >= 1")
        rep = self.representation
        self.steps_per_bar = rep.steps_per_bar()
        self.lookbacks = (self.steps_per_bar, 2 * self.steps_per_bar)  # one and two bars
        bits = DEFAULT_COUNTER_BITS[encoder] if counter_bits is None else int(counter_bits)
        self.encoder = ENCODERS[encoder](
            self.vocab_size, rep.pitch_low, self.steps_per_bar, self.lookbacks, bits
        )
        self.repeats = encoder != "basic"
        self.n_classes = self.vocab_size + (len(self.lookbacks) if self.repeats else 0)
        self.max_steps = max_steps

        size = self.encoder.input_size
        self.attention = AttentionLSTM(size, hidden_size, attention_length) if attention_length else None
        lstm_layers = num_layers - (1 if self.attention else 0)
        lstm_input = hidden_size if self.attention else size
        self.lstm = None
        if lstm_layers:
            between = dropout if lstm_layers > 1 else 0.0
            self.lstm = nn.LSTM(lstm_input, hidden_size, lstm_layers, batch_first=True, dropout=between)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, self.n_classes)
        self.apply(_init_like_tensorflow)

    # ----------------------------------------------------------------------------- network
    def forward(
        self, tokens: torch.Tensor, cache: MelodyCache | None = None, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MelodyCache]:
        """Scores of the next class at every position of ``tokens`` ``(B, T)``, continuing ``cache``.

        ``lengths`` (training: real steps per row, rows sorted longest first) lets the attention layer,
        a loop over time, skip the padding after each melody.
        """
        history = tokens if cache is None else torch.cat([cache.history, tokens], dim=1)
        h = self.encoder(history)[:, -tokens.shape[1] :]
        attention_state = lstm_state = None
        if self.attention is not None:
            h, attention_state = self.attention(h, None if cache is None else cache.attention, lengths)
            h = self.dropout(h)
        if self.lstm is not None:
            # Padding is run through the LSTM, not packed: on the CPU a packed LSTM costs ~10x a padded
            # one, and the steps after a melody's end change none of its outputs.
            h, lstm_state = self.lstm(h, None if cache is None else cache.lstm)
            h = self.dropout(h)
        return self.out(h), MelodyCache(history, attention_state, lstm_state)

    # ----------------------------------------------------------------------------- labels
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        return repeat_labels(x, self.vocab_size, self.lookbacks) if self.repeats else x

    def classes_to_tokens(self, classes: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Repeat labels become the event one or two bars back (no-event before the melody has that many)."""
        tokens = classes.clone()
        for i, d in enumerate(self.lookbacks):
            repeated = history[:, -d] if history.shape[1] >= d else torch.full_like(classes, NO_EVENT)
            tokens = torch.where(classes == self.vocab_size + i, repeated, tokens)
        return tokens

    def event_probabilities(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, vocab)``: the probability of each event at each step of ``x``, a repeat label's
        mass added to the event it stands for there (so every encoder's figures are comparable)."""
        probs = torch.softmax(logits.float(), dim=-1)
        if not self.repeats:
            return probs
        events = probs[..., : self.vocab_size].clone()
        for i, source in enumerate(lookback_events(x, self.lookbacks)):
            events.scatter_add_(-1, source[..., None], probs[..., self.vocab_size + i, None])
        return events

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Mean cross-entropy of the labels (nats per step) and their accuracy, as Magenta trains, with
        ``event_nll`` / ``event_accuracy``: the same for the events the labels stand for."""
        x, mask = batch["x"].long(), batch["mask"]
        if self.max_steps:
            x, mask = x[:, : self.max_steps], mask[:, : self.max_steps]
        # Longest first and cut to the longest, so the attention loop can drop each row after its end
        # (the loss is a sum over real steps: the order of the rows does not matter).
        lengths = mask.sum(1).clamp_min(1)
        order = lengths.argsort(descending=True)
        lengths = lengths[order]
        x, mask = x[order, : int(lengths[0])], mask[order, : int(lengths[0])]
        logits, _ = self(self.inputs(x), lengths=lengths)
        targets = self.targets(x)
        nll = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")
        weight = mask.float()
        count = weight.sum().clamp_min(1.0)
        events = self.event_probabilities(logits.detach(), x)
        event_nll = -events.gather(-1, x[..., None]).squeeze(-1).clamp_min(1e-12).log()
        return {
            "loss": (nll * weight).sum() / count,
            "accuracy": ((logits.argmax(-1) == targets) & mask).sum() / count,
            "event_nll": (event_nll * weight).sum() / count,
            "event_accuracy": ((events.argmax(-1) == x) & mask).sum() / count,
        }

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
        bars: int | None = None,
        beam_size: int = 1,
        branch_factor: int = 1,
        steps_per_iteration: int = 1,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """``n`` melodies of ``length`` steps (or ``bars`` bars), the primer's first.

        ``temperature``, ``top_k`` and ``top_p`` shape each step's distribution. ``beam_size`` /
        ``branch_factor`` / ``steps_per_iteration`` run Magenta's beam search (`beam_search`); the
        defaults (1, 1, 1) are plain sampling.
        """
        if bars is not None:
            length = int(bars) * self.steps_per_bar
            primed = 0 if prompt is None else prompt.shape[1]
            if length <= primed:
                raise UserError(
                    f"bars={bars} ({length} steps) is not longer than the primer ({primed} steps)"
                )
        if min(beam_size, branch_factor, steps_per_iteration) < 1:
            raise UserError("beam_size, branch_factor and steps_per_iteration must be at least 1")
        if beam_size == branch_factor == 1:
            return super().generate(n, length, temperature, prompt, top_k, top_p, use_cache)
        return self.beam_search(
            n, length, temperature, prompt, top_k, top_p, beam_size, branch_factor, steps_per_iteration
        )

    def beam_search(
        self,
        n: int,
        length: int,
        temperature: float,
        prompt: torch.Tensor | None,
        top_k: int,
        top_p: float,
        beam_size: int,
        branch_factor: int,
        steps_per_iteration: int,
    ) -> torch.Tensor:
        """Magenta's sample-and-prune beam search, for ``n`` melodies at once.

        Each melody starts as ``beam_size`` copies of the primer. Every iteration keeps the
        ``beam_size`` best candidates by log-probability of their sampled steps (after the first),
        copies each ``branch_factor`` times and extends every copy by ``steps_per_iteration``
        *sampled* steps; the first iteration is shorter so that the others fill the length exactly.
        The best candidate of each melody is returned. (Magenta also adds the primer's own
        log-likelihood to every score: it is the same for all candidates, so it is left out.)
        """
        history = torch.full((n, 1), self.bos_id, dtype=torch.long, device=self.device)
        if prompt is not None:
            history = torch.cat([history, prompt.to(self.device).long().reshape(n, -1)], dim=1)
        remaining = length - (history.shape[1] - 1)
        if remaining <= 0:
            return history[:, 1 : length + 1]
        history = history.repeat_interleave(beam_size, dim=0)
        scores = history.new_zeros(len(history), dtype=torch.float)
        cache: MelodyCache | None = None
        first = (remaining - 1) % steps_per_iteration + 1
        iterations = [first] + [steps_per_iteration] * ((remaining - first) // steps_per_iteration)
        scale = temperature if temperature > 0 else 1.0
        for i, steps in enumerate(iterations):
            if i > 0:  # prune to the best beam_size candidates of each melody
                best = scores.view(n, -1).topk(beam_size, dim=-1).indices
                keep = (
                    best + torch.arange(n, device=best.device)[:, None] * scores.view(n, -1).shape[1]
                ).flatten()
                history, scores, cache = history[keep], scores[keep], cache.select(keep)
            branch = torch.arange(len(history), device=history.device).repeat_interleave(branch_factor)
            history, scores = history[branch], scores[branch]
            cache = None if cache is None else cache.select(branch)
            for _ in range(steps):
                new = history.shape[1] if cache is None else 1
                logits, cache = self.next_logits(history, cache, new, use_cache=True)
                logits = filter_logits(logits, top_k, top_p)
                classes = sample_logits(logits, temperature)
                scores += torch.log_softmax(logits / scale, dim=-1).gather(-1, classes[:, None]).squeeze(-1)
                tokens = self.classes_to_tokens(classes, history[:, 1:])
                history = torch.cat([history, tokens[:, None]], dim=1)
        best = scores.view(n, -1).argmax(dim=-1)
        rows = best + torch.arange(n, device=best.device) * scores.view(n, -1).shape[1]
        return history[rows, 1:]

    def sample(
        self,
        n: int,
        length: int | None = None,
        temperature: float = 1.0,
        prompt: muspy.Music | NoteTable | Any | None = None,
        **options: Any,
    ) -> list[muspy.Music]:
        """`GenerativeModule.sample`; a primer given as music that was moved to C to be read (the
        representation's ``transpose_to_c``) is continued in C, and the result moved back to its key."""
        musics = super().sample(n, length, temperature, prompt, **options)
        if isinstance(prompt, muspy.Music | NoteTable):
            shift = self.representation.key_shift(prompt)
            for music in musics:
                music.transpose(-shift)
        return musics


def _init_like_tensorflow(module: nn.Module) -> None:
    """Magenta's initialisation: Glorot-uniform weights, zero biases, and a forget-gate bias of 1
    (TensorFlow's LSTM cells add 1 to the forget gate)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LSTM | nn.LSTMCell):
        hidden = module.hidden_size
        for name, param in module.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(param)
            else:
                nn.init.zeros_(param)
                if name.startswith("bias_ih"):
                    param.data[hidden : 2 * hidden] = 1.0  # PyTorch's gate order: input, forget, cell, output
