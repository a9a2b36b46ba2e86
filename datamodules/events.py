"""Multi-instrument event tokens, MuseNet style: miditok's REMI with a program token per note,
behind a conditioning prefix that names the piece's genre and instruments.

A piece is one stream of tokens over all its instruments, in time order (REMI, Huang & Yang 2020,
with program tokens as in miditok's multitrack REMI):

    Genre_bach Instrument_52 Instrument_53   Bar Position_0 Program_52 Pitch_67 Duration_1.0.8
    Program_53 Pitch_62 Duration_1.0.8 Position_8 ...

- **Why REMI with programs** (and not MIDI-like or MMM): the instruments are interleaved in time,
  so a window cut anywhere in a piece holds every instrument that plays there (MMM concatenates whole
  tracks, so a window would see one instrument), a note is one group of tokens (MIDI-like's note-off
  may fall outside the window, and it is about 25 % longer and several times slower to decode), and
  ``Bar`` tokens make a length in bars and the bars of a sample exact. A program token before every
  note (``program_changes`` off) keeps every window readable from its first note.
- **Conditioning prefix** (`ConditioningPrefix`): ``Genre_<data>`` then one ``Instrument_<program>``
  per instrument that plays (drums: ``Instrument_-1``, last), as MuseNet starts a sequence with its
  composer and instruments. Every training window starts with it; ``make sample
  INSTRUMENTS=piano,violin,cello`` writes it.
- **Instruments** are General MIDI programs; tracks that share one are one part (REMI's single
  stream cannot tell them apart). ``instruments`` says where a track's instrument comes from:
  ``source`` (its program in the file: GM MIDI such as Lakh), ``layout`` (the data layout's track
  routing, as the piano-roll's, and its ``programs``; repeats are made distinct so that Bach's four
  choir voices stay four parts), or ``auto``: ``source`` when the layout routes by program, else
  ``layout``.
- **Decoding never fails** on a model's token order: a token that cannot follow the ones kept before
  it (by the tokenizer's own grammar, a position that goes back in its bar, a drum pitch on a pitched
  program) is skipped and counted; `decode_report` gives the counts (``sample/bad_tokens``).
- **The vocabulary is saved** in `to_config` (miditok's own parameters and every token in id
  order), so a checkpoint rebuilds exactly its tokenizer and says so if a miditok release would not.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from typing import Any

import muspy
import numpy as np

from datamodules.notes import DURATION, ONSET, PITCH, VELOCITY, NoteTable, TrackNotes, as_note_table
from datamodules.representations import (
    ConditioningPrefix,
    PianoRollRepresentation,
    ReportsDecoding,
    Representation,
    RepresentationInfo,
    TrackSpec,
    Transposable,
)
from muselab.errors import UserError

# Set before miditok imports huggingface_hub: MuseLab never loads a tokenizer from the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import miditok
from miditok.constants import MIDI_INSTRUMENTS

DRUMS = -1  # miditok's program of drum tracks
GM_NAMES = [instrument["name"] for instrument in MIDI_INSTRUMENTS]
# Short names people type (make sample INSTRUMENTS=piano,violin,cello); anything else is matched
# against the General MIDI names.
INSTRUMENT_ALIASES = {
    "piano": 0,
    "organ": 19,
    "guitar": 24,
    "bass": 32,
    "strings": 48,
    "choir": 52,
    "voice": 53,
    "brass": 61,
    "sax": 65,
    "saxophone": 65,
    "drums": DRUMS,
    "drum": DRUMS,
    "percussion": DRUMS,
}
INSTRUMENT_MODES = ("auto", "source", "layout")
# MuseLab's defaults on top of miditok's: one stream with a program per note; no velocity,
# tempo or time-signature tokens, which the data pipeline (note tables, 4/4 bars) does not carry.
DEFAULT_TOKENIZER_CONFIG: dict[str, Any] = {
    "use_velocities": False,
    "use_tempos": False,
    "use_time_signatures": False,
    "program_changes": False,
}
# Token types that start or continue a note: a sequence that ends on one of them ends mid-note.
NOTE_BUILDING = {"Program", "Pitch", "PitchDrum", "Velocity"}
NOTE_CONTINUING = {"Pitch", "PitchDrum", "Velocity", "Duration"}  # the others start an event


class ConditioningError(UserError):
    """An instrument or genre that the event tokens have no token for."""


def program_name(program: int) -> str:
    """General MIDI name of a program (-1: drums)."""
    return "Drums" if program == DRUMS else GM_NAMES[program]


def distinct_programs(programs: Sequence[int]) -> list[int]:
    """``programs`` with repeats replaced by the nearest program of the same General MIDI family
    (8 programs) that no other entry uses, so that every layout track stays its own part.

    ``[52, 52, 52, 52]`` (four choir voices) -> ``[52, 53, 51, 54]``: choir aahs, voice oohs,
    synth strings 2, synth voice.
    """
    out: list[int] = []
    for program in programs:
        if program not in out:
            out.append(program)
            continue
        family = range(program - program % 8, program - program % 8 + 8)
        free = [p for p in family if p not in out and p not in programs]
        free.sort(key=lambda p: (abs(p - program), p < program))
        out.append(free[0] if free else program)
    return out


def _tokenizer_config(settings: Mapping[str, Any] | None) -> miditok.TokenizerConfig:
    """A miditok config from YAML-friendly settings (``beat_res: {"0_4": 8}``, lists for tuples)."""
    config = {**DEFAULT_TOKENIZER_CONFIG, **dict(settings or {})}
    for key in ("beat_res", "beat_res_rest"):
        if key in config:
            config[key] = {
                tuple(int(v) for v in str(k).split("_")) if isinstance(k, str) else tuple(k): int(res)
                for k, res in dict(config[key]).items()
            }
    for key in ("pitch_range", "drums_pitch_range", "tempo_range"):
        if key in config:
            config[key] = tuple(config[key])
    config["use_programs"] = True
    config["one_token_stream_for_programs"] = True
    return miditok.TokenizerConfig(**config)


def _tokenizer_from_params(params: Mapping[str, Any]) -> miditok.REMI:
    """Rebuild a tokenizer from its saved parameters (``tokenizer.to_dict()``), exactly.

    miditok reads its serialised form (tuple keys as strings, BPE models) only from a file.
    """
    if params.get("tokenization") != "REMI":
        raise ValueError(f"MuseLab's event tokens are REMI, not {params.get('tokenization')!r}")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "tokenizer.json")
        with open(path, "w") as fh:
            json.dump(dict(params), fh)
        return miditok.REMI(params=path)


class EventRepresentation(Representation, Transposable, ConditioningPrefix, ReportsDecoding):
    """Multi-instrument REMI tokens behind a genre and instrument prefix (see the module docstring).

    Ids ``0 .. M-1`` are miditok's (``0`` is its PAD, which pads batches), then one ``Genre_<name>``
    per genre, then ``Instrument_<program>`` for programs -1 (drums) .. 127.

    Args:
        tokenizer_config: miditok ``TokenizerConfig`` settings over MuseLab's defaults (no velocity,
            tempo or time-signature tokens; a program token before every note).
        instruments: where a track's instrument comes from: ``source``, ``layout`` or ``auto``.
        n_tracks, track_mode, track_names, program_groups, programs, drum_track: the data layout,
            read in ``layout`` mode (tracks routed as `PianoRollRepresentation` routes them, each
            layout track one instrument: its program, repeats made distinct).
        drums: keep drum tracks (``Instrument_-1``), whatever the mode.
        genre: this data's genre token (the data config's name by default).
        genres: the other genre tokens in the vocabulary, so models of several data sets share it.
        sample_tokens: the default sample length in tokens.
        params: a saved miditok tokenizer (``to_config()`` writes it): rebuilt as it was, and
            ``tokenizer_config`` is not read.
        vocab: the saved vocabulary, every token in id order: checked against the rebuilt
            tokenizer, and the source of the genre tokens.
    """

    def __init__(
        self,
        tokenizer_config: Mapping[str, Any] | None = None,
        instruments: str = "auto",
        n_tracks: int = 1,
        track_mode: str = "index",
        track_names: Sequence[Sequence[str]] | None = None,
        program_groups: Sequence[Sequence[int]] | None = None,
        programs: Sequence[int] | None = None,
        drum_track: int | None = None,
        drums: bool = True,
        genre: str = "unknown",
        genres: Sequence[str] = (),
        sample_tokens: int = 1024,
        params: Mapping[str, Any] | None = None,
        vocab: Sequence[str] | None = None,
    ) -> None:
        if instruments not in INSTRUMENT_MODES:
            raise ValueError(f"instruments must be one of {', '.join(INSTRUMENT_MODES)}, not {instruments!r}")
        self.tokenizer = (
            _tokenizer_from_params(params)
            if params is not None
            else miditok.REMI(_tokenizer_config(tokenizer_config))
        )
        # The JSON form: what a checkpoint stores and YAML, JSON and Hydra all read back as it was.
        self.params = json.loads(json.dumps(self.tokenizer.to_dict()))
        self.n_base = len(self.tokenizer.vocab)
        base_vocab = [self.tokenizer[i] for i in range(self.n_base)]
        if vocab is not None:
            if list(vocab[: self.n_base]) != base_vocab:
                raise ValueError(
                    f"miditok {version('miditok')} rebuilds another vocabulary than the saved one "
                    f"(miditok {dict(params or {}).get('miditok_version', '?')}): install that release"
                )
            genres = [t.split("_", 1)[1] for t in vocab[self.n_base :] if t.startswith("Genre_")]
        else:
            genres = sorted({*map(str, genres), str(genre)})
        self.genres = list(genres)
        if str(genre) not in self.genres:
            raise ConditioningError(f"genre {genre!r} is not in the vocabulary ({', '.join(self.genres)})")
        self.genre = str(genre)
        self.first_genre = self.n_base
        self.first_instrument = self.n_base + len(self.genres)
        self.vocab = [
            *base_vocab,
            *(f"Genre_{g}" for g in self.genres),
            *(f"Instrument_{p}" for p in range(DRUMS, 128)),
        ]
        if vocab is not None and list(vocab) != self.vocab:
            raise ValueError("the saved vocabulary has conditioning tokens this release does not make")
        self.vocab_size = len(self.vocab)

        # The data layout, for the `layout` instrument mode.
        self.instruments = instruments
        self.layout = {
            "n_tracks": int(n_tracks),
            "track_mode": track_mode,
            "track_names": [list(map(str, names)) for names in track_names] if track_names else None,
            "program_groups": [list(g) for g in program_groups] if program_groups else None,
            "programs": [int(p) for p in programs] if programs else None,
            "drum_track": None if drum_track is None else int(drum_track),
        }
        self.router = PianoRollRepresentation(**self.layout)
        self.layout_programs = distinct_programs(self.router.programs)
        self.drums = bool(drums)
        self.sample_tokens = int(sample_tokens)
        self._index_tokens()

    def _index_tokens(self) -> None:
        """Per-id lookup tables for the grammar check, transposition and bar counting."""
        kinds, values = [], []
        for token in self.vocab:
            kind, _, value = token.partition("_")
            kinds.append(kind)
            values.append(int(value) if kind in ("Position", "Program", "Pitch") else 0)
        self.kinds = kinds
        self.values = values
        self.bar_id = self.tokenizer.vocab["Bar_None"]
        self.special_ids = {self.tokenizer.vocab[t] for t in self.tokenizer.special_tokens}
        self.pad_id = self.tokenizer.pad_token_id
        self.program_ids = {v: i for i, (k, v) in enumerate(zip(kinds, values)) if k == "Program"}
        pitch = np.array([v if k == "Pitch" else -1 for k, v in zip(kinds, values)])
        self.pitch_low, self.pitch_high = int(pitch[pitch >= 0].min()), int(pitch.max())
        self._pitch_of = np.where(pitch >= 0, pitch - self.pitch_low, -1)
        self._pitch_id = np.flatnonzero(pitch >= 0)[np.argsort(pitch[pitch >= 0])]
        # Which token kinds may follow which, from miditok's own grammar (specials never do here).
        graph = self.tokenizer.tokens_types_graph
        specials = {t.split("_")[0] for t in self.tokenizer.special_tokens}
        self.follows = {kind: set(nexts) - specials for kind, nexts in graph.items() if kind not in specials}
        self.follows["start"] = {"Bar"}

    # ------------------------------------------------------------------ instruments and prefix
    def instrument_mode(self) -> str:
        """``source`` or ``layout``: what ``auto`` means for this layout."""
        if self.instruments == "auto":
            return "source" if self.layout["track_mode"] == "program" else "layout"
        return self.instruments

    def track_programs(self, tracks: Sequence[TrackNotes]) -> list[int | None]:
        """The instrument (GM program, -1 drums) of every track; None: the track is dropped."""
        if self.instrument_mode() == "source":
            return [(DRUMS if self.drums else None) if t.is_drum else t.program for t in tracks]
        # A track already on a layout instrument of its own (a decoded sample) keeps it; the others
        # are routed to a layout track and take its instrument.
        pitched = Counter(t.program for t in tracks if not t.is_drum and len(t.notes))
        channels = self.router.route(tracks)
        out: list[int | None] = []
        for track, channel in zip(tracks, channels):
            if track.is_drum:
                out.append(DRUMS if self.drums else None)
            elif track.program in self.layout_programs and pitched[track.program] == 1:
                out.append(track.program)
            else:
                out.append(None if channel is None else self.layout_programs[channel])
        return out

    def track_name(self, program: int) -> str:
        """A decoded track's name: its layout track's in ``layout`` mode (so it routes back there),
        else its General MIDI name."""
        names = self.layout["track_names"]
        if self.instrument_mode() == "layout" and names and program in self.layout_programs:
            return names[self.layout_programs.index(program)][0]
        return program_name(program)

    def program_of(self, name: str | int) -> int:
        """The program of an instrument as a user names it: a program number (-1 drums), a layout
        track (``soprano``), a short name (``piano``, ``drums``) or a General MIDI name, exact or a
        part of one (``violin``, ``Electric Bass``)."""
        text = str(name).strip().lower()
        if text.lstrip("-").isdigit() and DRUMS <= int(text) <= 127:
            return int(text)
        names = self.layout["track_names"] or []
        for programs_name, program in zip(names, self.layout_programs):
            if self.instrument_mode() == "layout" and text in {n.lower() for n in programs_name}:
                return program
        if text in INSTRUMENT_ALIASES:
            return INSTRUMENT_ALIASES[text]
        lowered = [n.lower() for n in GM_NAMES]
        if text in lowered:
            return lowered.index(text)
        for program, gm in enumerate(lowered):
            if text and text in gm:
                return program
        raise ConditioningError(
            f"instrument {name!r}: not a General MIDI name or program (try piano, violin, cello, "
            "guitar, bass, drums, or a number 0-127; -1 is drums)"
        )

    def parse_instruments(self, spec: str | int | Sequence[str | int]) -> list[int]:
        """Programs of ``spec`` (``"piano,violin,cello"`` or a list), in prefix order, each once."""
        items = spec.split(",") if isinstance(spec, str) else [spec] if isinstance(spec, int) else spec
        programs = {self.program_of(item) for item in items if str(item).strip()}
        if not programs:
            raise ConditioningError(f"instruments {spec!r}: name at least one (e.g. piano,violin,cello)")
        allowed = set(self.tokenizer.config.programs)
        missing = sorted(programs - allowed)
        if missing:
            raise ConditioningError(f"instruments {missing} are not in the tokenizer's programs")
        return sorted(programs, key=lambda p: (p == DRUMS, p))

    def genre_id(self, genre: str | None = None) -> int:
        """The id of ``Genre_<genre>`` (default: this data's genre)."""
        genre = self.genre if genre is None else str(genre)
        if genre not in self.genres:
            raise ConditioningError(
                f"genre {genre!r}: not in the vocabulary (one of {', '.join(self.genres)})"
            )
        return self.first_genre + self.genres.index(genre)

    def instrument_id(self, program: int) -> int:
        return self.first_instrument + program - DRUMS

    def prefix(self, programs: Sequence[int], genre: str | None = None) -> np.ndarray:
        """The conditioning prefix: ``Genre_<genre>`` and the instruments (drums last)."""
        ordered = sorted(set(programs), key=lambda p: (p == DRUMS, p))
        return np.array([self.genre_id(genre), *(self.instrument_id(p) for p in ordered)], dtype=np.int64)

    def is_conditioning(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids) >= self.first_genre

    def prefix_length(self, array: np.ndarray) -> int:
        conditioning = self.is_conditioning(array)
        return int(np.argmin(conditioning)) if not conditioning.all() else len(conditioning)

    def prefix_programs(self, array: np.ndarray) -> list[int]:
        """The instruments a prefix names."""
        prefix = np.asarray(array)[: self.prefix_length(array)]
        return [int(i) - self.first_instrument + DRUMS for i in prefix if i >= self.first_instrument]

    # ------------------------------------------------------------------ codec
    def score(self, music: muspy.Music | NoteTable) -> Any:
        """The music as a `symusic.Score` of the instruments it is encoded with (tick time)."""
        import symusic

        table = as_note_table(music)
        score = symusic.Score(max(1, int(table.resolution)))
        parts = [(p, t) for t, p in zip(table.tracks, self.track_programs(table.tracks)) if p is not None]
        # Notes at one position come in track order: by program (drums last), whatever the file's
        # order, so that a piece and its decoding encode alike.
        for program, track in sorted(parts, key=lambda part: (part[0] == DRUMS, part[0])):
            if not len(track.notes):
                continue
            notes = track.notes
            part = symusic.Track(program_name(program), program=max(program, 0), is_drum=program == DRUMS)
            part.notes = symusic.Note.from_numpy(
                notes[:, ONSET].astype(np.int32),
                np.maximum(notes[:, DURATION], 1).astype(np.int32),
                notes[:, PITCH].astype(np.int8),
                np.clip(notes[:, VELOCITY], 1, 127).astype(np.int8),
            )
            score.tracks.append(part)
        return score

    def encode(self, music: muspy.Music | NoteTable) -> np.ndarray:
        """``prefix + REMI tokens`` as int16 (empty when no note is left in the tokenizer's ranges)."""
        score = self.score(music)
        if not score.tracks:
            return np.zeros(0, dtype=np.int16)
        ids = np.asarray(self.tokenizer.encode(score).ids, dtype=np.int64)
        programs = [self.values[i] for i in np.unique(ids) if self.kinds[i] == "Program"]
        if not programs:  # every note out of the pitch ranges
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([self.prefix(programs), ids]).astype(np.int16)

    def check(self, array: np.ndarray) -> tuple[list[int], int]:
        """The tokenizer's tokens of ``array`` that make a valid piece, and how many were skipped.

        The conditioning prefix is read, not decoded. After it, a token is skipped (and counted) when
        it is not a REMI token (a special or conditioning token), when miditok's grammar does not let
        it follow the last token kept, when its position goes back in its bar, or when it is a drum
        pitch on a pitched program or the other way round. A token that starts an event (a program,
        position or bar) where a note is unfinished ends that note, whose tokens are skipped too. A
        note left unfinished by the end of the array (a sample cut at its length) is dropped without
        counting. Trailing padding is ignored.
        """
        ids = np.asarray(array, dtype=np.int64).reshape(-1)
        ids = ids[self.prefix_length(ids) :]
        while len(ids) and ids[-1] == self.pad_id:
            ids = ids[:-1]
        kept: list[int] = []
        state = ("start", -1, None)  # last kind kept, position in the bar, program
        complete, complete_state = 0, state  # kept[:complete] ends on a finished note
        bad = 0
        for token in ids.tolist():
            if token >= self.n_base or token in self.special_ids or token < 0:
                bad += 1
                continue
            kind = self.kinds[token]
            ok = self._fits(token, kind, state)
            if not ok and state[0] in NOTE_BUILDING and kind not in NOTE_CONTINUING:
                bad += len(kept) - complete  # the unfinished note
                del kept[complete:]
                state = complete_state
                ok = self._fits(token, kind, state)
            if not ok:
                bad += 1
                continue
            _, position, program = state
            if kind == "Bar":
                position = -1
            elif kind == "Position":
                position = self.values[token]
            elif kind == "Program":
                program = self.values[token]
            state = (kind, position, program)
            kept.append(token)
            if kind not in NOTE_BUILDING:
                complete, complete_state = len(kept), state
        return kept[:complete], bad

    def _fits(self, token: int, kind: str, state: tuple[str, int, int | None]) -> bool:
        previous, position, program = state
        if kind not in self.follows.get(previous, ()):
            return False
        if kind == "Position":
            return self.values[token] > position
        if kind in ("Pitch", "PitchDrum"):
            return (kind == "PitchDrum") == (program == DRUMS)
        return True

    def decode(self, array: np.ndarray) -> muspy.Music:
        kept, _ = self.check(array)
        resolution = int(self.tokenizer.time_division)
        score = None
        if kept:
            try:
                score = self.tokenizer.decode(kept)
            except Exception:  # never expected after `check`; a sample must still decode
                score = None
        qpm = float(score.tempos[0].qpm) if score is not None and len(score.tempos) else 120.0
        bars = kept.count(self.bar_id)
        bar = 4 * resolution
        music = muspy.Music(
            resolution=resolution,
            tempos=[muspy.Tempo(0, qpm)],
            time_signatures=[muspy.TimeSignature(0, 4, 4)],
            # Bar lines keep trailing empty bars part of the piece (metrics see its full length).
            barlines=[muspy.Barline(t) for t in [*range(0, bars * bar, bar), bars * bar] if bars],
        )
        tracks = [] if score is None else sorted(score.tracks, key=lambda t: (t.is_drum, t.program))
        for track in tracks:
            program = DRUMS if track.is_drum else int(track.program)
            columns = track.notes.numpy()
            notes = [
                muspy.Note(int(t), int(p), int(d), int(v))
                for t, d, p, v in zip(
                    columns["time"], columns["duration"], columns["pitch"], columns["velocity"]
                )
            ]
            music.tracks.append(
                muspy.Track(
                    program=max(program, 0), is_drum=track.is_drum, name=self.track_name(program), notes=notes
                )
            )
        return music

    def decode_report(self, arrays: Sequence[np.ndarray]) -> dict[str, float]:
        """``bad_tokens`` (skipped per piece, mean) and ``bad_token_rate`` (of all tokens after the
        prefixes)."""
        counts = [(self.check(a)[1], len(a) - self.prefix_length(a)) for a in arrays]
        total = sum(n for _, n in counts)
        return {
            "bad_tokens": float(np.mean([b for b, _ in counts])) if counts else 0.0,
            "bad_token_rate": sum(b for b, _ in counts) / total if total else 0.0,
        }

    def count_bars(self, array: np.ndarray) -> int:
        return int(np.count_nonzero(np.asarray(array) == self.bar_id))

    def describe(self) -> RepresentationInfo:
        layout = self.instrument_mode() == "layout"
        return RepresentationInfo(
            kind="tokens",
            output="music",
            length_unit="tokens",
            default_length=self.sample_tokens,
            tracks=tuple(TrackSpec(self.track_name(p), max(p, 0)) for p in self.layout_programs)
            if layout
            else (),
            vocab_size=self.vocab_size,
            pad_id=self.pad_id,
        )

    # ------------------------------------------------------------------ transposition
    @property
    def n_pitches(self) -> int:
        return self.pitch_high - self.pitch_low + 1

    def transpose(self, array: np.ndarray, semitones: int) -> np.ndarray:
        if semitones == 0:
            return array
        ids = np.asarray(array)
        pitch = self._pitch_of[ids.astype(np.int64)]
        moved = np.clip(pitch + semitones, 0, self.n_pitches - 1)
        return np.where(pitch >= 0, self._pitch_id[moved], ids).astype(ids.dtype)

    def pitch_extent(self, array: np.ndarray) -> tuple[int, int] | None:
        pitch = self._pitch_of[np.asarray(array).astype(np.int64)]
        pitch = pitch[pitch >= 0]
        return (int(pitch.min()), int(pitch.max())) if len(pitch) else None

    def to_config(self) -> dict[str, Any]:
        return {
            "_target_": f"{__name__}.EventRepresentation",
            "instruments": self.instruments,
            **self.layout,
            "drums": self.drums,
            "genre": self.genre,
            "sample_tokens": self.sample_tokens,
            "params": self.params,
            "vocab": list(self.vocab),
        }
