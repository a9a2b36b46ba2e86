"""MusicVAE (Roberts, Engel, Raffel, Hawthorne, Eck; ICML 2018): a recurrent VAE of melodies, trios
and multi-track piano-rolls, with a flat or a hierarchical ("conductor") decoder.

Read top to bottom:

1. **Loss pieces**, pure functions: the KL of a diagonal Gaussian posterior per latent dimension,
   free bits, the β schedule ``β = (1 - beta_rate^step) · max_beta``, the inverse-sigmoid
   scheduled-sampling probability, and spherical / linear interpolation.
2. **Parts**: what the decoder writes at each step. A melody is one categorical part, a trio three
   (melody, bass, drums: Magenta's 9 drum classes as one of 512 events), a piano-roll one Bernoulli
   part per track (MuseLab's multi-track VAE: any chord in any track, no chord vocabulary).
3. **Networks**: the bidirectional LSTM encoder (μ = W·h + b, σ = softplus(W'·h + b')), the flat
   decoder (an LSTM started from tanh(FC(z)) that reads the previous step and z), and the
   hierarchical decoder: a conductor LSTM, started from tanh(FC(z)), emits one embedding per
   segment (a bar); a bottom LSTM per part, started from tanh(FC(embedding)), writes the segment
   reading its previous step and the embedding. A segment starts from a zero step and gets no state
   from the segment before it, so segments are decoded in parallel: 16x fewer sequential steps
   for 16 bars. (Magenta's bottom decoder reads the last token of the previous bar first.)
4. **Figures**: reconstruction accuracy teacher-forced and sampled (z = μ, argmax decoding), active
   latent units (variance of μ over the data > 0.01), KL per dimension, and the **attribute
   vectors** of section 5 of the paper (mean μ of the pieces in the top quartile of a music
   attribute minus that of the bottom quartile), as torchmetrics metrics.
5. **The model**: loss = reconstruction (nats summed over steps and parts, per piece) + β ·
   max(KL - free_bits · ln 2, 0); `generate` decodes z ~ N(0, I) (shifted along attribute vectors
   on request); `encode(musics) -> z` and `decode(z) -> musics` from Python; Magenta's learning
   rate decay ``(lr - min_lr) · decay^step + min_lr``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import muspy
import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from datamodules.notes import NoteTable
from datamodules.representations import Representation, StepGrid
from lightning_modules.base import GenerativeModule, IncompatibleRepresentation
from muselab.errors import UserError

LN2 = math.log(2.0)
ACTIVE_UNIT_VARIANCE = 0.01  # a latent unit is active when Var(μ) over the data exceeds this


# ==================================================================================== loss pieces
def kl_per_dimension(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) || N(0, 1)) in nats, per latent dimension: ½(μ² + σ² - 1) - ln σ."""
    return 0.5 * (mu.pow(2) + sigma.pow(2) - 1.0) - torch.log(sigma.clamp_min(1e-8))


def free_bits_kl(kl: torch.Tensor, free_bits: float) -> torch.Tensor:
    """The KL each piece pays: max(KL - free_bits · ln 2, 0), on its KL summed over dimensions
    (as Magenta applies it: to the total, not per dimension)."""
    return (kl - free_bits * LN2).clamp_min(0.0)


def beta_at(step: int, beta_rate: float, max_beta: float) -> float:
    """β = (1 - beta_rate^step) · max_beta: 0 at step 0, rising towards max_beta (constant max_beta
    from step 1 when beta_rate is 0)."""
    return (1.0 - beta_rate**step) * max_beta


def sampling_probability(step: int, schedule: str, rate: float) -> float:
    """Probability of feeding the decoder its own sample instead of the truth (scheduled sampling).

    ``inverse_sigmoid``: 1 - k / (k + exp(step / k)) with k = ``rate`` (0.5 at step k·ln k);
    ``constant``: ``rate``; ``none``: 0 (teacher forcing).
    """
    if schedule == "none":
        return 0.0
    if schedule == "constant":
        return float(rate)
    if schedule == "inverse_sigmoid":
        exponent = step / rate
        return 1.0 if exponent > 700 else 1.0 - rate / (rate + math.exp(exponent))
    raise ValueError(f"sampling_schedule must be none, constant or inverse_sigmoid, not {schedule!r}")


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1); linear when they are parallel."""
    cos = F.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0).unsqueeze(-1)
    omega = torch.acos(cos)
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    sin = torch.sin(omega)
    if (sin.abs() < 1e-6).any():
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin


def interpolate_latents(a: torch.Tensor, b: torch.Tensor, steps: int, mode: str = "slerp") -> torch.Tensor:
    """``steps`` latent codes from ``a`` to ``b`` (both included): ``(steps, z)``."""
    if steps < 2:
        raise UserError(f"steps={steps}: an interpolation needs at least 2 steps (A and B)")
    if mode not in ("slerp", "lerp"):
        raise UserError(f"mode={mode!r}: must be slerp (spherical) or lerp (linear)")
    ts = torch.linspace(0.0, 1.0, steps, dtype=a.dtype, device=a.device)
    if mode == "lerp":
        return torch.stack([(1 - t) * a + t * b for t in ts])
    return torch.stack([slerp(a, b, t) for t in ts])


# ========================================================================================= parts
class CategoricalPart:
    """One token per step out of ``size`` (a melody's events, a drum pattern's 512 subsets)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)  # logits per step
        self.input_size = self.size  # what the networks read of one step

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.one_hot(tokens.long(), self.size).float()

    def nll(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, -2), target.long().flatten(), reduction="none").view(
            target.shape
        )

    def choose(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """A token per row: argmax at temperature 0, else a draw from softmax(logits / T)."""
        if temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / temperature, dim=-1)
        return torch.multinomial(probs.flatten(0, -2), 1).view(logits.shape[:-1])

    def correct(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1) == target.long()


class DrumPart(CategoricalPart):
    """Magenta's drum events: one of 512 subsets of 9 drum classes per step. The networks read the
    9 class bits and a "nothing hit" bit (Magenta's ``roll_input``), not a 512-way one-hot."""

    def __init__(self, n_classes: int = 9) -> None:
        super().__init__(2**n_classes)
        self.n_classes = n_classes
        self.input_size = n_classes + 1

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        bits = (tokens.long().unsqueeze(-1) >> torch.arange(self.n_classes, device=tokens.device)) & 1
        return torch.cat([bits, (tokens == 0).long().unsqueeze(-1)], dim=-1).float()


class BernoulliPart:
    """A multi-hot frame of ``size`` pitches (one piano-roll track): each pitch on or off."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.input_size = self.size

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.float()

    def nll(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none").sum(-1)

    def choose(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        if temperature <= 0:
            return (logits > 0).float()
        return torch.bernoulli(torch.sigmoid(logits / temperature))

    def correct(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The whole frame right (every pitch of the track)."""
        return ((logits > 0) == (target > 0.5)).all(-1)


Part = CategoricalPart | BernoulliPart


def parts_of(representation: Representation) -> list[Part]:
    """What the decoder writes per step for ``representation``; an error for one it cannot read."""
    info = representation.describe()
    if info.kind == "tokens" and info.vocab_size is not None and info.shape_per_step == ():
        return [CategoricalPart(info.vocab_size)]
    if info.kind == "trio":
        melody, bass, drums = representation.part_sizes
        return [CategoricalPart(melody), CategoricalPart(bass), DrumPart(int(math.log2(drums)))]
    if info.kind == "pianoroll":
        n_tracks, n_pitches = info.shape_per_step
        return [BernoulliPart(n_pitches) for _ in range(n_tracks)]
    raise IncompatibleRepresentation(
        f"MusicVAE needs a melody, trio or piano-roll representation, got a {info.kind!r} one"
    )


def split_parts(x: torch.Tensor, kind: str) -> list[torch.Tensor]:
    """A batch ``(B, T, ...)`` in the representation's layout as one tensor per part."""
    if kind == "tokens":
        return [x]
    return list(x.unbind(2))  # trio (B, T, 3) -> 3 x (B, T); piano-roll (B, T, tracks, pitches)


def join_parts(parts: Sequence[torch.Tensor], kind: str) -> torch.Tensor:
    """The inverse of `split_parts`."""
    return parts[0] if kind == "tokens" else torch.stack(list(parts), dim=2)


Chooser = Callable[[Part, torch.Tensor], torch.Tensor]


# ====================================================================================== networks
def lstm(input_size: int, hidden_size: int, num_layers: int, bidirectional: bool = False) -> nn.LSTM:
    """A batch-first LSTM whose forget gates start at a bias of +1, as TensorFlow's LSTM cells."""
    rnn = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional)
    for name, parameter in rnn.named_parameters():
        if name.startswith("bias_ih"):
            with torch.no_grad():
                parameter[hidden_size : 2 * hidden_size].fill_(1.0)  # gate order i, f, g, o
    return rnn


def small_normal_(layer: nn.Linear) -> nn.Linear:
    """Magenta's N(0, 0.001²) kernels and zero biases for the layers that read or make z."""
    nn.init.normal_(layer.weight, std=0.001)
    nn.init.zeros_(layer.bias)
    return layer


class InitialState(nn.Module):
    """An LSTM's initial state from a code ``c``: tanh(FC(c)), split into (h0, c0) per layer."""

    def __init__(self, code_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.fc = small_normal_(nn.Linear(code_size, 2 * num_layers * hidden_size))

    def forward(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = torch.tanh(self.fc(code)).view(len(code), 2, self.num_layers, self.hidden_size)
        return state[:, 0].transpose(0, 1).contiguous(), state[:, 1].transpose(0, 1).contiguous()


class Encoder(nn.Module):
    """Bidirectional LSTM over the whole input; the last layer's final forward and backward states,
    concatenated, give μ = W·h + b and σ = softplus(W'·h + b')."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, z_size: int) -> None:
        super().__init__()
        self.rnn = lstm(input_size, hidden_size, num_layers, bidirectional=True)
        self.mu = small_normal_(nn.Linear(2 * hidden_size, z_size))
        self.sigma = small_normal_(nn.Linear(2 * hidden_size, z_size))

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if lengths is not None and bool((lengths < x.shape[1]).any()):
            # Padded pieces: the backward pass must start at each piece's own last step.
            x = nn.utils.rnn.pack_padded_sequence(
                x, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False
            )
        _, (h, _) = self.rnn(x)
        final = torch.cat([h[-2], h[-1]], dim=-1)  # last layer: forward, backward
        return self.mu(final), F.softplus(self.sigma(final))


class LSTMDecoder(nn.Module):
    """An LSTM that writes ``parts`` step by step from a code (z, or a conductor embedding).

    Its state starts at tanh(FC(code)); at each step it reads the previous step's parts (zeros at
    the first) concatenated with the code. ``teacher_forced`` scores a whole sequence at once;
    ``run`` writes one step at a time, feeding back what ``choose`` picks (or, with ``teacher``,
    the truth except with probability ``sample_probability`` per piece and step).
    """

    def __init__(self, parts: Sequence[Part], code_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.parts = list(parts)
        self.sizes = [p.size for p in self.parts]
        self.input_size = sum(p.input_size for p in self.parts)
        self.initial = InitialState(code_size, hidden_size, num_layers)
        self.rnn = lstm(self.input_size + code_size, hidden_size, num_layers)
        self.out = nn.Linear(hidden_size, sum(self.sizes))

    def read(self, steps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The input features of one or more steps of every part, concatenated."""
        return torch.cat([p.features(s) for p, s in zip(self.parts, steps)], dim=-1)

    def teacher_forced(self, code: torch.Tensor, targets: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Logits ``(B, T, size)`` per part, each step predicted from the true steps before it."""
        features = self.read(targets)
        previous = F.pad(features[:, :-1], (0, 0, 1, 0))  # shift right: step t reads step t-1
        inputs = torch.cat([previous, code[:, None].expand(-1, features.shape[1], -1)], dim=-1)
        h, _ = self.rnn(inputs, self.initial(code))
        return list(self.out(h).split(self.sizes, dim=-1))

    def run(
        self,
        code: torch.Tensor,
        steps: int,
        choose: Chooser,
        teacher: Sequence[torch.Tensor] | None = None,
        sample_probability: float = 1.0,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Write ``steps`` steps; returns the logits and the chosen steps, ``(B, T, ...)`` per part."""
        state = self.initial(code)
        previous = code.new_zeros(len(code), self.input_size)
        logits_out: list[list[torch.Tensor]] = [[] for _ in self.parts]
        chosen_out: list[list[torch.Tensor]] = [[] for _ in self.parts]
        for t in range(steps):
            h, state = self.rnn(torch.cat([previous, code], dim=-1)[:, None], state)
            logits = self.out(h[:, 0]).split(self.sizes, dim=-1)
            chosen = [choose(part, lg) for part, lg in zip(self.parts, logits)]
            fed = chosen
            if teacher is not None:
                own = torch.rand(len(code), device=code.device) < sample_probability
                fed = [
                    torch.where(own.view(-1, *[1] * (c.dim() - 1)), c.to(truth.dtype), truth[:, t])
                    for c, truth in zip(chosen, teacher)
                ]
            previous = self.read(fed)
            for i, (lg, c) in enumerate(zip(logits, chosen)):
                logits_out[i].append(lg)
                chosen_out[i].append(c)
        return [torch.stack(x, 1) for x in logits_out], [torch.stack(x, 1) for x in chosen_out]


class FlatDecoder(nn.Module):
    """One LSTM over the whole sequence, conditioned on z, writing every part at each step."""

    def __init__(self, parts: Sequence[Part], z_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.decoder = LSTMDecoder(parts, z_size, hidden_size, num_layers)

    def teacher_forced(self, z: torch.Tensor, targets: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.decoder.teacher_forced(z, targets)

    def run(
        self,
        z: torch.Tensor,
        steps: int,
        choose: Chooser,
        teacher: Sequence[torch.Tensor] | None = None,
        sample_probability: float = 1.0,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.decoder.run(z, steps, choose, teacher, sample_probability)


class HierarchicalDecoder(nn.Module):
    """A conductor LSTM emits one embedding per segment; a bottom LSTM per part writes each segment
    from its embedding alone (no state, no token from the segment before), all segments at once."""

    def __init__(
        self,
        parts: Sequence[Part],
        z_size: int,
        conductor_size: int,
        conductor_layers: int,
        hidden_size: int,
        num_layers: int,
        segment_steps: int,
    ) -> None:
        super().__init__()
        self.segment_steps = int(segment_steps)
        self.initial = InitialState(z_size, conductor_size, conductor_layers)
        self.conductor = lstm(1, conductor_size, conductor_layers)  # its input is a constant zero
        self.bottom = nn.ModuleList(LSTMDecoder([p], conductor_size, hidden_size, num_layers) for p in parts)

    def segments(self, steps: int) -> int:
        if steps % self.segment_steps:
            raise ValueError(
                f"the hierarchical decoder writes whole segments of {self.segment_steps} steps; "
                f"{steps} steps is not a multiple of that"
            )
        return steps // self.segment_steps

    def embeddings(self, z: torch.Tensor, n_segments: int) -> torch.Tensor:
        """The conductor's output per segment, flattened to ``(B * n_segments, conductor_size)``."""
        e, _ = self.conductor(z.new_zeros(len(z), n_segments, 1), self.initial(z))
        return e.reshape(len(z) * n_segments, -1)

    def _by_segment(self, x: torch.Tensor, n_segments: int) -> torch.Tensor:
        return x.reshape(len(x) * n_segments, self.segment_steps, *x.shape[2:])

    def teacher_forced(self, z: torch.Tensor, targets: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        n_segments = self.segments(targets[0].shape[1])
        e = self.embeddings(z, n_segments)
        out = []
        for decoder, target in zip(self.bottom, targets):
            (logits,) = decoder.teacher_forced(e, [self._by_segment(target, n_segments)])
            out.append(logits.reshape(len(z), -1, logits.shape[-1]))
        return out

    def run(
        self,
        z: torch.Tensor,
        steps: int,
        choose: Chooser,
        teacher: Sequence[torch.Tensor] | None = None,
        sample_probability: float = 1.0,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        n_segments = self.segments(steps)
        e = self.embeddings(z, n_segments)
        logits_out, chosen_out = [], []
        for i, decoder in enumerate(self.bottom):
            truth = None if teacher is None else [self._by_segment(teacher[i], n_segments)]
            (logits,), (chosen,) = decoder.run(e, self.segment_steps, choose, truth, sample_probability)
            logits_out.append(logits.reshape(len(z), steps, *logits.shape[2:]))
            chosen_out.append(chosen.reshape(len(z), steps, *chosen.shape[2:]))
        return logits_out, chosen_out


# ================================================================================ music attributes
def _pitched_notes(music: muspy.Music) -> tuple[np.ndarray, float]:
    """(n, 3) onset, end, pitch rows of every pitched note, in 16th-note steps, and the length in steps."""
    per_step = (music.resolution or muspy.DEFAULT_RESOLUTION) / 4.0
    rows = [(n.time, n.time + n.duration, n.pitch) for t in music.tracks if not t.is_drum for n in t.notes]
    notes = np.array(rows, dtype=np.float64).reshape(-1, 3)
    notes[:, :2] /= per_step
    return notes, music.get_end_time() / per_step


def _average_interval(music: muspy.Music) -> float:
    jumps = []
    for track in music.tracks:
        if track.is_drum:
            continue
        pitches = [n.pitch for n in sorted(track.notes, key=lambda n: (n.time, -n.pitch))]
        jumps += list(np.abs(np.diff(pitches)))
    return float(np.mean(jumps)) if jumps else math.nan


def _polyphony(notes: np.ndarray, length: float) -> float:
    steps = max(math.ceil(length), 1)
    sounding = np.zeros(steps + 1)
    for onset, end, _ in notes:
        sounding[int(onset) : max(math.ceil(end), int(onset) + 1)] += 1
    busy = sounding[sounding > 0]
    return float(busy.mean()) if len(busy) else math.nan


C_MAJOR = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1], dtype=bool)


def music_attributes(music: muspy.Music) -> dict[str, float]:
    """The attributes attribute vectors are built for (NaN where one has no meaning: no notes).

    - ``note_density``: note onsets per 4/4 bar (all pitched tracks);
    - ``pitch_range``: highest - lowest pitch; ``mean_pitch``: the mean MIDI pitch;
    - ``average_interval``: mean absolute interval between consecutive notes of a track (semitones);
    - ``c_diatonic``: share of notes in the C major scale;
    - ``syncopation_16th`` / ``syncopation_8th``: share of notes starting on an odd 16th / an odd
      8th position, as in the paper's figures;
    - ``polyphony``: mean number of notes sounding when any sounds.
    """
    notes, length = _pitched_notes(music)
    if not len(notes):
        return {name: (0.0 if name == "note_density" else math.nan) for name in ATTRIBUTES}
    position = np.rint(notes[:, 0]).astype(np.int64)  # onset in 16ths
    pitch = notes[:, 2].astype(np.int64)
    return {
        "note_density": len(notes) / max(length / 16.0, 1e-9),
        "pitch_range": float(pitch.max() - pitch.min()),
        "mean_pitch": float(pitch.mean()),
        "average_interval": _average_interval(music),
        "c_diatonic": float(C_MAJOR[pitch % 12].mean()),
        "syncopation_16th": float(np.mean(position % 2 == 1)),
        "syncopation_8th": float(np.mean(position % 4 == 2)),
        "polyphony": _polyphony(notes, length),
    }


ATTRIBUTES: tuple[str, ...] = (
    "note_density",
    "pitch_range",
    "mean_pitch",
    "average_interval",
    "c_diatonic",
    "syncopation_16th",
    "syncopation_8th",
    "polyphony",
)


def attribute_vectors(mu: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per attribute: mean μ of the pieces in its top quartile minus that of its bottom quartile.

    ``mu`` is ``(N, z)``, ``values`` ``(N, A)`` (NaN: undefined for that piece). When more than half
    the pieces share the lowest value (no syncopation at all), "high" is every piece above it.
    Returns the vectors ``(A, z)`` and whether each is defined: at least 8 pieces, and two groups
    of at least 2 (an attribute every piece shares, like the polyphony of melodies, has none).
    """
    vectors = mu.new_zeros(values.shape[1], mu.shape[1])
    defined = torch.zeros(values.shape[1], dtype=torch.bool, device=mu.device)
    for a in range(values.shape[1]):
        known = torch.isfinite(values[:, a])
        v, m = values[known, a], mu[known]
        if len(v) < 8:
            continue
        low, high = torch.quantile(v, 0.25), torch.quantile(v, 0.75)
        top = v >= high if high > low else v > low
        bottom = v <= low
        if top.sum() < 2 or bottom.sum() < 2:
            continue
        vectors[a] = m[top].mean(0) - m[bottom].mean(0)
        defined[a] = True
    return vectors, defined


def parse_attribute_shifts(spec: str) -> list[tuple[str, float]]:
    """``"note_density:+1.0,pitch_range:-0.5"`` as ``[(name, amount), ...]``."""
    shifts = []
    for item in filter(None, (s.strip() for s in str(spec).split(","))):
        match = re.fullmatch(r"([A-Za-z0-9_]+)\s*:\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)", item)
        if match is None:
            raise UserError(f"attribute={spec!r}: expected name:amount[,name:amount], e.g. note_density:+1.0")
        shifts.append((match.group(1), float(match.group(2))))
    return shifts


# ======================================================================================= metrics
class LatentStatistics(torchmetrics.Metric):
    """The posterior over a split: active units, KL per dimension, and attribute vectors.

    Sums (of μ, μ², KL per dimension) cover every piece; μ and the pieces' attributes are kept for
    at most ``max_pieces`` pieces per process (for the attribute vectors' quartiles). Correct
    under DDP: sums are summed and kept pieces concatenated across processes.
    """

    full_state_update = False

    def __init__(self, z_size: int, max_pieces: int = 8192, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_pieces = int(max_pieces)
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("mu_sum", default=torch.zeros(z_size), dist_reduce_fx="sum")
        self.add_state("mu_square_sum", default=torch.zeros(z_size), dist_reduce_fx="sum")
        self.add_state("kl_sum", default=torch.zeros(z_size), dist_reduce_fx="sum")
        self.add_state("mu", default=[], dist_reduce_fx="cat")
        self.add_state("attributes", default=[], dist_reduce_fx="cat")
        self._kept = 0

    def update(self, mu: torch.Tensor, kl: torch.Tensor, attributes: torch.Tensor | None = None) -> None:
        mu, kl = mu.detach().float(), kl.detach().float()
        self.count += len(mu)
        self.mu_sum += mu.sum(0)
        self.mu_square_sum += mu.pow(2).sum(0)
        self.kl_sum += kl.sum(0)
        room = self.max_pieces - self._kept
        if attributes is not None and room > 0:
            self.mu.append(mu[:room])
            self.attributes.append(attributes[:room].to(mu))
            self._kept += min(room, len(mu))

    def reset(self) -> None:
        super().reset()
        self._kept = 0

    def compute(self) -> dict[str, torch.Tensor]:
        count = self.count.clamp_min(1.0)
        mean = self.mu_sum / count
        variance = (self.mu_square_sum / count - mean.pow(2)).clamp_min(0.0)
        out = {
            "variance": variance,
            "active_units": (variance > ACTIVE_UNIT_VARIANCE).sum().float(),
            "kl_per_dimension": self.kl_sum / count,
        }
        mu = torchmetrics.utilities.dim_zero_cat(self.mu) if len(self.mu) else None
        if mu is not None and len(mu):
            attributes = torchmetrics.utilities.dim_zero_cat(self.attributes)
            out["attribute_vectors"], out["attribute_defined"] = attribute_vectors(mu, attributes)
        return out


# ===================================================================================== the model
class MusicVAE(GenerativeModule):
    """MusicVAE over melodies (``tokens``), trios (``trio``) or multi-track piano-rolls (``pianoroll``).

    Args:
        representation: a melody, trio or piano-roll representation.
        steps: steps per piece (data.window): 32 for 2 bars, 256 for 16 bars of 16ths.
        decoder: ``flat`` or ``hierarchical``.
        z_size: latent dimensions.
        encoder_size, encoder_layers: units per direction and layers of the bidirectional encoder.
        decoder_size, decoder_layers: the flat decoder's LSTM, or each bottom decoder's.
        conductor_size, conductor_layers: the hierarchical conductor (size None: ``decoder_size``).
        segment_steps: steps per conductor segment (None: one 4/4 bar of the representation).
        free_bits: KL (in bits, per piece) that costs nothing.
        max_beta, beta_rate: β = (1 - beta_rate^step) · max_beta.
        sampling_schedule, sampling_rate: scheduled sampling in training (``none``,
            ``inverse_sigmoid`` with rate k, or ``constant`` probability).
        lr_decay_rate, min_lr: per-step learning-rate decay (lr - min_lr) · decay^step + min_lr,
            applied when no ``scheduler`` is given (decay 1: constant).
        log_kl_dimensions: log ``val/kl_dim/NNN`` (the KL of each latent dimension) every epoch.
        max_attribute_pieces: validation pieces (per process) the attribute vectors are built from.
    """

    reads: ClassVar[tuple[str, ...]] = ("tokens", "trio", "pianoroll")

    def __init__(
        self,
        representation: Representation | dict[str, Any],
        steps: int = 32,
        decoder: str = "flat",
        z_size: int = 256,
        encoder_size: int = 512,
        encoder_layers: int = 2,
        decoder_size: int = 256,
        decoder_layers: int = 2,
        conductor_size: int | None = None,
        conductor_layers: int = 2,
        segment_steps: int | None = None,
        free_bits: float = 0.0,
        max_beta: float = 0.2,
        beta_rate: float = 0.99999,
        sampling_schedule: str = "none",
        sampling_rate: float = 1000.0,
        lr_decay_rate: float = 0.9999,
        min_lr: float = 1e-5,
        log_kl_dimensions: bool = True,
        max_attribute_pieces: int = 8192,
        **kwargs: Any,
    ) -> None:
        super().__init__(representation, **kwargs)
        self.save_model_hyperparameters()
        info = self.representation.describe()
        self.kind = info.kind
        self.parts = parts_of(self.representation)
        if decoder not in ("flat", "hierarchical"):
            raise ValueError(f"model.decoder must be flat or hierarchical, not {decoder!r}")
        sampling_probability(0, sampling_schedule, sampling_rate)  # a bad schedule fails here
        self.steps = int(steps)
        self.z_size = int(z_size)
        self.free_bits, self.max_beta, self.beta_rate = float(free_bits), float(max_beta), float(beta_rate)
        self.sampling_schedule, self.sampling_rate = sampling_schedule, float(sampling_rate)
        self.lr_decay_rate, self.min_lr = float(lr_decay_rate), float(min_lr)
        self.log_kl_dimensions = log_kl_dimensions

        self.encoder = Encoder(sum(p.input_size for p in self.parts), encoder_size, encoder_layers, z_size)
        if decoder == "flat":
            self.decoder: FlatDecoder | HierarchicalDecoder = FlatDecoder(
                self.parts, z_size, decoder_size, decoder_layers
            )
        else:
            bar = self.representation.steps_per_bar() if isinstance(self.representation, StepGrid) else 16
            self.decoder = HierarchicalDecoder(
                self.parts,
                z_size,
                conductor_size or decoder_size,
                conductor_layers,
                decoder_size,
                decoder_layers,
                segment_steps or bar,
            )
            self.decoder.segments(self.steps)  # steps that do not fill whole segments fail here

        self.accuracy = nn.ModuleDict({s: torchmetrics.MeanMetric() for s in ("val", "test")})
        self.sampled_accuracy = nn.ModuleDict({s: torchmetrics.MeanMetric() for s in ("val", "test")})
        self.latents = nn.ModuleDict(
            {s: LatentStatistics(z_size, max_attribute_pieces) for s in ("val", "test")}
        )
        # Attribute vectors, refreshed from the validation pieces after every validation epoch so
        # that the ones a checkpoint holds match its weights.
        self.register_buffer("attribute_vectors", torch.zeros(len(ATTRIBUTES), z_size))
        self.register_buffer("attribute_defined", torch.zeros(len(ATTRIBUTES), dtype=torch.bool))

    # ----------------------------------------------------------------------------- arrays <-> parts
    def _fit(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch cut or zero-padded to `steps`, with its mask."""
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if x.shape[1] >= self.steps:
            return x[:, : self.steps], mask[:, : self.steps]
        pad = self.steps - x.shape[1]
        x = torch.cat([x, x.new_zeros(len(x), pad, *x.shape[2:])], dim=1)
        return x, F.pad(mask, (0, pad))

    def _encode_parts(
        self, targets: Sequence[torch.Tensor], mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.cat([p.features(t) for p, t in zip(self.parts, targets)], dim=-1)
        return self.encoder(features, mask.sum(1))

    # ----------------------------------------------------------------------------- training
    def beta(self) -> float:
        return beta_at(self.global_step, self.beta_rate, self.max_beta)

    def _forward(self, batch: dict[str, torch.Tensor], train: bool) -> dict[str, Any]:
        x, mask = self._fit(batch["x"], batch.get("mask"))
        targets = split_parts(x, self.kind)
        mu, sigma = self._encode_parts(targets, mask)
        z = mu + sigma * torch.randn_like(mu)
        p_sample = sampling_probability(self.global_step, self.sampling_schedule, self.sampling_rate)
        if train and p_sample > 0:
            logits, _ = self.decoder.run(
                z, self.steps, lambda part, lg: part.choose(lg.detach(), 1.0), targets, p_sample
            )
        else:
            logits = self.decoder.teacher_forced(z, targets)
        weight = mask.float()
        recon = sum((p.nll(lg, t) * weight).sum(1) for p, lg, t in zip(self.parts, logits, targets))
        correct = (
            torch.stack([p.correct(lg, t) for p, lg, t in zip(self.parts, logits, targets)]).float().mean(0)
        )
        kl_dims = kl_per_dimension(mu, sigma)
        kl = kl_dims.sum(-1)
        beta = self.beta()
        loss = recon.mean() + beta * free_bits_kl(kl, self.free_bits).mean()
        steps = weight.sum().clamp_min(1.0)
        figures = {
            "loss": loss,
            "recon": recon.mean(),
            "kl": kl.mean(),
            "kl_bits": kl.mean() / LN2,
            "beta": torch.tensor(beta),
            "accuracy": (correct * weight).sum() / steps,
        }
        if self.sampling_schedule != "none":
            figures["sampling_probability"] = torch.tensor(p_sample)
        return {"figures": figures, "mu": mu, "kl_dims": kl_dims, "x": x, "mask": mask, "targets": targets}

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._forward(batch, train=self.training)["figures"]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        figures = self._forward(batch, train=True)["figures"]
        self.log_figures(figures, "train", batch_size=len(batch["x"]))
        return figures["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "test")

    def _evaluate(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        out = self._forward(batch, train=False)
        figures, mask, n = out["figures"], out["mask"], len(batch["x"])
        self.log_figures({k: v for k, v in figures.items() if k != "accuracy"}, split, batch_size=n)
        weight = mask.float()
        steps = weight.sum()
        self.accuracy[split].update(figures["accuracy"], weight=steps)
        self.sampled_accuracy[split].update(self.sampled_reconstruction_accuracy(out), weight=steps)
        attributes = None
        if split == "val" and not self.trainer.sanity_checking:
            pieces = [self.representation.decode(a) for a in out["x"].cpu().numpy()]
            attributes = torch.tensor(
                [[music_attributes(m)[a] for a in ATTRIBUTES] for m in pieces], dtype=torch.float32
            )
        self.latents[split].update(out["mu"], out["kl_dims"], attributes)
        self.log(f"{split}/accuracy", self.accuracy[split], on_epoch=True, batch_size=n)
        self.log(f"{split}/sampled_accuracy", self.sampled_accuracy[split], on_epoch=True, batch_size=n)
        return figures["loss"]

    def sampled_reconstruction_accuracy(self, out: dict[str, Any]) -> torch.Tensor:
        """Share of steps right when the decoder runs free from z = μ, feeding back its argmax."""
        _, chosen = self.decoder.run(out["mu"], self.steps, _argmax)
        targets, weight = out["targets"], out["mask"].float()
        right = torch.stack([_same(p, c, t) for p, c, t in zip(self.parts, chosen, targets)]).float().mean(0)
        return (right * weight).sum() / weight.sum().clamp_min(1.0)

    def on_validation_epoch_end(self) -> None:
        self._log_latents("val", update_attributes=not self.trainer.sanity_checking)

    def on_test_epoch_end(self) -> None:
        self._log_latents("test", update_attributes=False)

    def _log_latents(self, split: str, update_attributes: bool) -> None:
        stats = self.latents[split].compute()
        self.latents[split].reset()
        self.log(f"{split}/active_units", stats["active_units"], sync_dist=False)
        if self.log_kl_dimensions:  # the posterior-collapse watch, on validation and test alike
            for i, value in enumerate(stats["kl_per_dimension"]):
                self.log(f"{split}/kl_dim/{i:03d}", value, sync_dist=False)
        if update_attributes and "attribute_vectors" in stats:
            self.attribute_vectors.copy_(stats["attribute_vectors"])
            self.attribute_defined.copy_(stats["attribute_defined"])

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        if self.scheduler_factory is None and self.lr_decay_rate < 1.0 and isinstance(config, dict):
            optimizer = config["optimizer"]
            floor = [self.min_lr / group["lr"] for group in optimizer.param_groups]
            decay = self.lr_decay_rate
            schedules = [lambda step, f=f: (1.0 - f) * decay**step + f for f in floor]
            config["lr_scheduler"] = {
                "scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, schedules),
                "interval": "step",
            }
        return config

    # ----------------------------------------------------------------------------- generation
    @property
    def default_length(self) -> int:
        return self.steps

    def _choose(self, temperature: float) -> Chooser:
        return lambda part, logits: part.choose(logits, temperature)

    @torch.no_grad()
    def generate(
        self,
        n: int,
        length: int,
        temperature: float = 1.0,
        prompt: torch.Tensor | None = None,
        attribute: str | None = None,
    ) -> torch.Tensor:
        """``n`` pieces decoded from z ~ N(0, I) at ``temperature`` (0: argmax).

        ``attribute="note_density:+1.0"`` (or several, comma-separated) adds that many attribute
        vectors to every z (`shift_latents`).
        """
        z = torch.randn(n, self.z_size, device=self.device)
        if attribute:
            z = self.shift_latents(z, attribute)
        return self.decode_arrays(z, temperature, length)

    def shift_latents(self, z: torch.Tensor, attribute: str) -> torch.Tensor:
        """``z`` + Σ amount · vector(name) for each ``name:amount`` of ``attribute``."""
        shifted = z.clone()
        for name, amount in parse_attribute_shifts(attribute):
            if name not in ATTRIBUTES:
                raise UserError(f"attribute={name!r}: unknown; MusicVAE has {', '.join(ATTRIBUTES)}")
            index = ATTRIBUTES.index(name)
            if not bool(self.attribute_defined[index]):
                known = [a for a, ok in zip(ATTRIBUTES, self.attribute_defined.tolist()) if ok]
                raise UserError(
                    f"attribute={name!r}: this checkpoint has no {name} vector (they are built after each "
                    f"validation epoch; this data gives {', '.join(known) or 'none yet'})"
                )
            shifted = shifted + amount * self.attribute_vectors[index].to(z)
        return shifted

    @torch.no_grad()
    def decode_arrays(
        self, z: torch.Tensor, temperature: float = 0.0, length: int | None = None
    ) -> torch.Tensor:
        """Pieces ``(n, length, ...)`` in the representation's layout decoded from ``z``."""
        _, chosen = self.decoder.run(z.to(self.device), int(length or self.steps), self._choose(temperature))
        out = join_parts(chosen, self.kind)
        return out.bool() if self.kind == "pianoroll" else out.long()

    # ----------------------------------------------------------------------------- encode / decode
    def to_arrays(self, musics: Sequence[muspy.Music | NoteTable | np.ndarray]) -> torch.Tensor:
        """Pieces as a batch: each encoded, its first `steps` steps kept (zero-padded if shorter)."""
        rows = []
        for music in musics:
            array = music if isinstance(music, np.ndarray) else self.file_representation.encode(music)
            x = torch.as_tensor(np.asarray(array)[: self.steps])
            x = x.float() if self.kind == "pianoroll" else x.long()
            rows.append(self._fit(x[None], None)[0][0])
        return torch.stack(rows).to(self.device)

    @torch.no_grad()
    def encode(self, musics: Sequence[muspy.Music | NoteTable | np.ndarray]) -> torch.Tensor:
        """μ of each piece's first `steps` steps: ``(len(musics), z_size)``."""
        x = self.to_arrays(musics)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        mu, _ = self._encode_parts(split_parts(x, self.kind), mask)
        return mu

    @torch.no_grad()
    def decode(
        self, z: torch.Tensor, temperature: float = 0.0, length: int | None = None
    ) -> list[muspy.Music]:
        """The music of each latent code (argmax decoding at temperature 0)."""
        return [
            self.representation.decode(a) for a in self.decode_arrays(z, temperature, length).cpu().numpy()
        ]

    @torch.no_grad()
    def attribute_vectors_from(
        self, musics: Sequence[muspy.Music | NoteTable | np.ndarray]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attribute vectors (and which are defined) from any pieces, e.g. a training set."""
        mu = torch.cat([self.encode(musics[i : i + 256]) for i in range(0, len(musics), 256)])
        decoded = [self.representation.decode(a) for a in self.to_arrays(musics).cpu().numpy()]
        values = torch.tensor([[music_attributes(m)[a] for a in ATTRIBUTES] for m in decoded])
        return attribute_vectors(mu.cpu(), values.float())


def _argmax(part: Part, logits: torch.Tensor) -> torch.Tensor:
    return part.choose(logits, 0.0)


def _same(part: Part, chosen: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Whether the step written is the true one (the whole frame, for a piano-roll track)."""
    if isinstance(part, BernoulliPart):
        return (chosen > 0.5).eq(target > 0.5).all(-1)
    return chosen.long() == target.long()
