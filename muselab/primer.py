"""Primers: the music a sample starts with (``make sample PRIMER=tune.mid`` or ``PRIMER="60,62,64"``).

A primer is a music file (MIDI, MusicXML or ABC: its first tune) or a list of melody events in
Magenta's notation, one per 16th-note step: a MIDI pitch starts a note, ``-2`` holds the current
note (or rest), ``-1`` ends it. ``"60,62,64,65"`` is four 16th notes; ``"60,-2,-2,-2,67,-2,-2,-2"``
two quarter notes.
"""

from __future__ import annotations

import re
from pathlib import Path

import muspy

from datamodules.notes import NoteTable
from datamodules.sources import ABC_EXTENSIONS, MIDI_EXTENSIONS, MUSICXML_EXTENSIONS, split_abc_tunes
from muselab.errors import UserError

PRIMER_STEPS_PER_BEAT = 4  # one event per 16th note, as Magenta's primer melodies
NO_EVENT, NOTE_OFF = -2, -1
_EVENTS = re.compile(r"^\s*\[?\s*-?\d+(\s*,\s*-?\d+)*\s*\]?\s*$")


def melody_from_events(events: list[int], velocity: int = 80) -> muspy.Music:
    """A one-track melody from Magenta melody events (pitch: note on, -2: hold, -1: note off)."""
    notes: list[muspy.Note] = []
    current: tuple[int, int] | None = None  # (onset step, pitch)
    for step, event in enumerate(events):
        if event == NO_EVENT:
            continue
        if event < NO_EVENT or event > 127:
            raise UserError(f"primer event {event} is not a MIDI pitch (0-127), -1 (note off) or -2 (hold)")
        if current is not None:
            notes.append(muspy.Note(current[0], current[1], step - current[0], velocity))
            current = None
        if event >= 0:
            current = (step, event)
    if current is not None:
        notes.append(muspy.Note(current[0], current[1], len(events) - current[0], velocity))
    music = muspy.Music(resolution=PRIMER_STEPS_PER_BEAT, tempos=[muspy.Tempo(0, 120.0)])
    music.tracks.append(muspy.Track(program=0, name="melody", notes=notes))
    return music


def read_music_file(path: str | Path) -> muspy.Music:
    """A MIDI, MusicXML or ABC file (its first tune) as `muspy.Music`."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    try:
        if suffix in MIDI_EXTENSIONS:
            return NoteTable.read_midi(path).to_music()
        if suffix in MUSICXML_EXTENSIONS:
            return muspy.read_musicxml(path)
        if suffix in ABC_EXTENSIONS:
            import music21

            tunes = split_abc_tunes(path.read_text(encoding="utf-8", errors="replace"))
            if not tunes:
                raise UserError(f"{path}: no ABC tune (no X: line)")
            return muspy.from_music21(music21.converter.parse(tunes[0][1], format="abc", forceSource=True))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path}: cannot be read as music ({type(exc).__name__}: {exc})") from None
    raise UserError(f"{path}: not a MIDI, MusicXML or ABC file")


def load_primer(spec: str | Path) -> muspy.Music:
    """A primer given as a file path or as melody events (see the module docstring)."""
    text = str(spec)
    if Path(text).expanduser().is_file():
        return read_music_file(text)
    if _EVENTS.match(text):
        return melody_from_events([int(v) for v in re.findall(r"-?\d+", text)])
    raise UserError(f"primer {text!r}: no such file, and not a list of melody events like '60,62,-2,64'")
