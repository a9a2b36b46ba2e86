"""Sources: where music comes from.

A source lists its pieces as `SourceItem`s (cheap: no parsing) and `load_item` turns one item into a
`NoteTable` (the expensive part, run in worker processes by the cache). Each item has a stable
``key`` (its identity, used for the hash split and in error reports) and, where the dataset has an
official split, its ``split``.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from xml.etree import ElementTree

import muspy
import numpy as np

from datamodules.notes import NoteTable, TrackNotes

MIDI_EXTENSIONS = (".mid", ".midi")
MUSICXML_EXTENSIONS = (".xml", ".mxl", ".musicxml")
ABC_EXTENSIONS = (".abc",)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SourceItem:
    """One piece: how to load it (``loader`` + ``path`` + ``index``), its identity and official split."""

    key: str
    loader: str
    path: str
    index: int = 0
    split: str | None = None
    payload: Any = None


class Source(ABC):
    """Base class of all sources. Subclasses set ``name`` and implement `items`."""

    name: str = "source"

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Download or check the data (called once, on rank 0, before `items`)."""

    @abstractmethod
    def items(self) -> list[SourceItem]:
        """All pieces, in a deterministic order."""

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this source's content in the cache key."""
        return {
            "name": self.name,
            **{k: str(v) for k, v in sorted(vars(self).items()) if not k.startswith("_")},
        }


# --------------------------------------------------------------------------------------------- loaders
LOADERS: dict[str, Callable[[SourceItem], NoteTable]] = {}


def loader(name: str) -> Callable[[Callable[[SourceItem], NoteTable]], Callable[[SourceItem], NoteTable]]:
    """Register a function that loads a `SourceItem` of kind ``name``."""

    def register(fn: Callable[[SourceItem], NoteTable]) -> Callable[[SourceItem], NoteTable]:
        LOADERS[name] = fn
        return fn

    return register


def load_item(item: SourceItem) -> NoteTable:
    """Load one item with its registered loader."""
    return LOADERS[item.loader](item)


@loader("midi")
def _load_midi(item: SourceItem) -> NoteTable:
    return NoteTable.read_midi(item.path)


def musicxml_part_names(path: str | Path) -> list[str]:
    """Part names of a MusicXML (.xml/.mxl) file, in order, read straight from its part list.

    muspy's MusicXML reader names tracks "Instrument N"; the part names ("Soprano", "Bass", ...) are
    what lets a piano-roll route voices to tracks by name.
    """
    path = Path(path)
    if path.suffix.lower() == ".mxl":
        with zipfile.ZipFile(path) as archive:
            inner = next(
                n
                for n in archive.namelist()
                if n.lower().endswith((".xml", ".musicxml")) and "META-INF" not in n
            )
            data = archive.read(inner)
    else:
        data = path.read_bytes()
    root = ElementTree.fromstring(data)
    return [(sp.findtext("part-name") or "").strip() for sp in root.iter("score-part")]


@loader("musicxml")
def _load_musicxml(item: SourceItem) -> NoteTable:
    table = NoteTable.from_music(muspy.read_musicxml(item.path))
    names = musicxml_part_names(item.path)
    if len(names) == len(table.tracks):
        for track, name in zip(table.tracks, names):
            track.name = name or track.name
    return table


def split_abc_tunes(text: str) -> list[tuple[int, str]]:
    """Split an ABC file into ``(X number, tune text)`` pairs.

    muspy's own splitter drops a tune whose ``X:`` line is the first line of the file; this one
    keeps every tune. Header lines before the first ``X:`` (file-level fields) are prepended to each.
    """
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"^X:\s*\d+", line)]
    header = lines[: starts[0]] if starts else []
    header = [h for h in header if re.match(r"^[A-Za-z]:", h) or h.startswith("%%")]
    tunes = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        number = int(re.match(r"^X:\s*(\d+)", lines[start]).group(1))
        body = [lines[start], *header, *lines[start + 1 : end]]
        tunes.append((number, "\n".join(body).strip() + "\n"))
    return tunes


@loader("abc")
def _load_abc(item: SourceItem) -> NoteTable:
    import music21

    text = item.payload
    if text is None:
        tunes = split_abc_tunes(Path(item.path).read_text(encoding="utf-8", errors="replace"))
        text = tunes[item.index][1]
    score = music21.converter.parse(text, format="abc", forceSource=True)
    return NoteTable.from_music(muspy.from_music21(score))


def abc_items(path: Path, key_prefix: str, split: str | None = None) -> list[SourceItem]:
    """One item per tune of an ABC file (the tune text travels with the item)."""
    tunes = split_abc_tunes(path.read_text(encoding="utf-8", errors="replace"))
    return [
        SourceItem(f"{key_prefix}#{i}:X{number}", "abc", str(path), i, split, text)
        for i, (number, text) in enumerate(tunes)
    ]


def file_items(root: Path, files: list[Path], split: str | None = None) -> list[SourceItem]:
    """Items for a list of files under ``root``, choosing the loader from the extension."""
    items: list[SourceItem] = []
    for path in files:
        suffix = path.suffix.lower()
        key = path.relative_to(root).as_posix()
        if suffix in MIDI_EXTENSIONS:
            items.append(SourceItem(key, "midi", str(path), split=split))
        elif suffix in MUSICXML_EXTENSIONS:
            items.append(SourceItem(key, "musicxml", str(path), split=split))
        elif suffix in ABC_EXTENSIONS:
            items.extend(abc_items(path, key, split))
    return items


def list_files(root: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Files under ``root`` with one of ``extensions`` (case-insensitive), sorted, hidden dirs skipped."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in extensions
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def ensure_muspy_success(root: str | Path) -> Path:
    """Mark a local dataset folder as complete so muspy opens it with ``download_and_extract=False``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset root {root} does not exist (set data.root=... or data.download=true)"
        )
    (root / ".muspy.success").touch(exist_ok=True)
    return root


# --------------------------------------------------------------------------------------------- sources
class Music21CorpusSource(Source):
    """A composer or collection of the corpus that ships inside music21 (offline).

    ``composer="bach"`` gives the ~400 Bach chorales (4-part, multi-track): MuseLab's default data.
    Files are listed through `muspy.Music21Dataset` and read with muspy's MusicXML reader; part
    names are restored from the file so tracks can be routed by voice.
    """

    name = "music21"

    def __init__(self, composer: str = "bach", limit: int | None = None) -> None:
        self.composer = composer
        self.limit = limit

    def items(self) -> list[SourceItem]:
        dataset = muspy.Music21Dataset(self.composer)
        paths = sorted(str(p) for p in dataset.filenames if str(p).lower().endswith(MUSICXML_EXTENSIONS))
        if not paths:
            raise FileNotFoundError(
                f"the music21 corpus has no MusicXML files for composer {self.composer!r}"
            )
        corpus_root = Path(paths[0]).parents[1]
        items = [SourceItem(Path(p).relative_to(corpus_root).as_posix(), "musicxml", p) for p in paths]
        return items[: self.limit] if self.limit else items


class FolderSource(Source):
    """Any directory tree of ``.mid``, ``.midi``, ``.abc``, ``.xml``, ``.mxl`` and ``.musicxml`` files.

    MIDI files are read with symusic. Each tune of a multi-tune ABC file is its own piece.
    """

    name = "folder"

    def __init__(
        self,
        root: str,
        extensions: tuple[str, ...] | list[str] = MIDI_EXTENSIONS + ABC_EXTENSIONS + MUSICXML_EXTENSIONS,
    ) -> None:
        self.root = str(Path(root).expanduser())
        self.extensions = tuple(e.lower() for e in extensions)

    def items(self) -> list[SourceItem]:
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"data.root={self.root} is not a directory")
        items = file_items(root, list_files(root, self.extensions))
        if not items:
            raise FileNotFoundError(f"no music files ({', '.join(self.extensions)}) under {self.root}")
        return items

    def fingerprint(self) -> dict[str, Any]:
        # Content changes (a file added, replaced or touched) must invalidate the cache.
        digest = hashlib.sha1()
        root = Path(self.root)
        for path in list_files(root, self.extensions):
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return {
            "name": self.name,
            "root": self.root,
            "extensions": self.extensions,
            "files": digest.hexdigest(),
        }


@loader("boulanger")
def _load_boulanger(item: SourceItem) -> NoteTable:
    roll = np.asarray(item.payload, dtype=bool)
    return roll_to_note_table(roll, pitch_low=21)


def roll_to_note_table(roll: np.ndarray, pitch_low: int) -> NoteTable:
    """A (frames, pitches) 0/1 piano-roll as a one-track `NoteTable` with one tick per frame."""
    padded = np.pad(np.asarray(roll, dtype=np.int8), ((1, 1), (0, 0)))
    edges = np.diff(padded, axis=0)
    rows = []
    for pitch in range(roll.shape[1]):
        starts = np.flatnonzero(edges[:, pitch] == 1)
        ends = np.flatnonzero(edges[:, pitch] == -1)
        rows += [(s, e - s, pitch + pitch_low, 80) for s, e in zip(starts, ends)]
    notes = np.array(sorted(rows), dtype=np.int64).reshape(-1, 4)
    return NoteTable(resolution=1, tracks=[TrackNotes(notes, program=0, name="piano")])


class BoulangerSource(Source):
    """The classic Boulanger-Lewandowski (2012) piano-roll benchmarks (``.mat``, 88 keys from A0).

    Each frame becomes one beat (resolution 1), so a piano-roll representation with
    ``steps_per_beat=1``, ``pitch_low=21``, ``pitch_high=108`` and ``track_mode="merge"`` gives back the
    original frames exactly. The official train/valid/test splits are kept.

    Args:
        path: the ``.mat`` file (e.g. ``JSB_Chorales.mat``).
    """

    name = "boulanger"
    SPLIT_KEYS: ClassVar[dict[str, str]] = {"traindata": "train", "validdata": "val", "testdata": "test"}

    def __init__(self, path: str) -> None:
        self.path = str(Path(path).expanduser())

    def items(self) -> list[SourceItem]:
        rolls = load_boulanger(self.path)
        return [
            SourceItem(f"{Path(self.path).stem}/{split}/{i:04d}", "boulanger", self.path, i, split, roll)
            for split, split_rolls in rolls.items()
            for i, roll in enumerate(split_rolls)
        ]

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha1(Path(self.path).read_bytes()).hexdigest()
        return {"name": self.name, "path": self.path, "sha1": digest}


def load_boulanger(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Read a Boulanger ``.mat`` file into ``{"train"|"val"|"test": [(frames, 88) bool arrays]}``."""
    from scipy.io import loadmat

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Boulanger .mat file not found: {path}")
    mat = loadmat(str(path))
    missing = [k for k in BoulangerSource.SPLIT_KEYS if k not in mat]
    if missing:
        raise KeyError(f"{path} lacks {missing}: not a Boulanger piano-roll .mat file")
    out: dict[str, list[np.ndarray]] = {}
    for key, split in BoulangerSource.SPLIT_KEYS.items():
        seqs = mat[key].reshape(-1)
        out[split] = [np.asarray(s, dtype=bool).reshape(-1, 88) for s in seqs]
    return out
