"""Sources: where music comes from.

A source lists its pieces as `SourceItem`s (cheap: no parsing) and `load_item` turns one item into a
`NoteTable` (the expensive part, run in the cache's preprocessing processes). Each item has a stable
``key`` (its identity, used for the hash split and in error reports) and, where the dataset has an
official split, its ``split``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import re
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar
from xml.etree import ElementTree

import muspy
import numpy as np

from datamodules.notes import NoteTable, TrackNotes
from muselab.errors import UserError

MIDI_EXTENSIONS = (".mid", ".midi")
MUSICXML_EXTENSIONS = (".xml", ".mxl", ".musicxml")
ABC_EXTENSIONS = (".abc",)
SPLITS = ("train", "val", "test")

log = logging.getLogger(__name__)


class DataConfigError(UserError):
    """A data setting that cannot work: a missing or empty folder, a negative window.

    Raised before any work is done, with a one-line message that starts with the config key and
    the value as the user gave it (``data.source.root=/no/such/dir: no such directory ...``).
    """


class UnusableItem(Exception):
    """Raised by a loader for a piece that is to be skipped with a reason of its own.

    The message is the reason in the cache's skipped-file report, e.g.
    ``abc: no tune (no X: line)``; other exceptions are reported as ``unreadable: ...``.
    """


def expand_path(path: str | os.PathLike[str]) -> str:
    """``path`` with ``~`` and ``$VAR`` expanded, as a shell would have done (Hydra does neither)."""
    return os.path.expandvars(os.path.expanduser(os.fspath(path)))


def printable(name: str) -> str:
    """``name`` unchanged, or, where it holds bytes that are not UTF-8 (a file name from another
    system), with those bytes written as ``\\xff`` escapes: keys must hash, log and be saved as JSON."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        try:  # os.fsdecode smuggles each undecodable byte in as a lone surrogate: show the byte
            return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # another lone surrogate (from JSON text, say): show the code point
            return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return name


def _setting(key: str, value: str, typed: str | None) -> str:
    """``key=value`` as the user typed it, with what it expanded to when that differs."""
    if typed is None or typed == value:
        return f"{key}={printable(value)}"
    return f"{key}={printable(typed)} (= {printable(value)})"


def _unset_variables(typed: str | None) -> list[str]:
    names = re.findall(r"\$(?:\{(\w+)\}|(\w+))", typed or "")
    return [f"${a or b}" for a, b in names if (a or b) not in os.environ]


def check_root(
    root: str,
    extensions: tuple[str, ...],
    key: str = "data.source.root",
    typed: str | None = None,
    example: str = "/path/to/your/midi",
) -> None:
    """Raise `DataConfigError` unless ``root`` is a readable folder with at least one file with one of
    ``extensions`` in or below it. Cheap: the walk stops at the first such file."""
    shown = _setting(key, root, typed)
    fix = f"set {key}={example}"
    try:
        os.stat(root)
    except PermissionError:
        raise DataConfigError(f"{shown}: cannot read it (permission denied)") from None
    except OSError:
        unset = _unset_variables(typed)
        why = f"no such directory ({', '.join(unset)} not set)" if unset else "no such directory"
        raise DataConfigError(f"{shown}: {why} ({fix})") from None
    if not os.path.isdir(root):
        raise DataConfigError(f"{shown}: not a directory ({key} is the folder that holds the files)")
    try:
        found = next(walk_files(root, extensions), None)
    except PermissionError:
        raise DataConfigError(f"{shown}: cannot read it (permission denied)") from None
    if found is None:
        raise DataConfigError(f"{shown}: no music files ({', '.join(extensions)}) in it or below it")


def check_download_root(root: str, key: str = "data.source.root", typed: str | None = None) -> None:
    """Raise `DataConfigError` unless ``root`` is a folder, or can be created, to download into."""
    shown = _setting(key, root, typed)
    if os.path.isdir(root):
        return  # muspy skips a finished download, and says so when it cannot write the archive
    if os.path.exists(root):
        raise DataConfigError(f"{shown}: not a directory, so nothing can be downloaded into it")
    existing = root
    while not os.path.exists(existing):
        existing = os.path.dirname(existing) or "."
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise DataConfigError(f"{shown}: cannot write to {printable(existing)} to download into it")


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

    def check(self) -> None:  # noqa: B027 - optional hook
        """Fail early and cheaply on settings that cannot work (a missing, empty or unreadable root),
        with a `DataConfigError` that names the config key; called before a model is built."""

    @abstractmethod
    def items(self) -> list[SourceItem]:
        """All pieces, in a deterministic order."""

    def iter_items(self) -> Iterator[SourceItem]:
        """`items`, in the same order, as a stream: a source of many files overrides it so that
        preprocessing never holds the whole list (`datamodules.cache.build_cache` reads this)."""
        yield from self.items()

    def split_group(self, key: str) -> str | None:
        """The group of the piece ``key`` when this dataset knows which pieces are versions of one
        (the split keeps a group together), or ``None`` to leave it to the generic rules."""
        return None

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

    muspy's MusicXML reader names tracks after their instruments ("Instrument 1", ...); the part
    names ("Soprano", "Bass", ...) are what lets a piano-roll route voices to tracks by name. The
    part list comes first in the file, so parsing stops at its end: reading the whole file a second
    time had cost a quarter of loading a chorale.
    """
    path = Path(path)
    with contextlib.ExitStack() as stack:
        if path.suffix.lower() == ".mxl":
            archive = stack.enter_context(zipfile.ZipFile(path))
            inner = next(
                n
                for n in archive.namelist()
                if n.lower().endswith((".xml", ".musicxml")) and "META-INF" not in n
            )
            stream = stack.enter_context(archive.open(inner))
        else:
            stream = stack.enter_context(open(path, "rb"))
        names = []
        for _, element in ElementTree.iterparse(stream, events=("end",)):
            tag = _local_tag(element)
            if tag == "score-part":
                name = next((child.text for child in element if _local_tag(child) == "part-name"), None)
                names.append((name or "").strip())
            elif tag == "part-list":
                break
        return names


def _local_tag(element: ElementTree.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]  # with or without an XML namespace


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


def parse_abc_tune(item: SourceItem) -> muspy.Music:
    """One ABC tune (the item's text, or tune ``index`` of its file) through music21 and muspy.

    music21 reports a broken tune with whatever error its parser hits (an unclosed chord gives
    ``ValueError: substring not found``), so any error of the parse is reported as an ABC syntax
    error in that tune (an `UnusableItem`).
    """
    import music21

    text = item.payload
    if text is None:
        tunes = split_abc_tunes(Path(item.path).read_text(encoding="utf-8", errors="replace"))
        text = tunes[item.index][1]
    number = re.match(r"X:\s*(\d+)", text)
    tune = f"tune X:{number.group(1) if number else item.index + 1}"
    try:
        score = music21.converter.parse(text, format="abc", forceSource=True)
    except Exception as exc:
        raise UnusableItem(f"abc: syntax error in {tune}: {type(exc).__name__}: {exc}") from exc
    try:
        return muspy.from_music21(score)
    except Exception as exc:
        raise UnusableItem(f"abc: cannot convert {tune}: {type(exc).__name__}: {exc}") from exc


@loader("abc")
def _load_abc(item: SourceItem) -> NoteTable:
    return NoteTable.from_music(parse_abc_tune(item))


@loader("abc_no_tune")
def _load_abc_no_tune(item: SourceItem) -> NoteTable:
    raise UnusableItem("abc: no tune (no X: line)")


def abc_items(path: Path, key_prefix: str, split: str | None = None) -> list[SourceItem]:
    """One item per tune of an ABC file (the tune text travels with the item).

    A file with no tune (no ``X:`` line) gives one item that the cache skips and reports, so a
    file that is silently ignored cannot hide a folder of mislabelled files.
    """
    tunes = split_abc_tunes(path.read_text(encoding="utf-8", errors="replace"))
    if not tunes:
        return [SourceItem(key_prefix, "abc_no_tune", str(path), 0, split)]
    return [
        SourceItem(f"{key_prefix}#{i}:X{number}", "abc", str(path), i, split, text)
        for i, (number, text) in enumerate(tunes)
    ]


def file_items(root: Path, files: list[Path], split: str | None = None) -> list[SourceItem]:
    """Items for a list of files under ``root``, choosing the loader from the extension."""
    items: list[SourceItem] = []
    for path in files:
        name, key = str(path), printable(relative_key(path, root))
        suffix = os.path.splitext(name)[1].lower()
        if suffix in MIDI_EXTENSIONS:
            items.append(SourceItem(key, "midi", name, split=split))
        elif suffix in MUSICXML_EXTENSIONS:
            items.append(SourceItem(key, "musicxml", name, split=split))
        elif suffix in ABC_EXTENSIONS:
            items.extend(abc_items(Path(path), key, split))
    return items


def relative_key(path: Path, root: Path) -> str:
    """``path.relative_to(root).as_posix()``, by string slicing when ``path`` starts with ``root``:
    pathlib's parsing was half the cost of listing a folder of MIDI files."""
    name, prefix = str(path), os.path.join(str(root), "")
    key = name[len(prefix) :] if name.startswith(prefix) else path.relative_to(root).as_posix()
    return key.replace(os.sep, "/")


def walk_files(
    root: str | Path, extensions: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], os.DirEntry]]:
    """``(relative parts, directory entry)`` of the files under ``root`` with one of ``extensions``
    (case-insensitive), in no particular order; hidden files and folders are skipped.

    One `os.scandir` walk: a directory entry already says whether it is a file. A sub-folder that
    cannot be read is skipped with a warning (one locked folder must not stop a run over a whole
    collection); an unreadable ``root`` raises `PermissionError`.
    """
    stack: list[tuple[str, tuple[str, ...]]] = [(str(root), ())]
    seen: set[str] = set()  # symlinked folders are followed, once each (a link loop must not hang)
    while stack:
        folder, parts = stack.pop()
        if (real := os.path.realpath(folder)) in seen:
            continue
        seen.add(real)
        try:
            entries = os.scandir(folder)
        except OSError as exc:
            if not parts:
                raise
            log.warning("cannot read folder %s (%s): skipped", printable(folder), exc.strerror)
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append((entry.path, (*parts, entry.name)))
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in extensions:
                    yield (*parts, entry.name), entry


def walk_sorted(root: str | Path, extensions: tuple[str, ...]) -> Iterator[os.DirEntry]:
    """The files under ``root`` with one of ``extensions`` (case-insensitive), in the order of their
    relative paths' parts, as they are found: only the entries of the folders being walked are held,
    never the whole list (Lakh has 176k files). Hidden files and folders are skipped; symlinked
    folders are followed once; an unreadable sub-folder is skipped with a warning, an unreadable
    ``root`` raises `PermissionError` (as `walk_files`).

    Sorting each folder's entries by name and descending into a folder where its name sorts gives
    exactly the order of sorting the relative paths' parts.
    """
    seen: set[str] = set()

    def entries(folder: str, top: bool) -> Iterator[os.DirEntry]:
        if (real := os.path.realpath(folder)) in seen:
            return iter(())
        seen.add(real)
        try:
            with os.scandir(folder) as listing:
                found = sorted((e for e in listing if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as exc:
            if top:
                raise
            log.warning("cannot read folder %s (%s): skipped", printable(folder), exc.strerror)
            return iter(())
        return iter(found)

    stack = [entries(str(root), True)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry.is_dir():
            stack.append(entries(entry.path, False))
        elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in extensions:
            yield entry


def scan_files(
    root: Path, extensions: tuple[str, ...], stat: bool = True
) -> list[tuple[Path, os.stat_result | None]]:
    """Files under ``root`` with one of ``extensions`` (case-insensitive) and their stat, sorted by
    relative path (`walk_sorted`); hidden files and folders are skipped.

    The only system call per file is the stat the fingerprint needs; ``stat=False`` skips it.
    """
    return [(Path(entry.path), entry.stat() if stat else None) for entry in walk_sorted(root, extensions)]


def list_files(root: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Files under ``root`` with one of ``extensions`` (case-insensitive), sorted, hidden ones skipped."""
    return [Path(entry.path) for entry in walk_sorted(root, extensions)]


def iter_file_items(
    root: Path, extensions: tuple[str, ...], split: str | None = None
) -> Iterator[SourceItem]:
    """`file_items` of every file under ``root``, streamed in sorted order (`walk_sorted`)."""
    for entry in walk_sorted(root, extensions):
        yield from file_items(root, [Path(entry.path)], split)


def ensure_muspy_success(root: str | Path) -> Path:
    """Mark a local dataset folder as complete so muspy opens it with ``download_and_extract=False``."""
    root = Path(expand_path(root))
    if not root.is_dir():
        raise DataConfigError(
            f"data.source.root={printable(str(root))}: no such directory "
            "(set data.source.root=/path/to/the/dataset or data.source.download=true)"
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
        self._typed_root = str(root)
        self.root = expand_path(root)
        self.extensions = tuple(e.lower() for e in extensions)

    def check(self) -> None:
        """A missing, unreadable or empty ``root`` raises `DataConfigError` naming ``data.source.root``."""
        check_root(self.root, self.extensions, typed=self._typed_root)

    def items(self) -> list[SourceItem]:
        return list(self.iter_items())

    def iter_items(self) -> Iterator[SourceItem]:
        self.check()
        yield from iter_file_items(Path(self.root), self.extensions)

    def fingerprint(self) -> dict[str, Any]:
        # Content changes (a file added, replaced or touched) must invalidate the cache.
        self.check()
        root = Path(self.root)
        return {
            "name": self.name,
            "root": self.root,
            "extensions": self.extensions,
            "files": files_digest(root, self.extensions),
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
        self._typed_path = str(path)
        self.path = expand_path(path)

    def check(self) -> None:
        """A missing, unreadable or empty ``.mat`` file raises `DataConfigError` naming ``data.source.path``."""
        shown = _setting("data.source.path", self.path, self._typed_path)
        try:
            size = os.stat(self.path).st_size
        except PermissionError:
            raise DataConfigError(f"{shown}: cannot read it (permission denied)") from None
        except OSError:
            unset = _unset_variables(self._typed_path)
            why = f"no such file ({', '.join(unset)} not set)" if unset else "no such file"
            raise DataConfigError(
                f"{shown}: {why} (set data.source.path=/path/to/JSB_Chorales.mat)"
            ) from None
        if os.path.isdir(self.path):
            raise DataConfigError(f"{shown}: a directory, not a .mat file (e.g. .../JSB_Chorales.mat)")
        if not os.access(self.path, os.R_OK):
            raise DataConfigError(f"{shown}: cannot read it (permission denied)")
        if size == 0:
            raise DataConfigError(f"{shown}: an empty file, not a Boulanger piano-roll .mat file")

    def items(self) -> list[SourceItem]:
        self.check()
        rolls = load_boulanger(self.path)
        return [
            SourceItem(f"{Path(self.path).stem}/{split}/{i:04d}", "boulanger", self.path, i, split, roll)
            for split, split_rolls in rolls.items()
            for i, roll in enumerate(split_rolls)
        ]

    def fingerprint(self) -> dict[str, Any]:
        self.check()
        digest = hashlib.sha1(Path(self.path).read_bytes()).hexdigest()
        return {"name": self.name, "path": self.path, "sha1": digest}


def load_boulanger(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Read a Boulanger ``.mat`` file into ``{"train"|"val"|"test": [(frames, 88) bool arrays]}``."""
    from scipy.io import loadmat

    path = Path(expand_path(path))
    shown = f"data.source.path={printable(str(path))}"
    if not path.is_file():
        raise DataConfigError(f"{shown}: no such file (set data.source.path=/path/to/JSB_Chorales.mat)")
    try:
        mat = loadmat(str(path))
    except Exception as exc:
        message = " ".join(str(exc).split())
        raise DataConfigError(
            f"{shown}: not a readable MATLAB .mat file ({type(exc).__name__}: {message})"
        ) from exc
    missing = [k for k in BoulangerSource.SPLIT_KEYS if k not in mat]
    if missing:
        raise DataConfigError(f"{shown}: not a Boulanger piano-roll .mat file (no {', '.join(missing)})")
    out: dict[str, list[np.ndarray]] = {}
    for key, split in BoulangerSource.SPLIT_KEYS.items():
        seqs = mat[key].reshape(-1)
        out[split] = [np.asarray(s, dtype=bool).reshape(-1, 88) for s in seqs]
    return out


# ------------------------------------------------------------------------- muspy datasets and corpora
# The muspy dataset classes are used for what they do well (download, checksum, extract, and the
# `.muspy.success` bookkeeping); listing and reading go through our own code so that ABC tunes are
# split by `split_abc_tunes` and MIDI is parsed by symusic.


def files_digest(root: Path, extensions: tuple[str, ...]) -> str:
    """Hash of the relative path, size and modification time of the files `scan_files` lists:
    changes when content does."""
    digest = hashlib.sha1()
    for entry in walk_sorted(root, extensions):  # streamed: no list of the whole corpus
        stat = entry.stat()
        # fsencode: a file name that is not UTF-8 is hashed as its bytes (str.encode would refuse it).
        digest.update(
            os.fsencode(relative_key(Path(entry.path), root))
            + f":{stat.st_size}:{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


class MuspyDatasetSource(Source):
    """Base class of the sources backed by a muspy remote dataset living in a local ``root`` folder.

    With ``download=False`` the folder must already hold the data (extracted by hand, in any layout
    below ``root``): the `.muspy.success` marker that muspy insists on is created here, then the muspy
    class is constructed so it can check the folder. With ``download=True`` muspy downloads, verifies
    and extracts the archive into ``root`` (once: it skips the work when the marker exists).
    Subclasses set ``extensions`` and implement `dataset_class` and `items`.
    """

    name = "muspy"
    extensions: tuple[str, ...] = MIDI_EXTENSIONS
    # The files that are the music (MAESTRO's CSV is listed, but a folder of CSVs alone is empty).
    music_extensions: tuple[str, ...] | None = None

    def __init__(self, root: str, download: bool = False) -> None:
        self._typed_root = str(root)
        self.root = expand_path(root)
        self.download = bool(download)
        self._prepared = False

    def dataset_class(self) -> type[muspy.RemoteDataset]:
        """The muspy class that knows this dataset's download URL and checksum."""
        raise NotImplementedError

    def check(self) -> None:
        """A missing, unreadable or empty ``root`` raises `DataConfigError` naming ``data.source.root``;
        with ``download=True`` only a root that cannot be downloaded into does."""
        if self.download:  # the files come later; an empty folder is where they will go
            check_download_root(self.root, typed=self._typed_root)
            return
        check_root(
            self.root,
            self.music_extensions or self.extensions,
            typed=self._typed_root,
            example=f"/path/to/{self.name} or data.source.download=true",
        )

    def prepare(self) -> None:
        """Download (``download=True``) or check the local folder, through the muspy dataset class."""
        if self._prepared:
            return
        root = Path(self.root)
        self.check()
        if self.download:
            root.mkdir(parents=True, exist_ok=True)  # muspy creates only the last level
        else:
            try:
                ensure_muspy_success(root)
            except OSError as exc:
                # A read-only copy (a shared mount) cannot take the marker, so muspy would refuse it;
                # our own listing needs neither, so read it as it is.
                log.warning("%s: cannot mark %s for muspy (%s); reading it directly", self.name, root, exc)
                self._prepared = True
                return
        # A ValueError means muspy found none of *its* files ("Nothing found in the directory."):
        # MAESTRO kept as .mid instead of .midi, JSB as JSON only, or ABC files whose only tune starts
        # on line 1 (muspy's splitter drops it). Our own listing decides whether the folder is empty.
        with contextlib.suppress(ValueError):
            self.dataset_class()(root, download_and_extract=self.download)
        self._prepared = True

    def files(self) -> list[Path]:
        """The data files under ``root`` (after `prepare`); raises if there are none."""
        return list(self.iter_files())

    def iter_files(self) -> Iterator[Path]:
        """`files` as a stream (sorted; `walk_sorted`); raises before the first if there are none."""
        self.prepare()
        entries = walk_sorted(Path(self.root), self.extensions)
        first = next(entries, None)
        if first is None:
            shown = _setting("data.source.root", self.root, self._typed_root)
            raise DataConfigError(f"{shown}: no {', '.join(self.extensions)} files in it or below it")
        yield Path(first.path)
        for entry in entries:
            yield Path(entry.path)

    def fingerprint(self) -> dict[str, Any]:
        # Fingerprinting happens before `prepare`; a download must land first so that the cache key
        # hashes the real files and the next run finds the same cache.
        if self.download:
            self.prepare()
        self.check()
        root = Path(self.root)
        return {
            "name": self.name,
            "root": self.root,
            "files": files_digest(root, self.extensions),
            **self._settings(),
        }

    def _settings(self) -> dict[str, Any]:
        """Constructor arguments (other than root/download) that change the items."""
        return {}


class EssenSource(Source):
    """The Essen folk songs that ship inside music21 (``corpus/essenFolksong/*.abc``; offline).

    About 8,500 mostly German and Chinese folk melodies (one track, no chords) in 32 ABC files;
    each tune is one piece, split out with our ABC splitter and parsed by music21. There is no
    official split (hash split). ``limit`` keeps the first tunes in file order.
    """

    name = "essen"

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit

    @staticmethod
    def folder() -> Path:
        """Where music21 keeps the Essen ABC files."""
        import music21

        return Path(music21.corpus.__file__).parent / "essenFolksong"

    def _files(self) -> list[Path]:
        folder = self.folder()
        files = list_files(folder, ABC_EXTENSIONS) if folder.is_dir() else []
        if not files:
            raise FileNotFoundError(f"no Essen ABC files in the music21 corpus at {folder}")
        return files

    def items(self) -> list[SourceItem]:
        items: list[SourceItem] = []
        for path in self._files():
            items += abc_items(path, f"essenFolksong/{path.name}")
            if self.limit and len(items) >= self.limit:
                break
        return items[: self.limit] if self.limit else items

    def fingerprint(self) -> dict[str, Any]:
        folder = self.folder()
        self._files()  # a clear error when music21's corpus lacks them
        return {"name": self.name, "limit": self.limit, "files": files_digest(folder, ABC_EXTENSIONS)}


class NottinghamSource(MuspyDatasetSource):
    """The Nottingham Music Database: ~1,000 British and American folk tunes in 14 ABC files.

    Backed by `muspy.NottinghamDatabase` for the download; the tunes are split with our own ABC
    splitter, because muspy's drops a tune whose ``X:`` line is the first line of its file (one tune
    of the real database, and the only tune of such a one-tune file). With ``chords=True`` each piece has two tracks, melody then the
    chord symbols realised as block chords (each held until the next symbol); ``chords=False`` keeps
    the melody only. No official split (hash split).

    Args:
        root: folder holding the ``.abc`` files (any depth), or where to download them.
        download: download with muspy if the folder has no ``.muspy.success`` marker yet.
        chords: add the accompaniment chord track.
    """

    name = "nottingham"
    extensions = ABC_EXTENSIONS

    def __init__(self, root: str, download: bool = False, chords: bool = True) -> None:
        super().__init__(root, download)
        self.chords = bool(chords)

    def dataset_class(self) -> type[muspy.RemoteDataset]:
        return muspy.NottinghamDatabase

    def items(self) -> list[SourceItem]:
        root = Path(self.root)
        items = [
            item for path in self.files() for item in abc_items(path, printable(relative_key(path, root)))
        ]
        if self.chords:
            items = [replace(item, loader="abc_chords") if item.loader == "abc" else item for item in items]
        return items

    def _settings(self) -> dict[str, Any]:
        return {"chords": self.chords}


@loader("abc_chords")
def _load_abc_with_chords(item: SourceItem) -> NoteTable:
    """One ABC tune as melody + chord tracks.

    muspy files music21's chord symbols (``"Am"``) as zero-length `muspy.Chord`s beside the notes
    and `NoteTable.from_music` ignores chords, so both are rebuilt here: a chord with a duration is
    a chord written in the melody (``[ceg]``) and joins it; a chord symbol sounds until the next one.
    """
    music = parse_abc_tune(item)
    table = NoteTable.from_music(music)
    written, symbols = [], []
    for track in music.tracks:
        for chord in track.chords:
            velocity = chord.velocity if chord.velocity is not None else 64
            if chord.duration > 0:
                written += [(chord.time, chord.duration, p, velocity) for p in chord.pitches]
            else:
                symbols.append((chord.time, list(chord.pitches), velocity))
    melody = table.tracks[0] if table.tracks else TrackNotes(np.zeros((0, 4)))
    if written:
        melody.notes = np.concatenate([melody.notes, np.array(written, dtype=np.int64)])
        melody.notes = melody.notes[np.lexsort((melody.notes[:, 2], melody.notes[:, 0]))]
    melody.name = melody.name or "melody"
    end = max(table.end_tick, max((t for t, _, _ in symbols), default=0) + table.resolution)
    symbols.sort(key=lambda s: s[0])
    rows = []
    for n, (time, pitches, velocity) in enumerate(symbols):
        # A symbol lasts until the next one at a later time (an "N.C." has no pitches: a break).
        until = next((t for t, _, _ in symbols[n + 1 :] if t > time), end)
        rows += [(time, until - time, p, velocity) for p in pitches if until > time]
    chords = TrackNotes(np.array(rows, dtype=np.int64).reshape(-1, 4), program=0, name="chords")
    table.tracks = [melody, chords, *table.tracks[1:]]
    return table


JSB_VOICES = ("soprano", "alto", "tenor", "bass")
JSB_SPLITS: dict[str, str] = {"train": "train", "valid": "val", "test": "test"}


def _rank_voice(rank: int, count: int) -> int:
    """Voice (0 = soprano .. 3 = bass) of the ``rank``-th highest of ``count`` sounding notes."""
    if rank == 0:
        return 0
    if rank == count - 1:
        return 3
    middle = count - 2
    return 1 if rank - 1 < (middle + 1) // 2 else 2


def voices_by_rank(notes: np.ndarray) -> list[TrackNotes]:
    """Split merged chorale notes into soprano/alto/tenor/bass tracks by pitch rank.

    Each note takes the voice of its rank among the notes sounding at its onset: highest soprano,
    lowest bass, the ones between alto then tenor. Exact for four-note chords; a unison (three notes
    sounding) leaves the tenor silent. No note is dropped, so merging the tracks gives back the input.
    """
    notes = np.asarray(notes, dtype=np.int64).reshape(-1, 4)
    onset, end, pitch = notes[:, 0], notes[:, 0] + notes[:, 1], notes[:, 2]
    index = np.arange(len(notes))
    voice = np.zeros(len(notes), dtype=np.int64)
    for i in range(len(notes)):
        sounding = (onset <= onset[i]) & (end > onset[i])
        sounding[i] = True
        above = sounding & ((pitch > pitch[i]) | ((pitch == pitch[i]) & (index < i)))
        voice[i] = _rank_voice(int(above.sum()), int(sounding.sum()))
    return [TrackNotes(notes[voice == v], program=52, name=name) for v, name in enumerate(JSB_VOICES)]


def _pitch_runs(steps: list[set[tuple[int, int]]]) -> np.ndarray:
    """Notes ``(onset, duration, pitch, slot)`` from time steps of ``(slot, pitch)`` sets; repeats are held."""
    rows, started = [], {}  # (slot, pitch) -> onset step
    for t, step in enumerate([*steps, set()]):
        for key in [k for k in started if k not in step]:
            onset = started.pop(key)
            rows.append((onset, t - onset, key[1], key[0]))
        for key in step:
            started.setdefault(key, t)
    return np.array(sorted(rows), dtype=np.int64).reshape(-1, 4)


def jsb_steps_to_table(steps: list[Any], steps_per_quarter: int) -> NoteTable:
    """A JSB chorale given as time steps of MIDI pitches (one tick per step) as a `NoteTable`.

    Voice-separated data (exactly four entries per step, rests as -1 or NaN, as in coconet's
    ``Jsb16thSeparated.json``) keeps its voices, ordered high to low by mean pitch; chord lists
    (Boulanger-Lewandowski's ``jsb-chorales-*.json``: the sounding pitches, any number) are split
    into voices with `voices_by_rank`. The data does not tell a held note from a repeated one:
    consecutive steps with the same pitch in a voice become one note.
    """

    def clean(value: Any) -> int | None:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value < 0:
            return None
        return round(float(value))

    rows = [[clean(p) for p in (step if isinstance(step, list | tuple) else [step])] for step in steps]
    if rows and all(len(step) == 4 for step in rows):
        runs = _pitch_runs([{(slot, p) for slot, p in enumerate(step) if p is not None} for step in rows])
        slots = [runs[runs[:, 3] == s] for s in range(4)]
        slots.sort(key=lambda s: -s[:, 2].mean() if len(s) else float("inf"))
        tracks = [
            TrackNotes(np.column_stack([s[:, :3], np.full(len(s), 80)]), program=52, name=name)
            for s, name in zip(slots, JSB_VOICES)
        ]
    else:
        # Chord lists carry no voice slots: a note is a run of one pitch, whatever its position.
        runs = _pitch_runs([{(0, p) for p in step if p is not None} for step in rows])
        runs[:, 3] = 80
        tracks = voices_by_rank(runs)
    return NoteTable(resolution=int(steps_per_quarter), tracks=tracks)


@loader("jsb_steps")
def _load_jsb_steps(item: SourceItem) -> NoteTable:
    steps, steps_per_quarter = item.payload
    return jsb_steps_to_table(steps, steps_per_quarter)


@loader("jsb_midi")
def _load_jsb_midi(item: SourceItem) -> NoteTable:
    table = NoteTable.read_midi(item.path)
    if table.resolution == 100:
        # As muspy's JSBChoralesDataset.read notes, these files say 100 ticks per quarter but are
        # written at 120.
        table.resolution = 120
    tracks = [t for t in table.tracks if not t.is_drum and len(t.notes)]
    if len(tracks) == 4:
        tracks.sort(key=lambda t: -t.notes[:, 2].mean())
        for track, name in zip(tracks, JSB_VOICES):
            track.name = name
        table.tracks = tracks
    else:
        # The Boulanger-Lewandowski files hold the chorale as one stream of chords.
        table.tracks = voices_by_rank(np.concatenate([t.notes for t in tracks]) if tracks else [])
    return table


class JSBSource(MuspyDatasetSource):
    """The 382 JSB chorales of Boulanger-Lewandowski (2012), with the official train/valid/test split.

    Two on-disk forms are read, both keeping the official split (``valid`` becomes ``val``):

    - MIDI under ``<split>/`` folders, as `muspy.JSBChoralesDataset` downloads them
      (``JSB Chorales/{train,valid,test}/*.mid``; the files' 100 ticks per quarter are read as 120);
    - JSON files with ``train``/``valid``/``test`` keys, each a list of chorales, each a list of time
      steps of MIDI pitches (czhuang/JSB-Chorales-dataset: ``Jsb16thSeparated.json`` with four voices
      per step, or ``jsb-chorales-{16th,8th,quarter}.json`` with chord lists).

    Every piece has four tracks named soprano, alto, tenor and bass: the real voices where the data
    has them (``Jsb16thSeparated``), otherwise voices by pitch rank (see `voices_by_rank`). A folder
    that holds several forms of the chorales is read in one of them, so no chorale is counted (or
    split) twice: ``format="auto"`` takes JSON with real voices if there is one, else the MIDI files,
    else the finest chord-list JSON; ``"midi"`` and ``"json"`` choose.

    Args:
        root: the dataset folder, or where to download it.
        download: download the MIDI form with muspy.
        steps_per_quarter: time steps per quarter note of the JSON files; ``None`` reads it from the
            file name (``16th`` = 4, ``8th`` = 2, ``quarter`` = 1).
        format: ``auto``, ``midi`` or ``json``: which form to read when the folder holds both.
    """

    name = "jsb"
    extensions = (*MIDI_EXTENSIONS, ".json")
    STEPS_IN_NAME: ClassVar[dict[str, int]] = {"16th": 4, "8th": 2, "quarter": 1}
    FORMATS = ("auto", "midi", "json")

    def __init__(
        self, root: str, download: bool = False, steps_per_quarter: int | None = None, format: str = "auto"
    ) -> None:
        if format not in self.FORMATS:
            raise DataConfigError(f"data.source.format={format}: must be one of {', '.join(self.FORMATS)}")
        super().__init__(root, download)
        self.steps_per_quarter = steps_per_quarter
        self.format = format

    def dataset_class(self) -> type[muspy.RemoteDataset]:
        return muspy.JSBChoralesDataset

    def _steps_in_name(self, path: Path) -> int | None:
        if self.steps_per_quarter:
            return int(self.steps_per_quarter)
        return next((steps for word, steps in self.STEPS_IN_NAME.items() if word in path.name.lower()), None)

    def _steps_per_quarter(self, path: Path) -> int:
        steps = self._steps_in_name(path)
        if steps is None:
            raise DataConfigError(
                f"data.source.steps_per_quarter=null: cannot tell the time resolution of {printable(path.name)} "
                "from its name (set data.source.steps_per_quarter=4 for 16th notes)"
            )
        return steps

    @staticmethod
    def has_voices(data: dict[str, Any]) -> bool:
        """Whether JSON chorales are voice-separated: exactly four pitches (or rests) in every step."""
        chorales = [c for name in JSB_SPLITS for c in data.get(name, [])]
        return bool(chorales) and all(
            isinstance(step, list) and len(step) == 4 for chorale in chorales for step in chorale
        )

    def _json_forms(self, files: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
        """The JSON files that hold chorales (``train``/``valid``/``test`` keys)."""
        root, forms = Path(self.root), []
        for path in files:
            if path.suffix.lower() != ".json" or relative_key(path, root).startswith("_converted/"):
                continue  # muspy's own converted copies are skipped too
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and set(JSB_SPLITS) & set(data):
                forms.append((path, data))
        return forms

    def _choose(
        self, midi: list[Path], forms: list[tuple[Path, dict[str, Any]]]
    ) -> tuple[Path, dict[str, Any]] | None:
        """The JSON form to read, or ``None`` for the MIDI files."""
        shown = _setting("data.source.root", self.root, self._typed_root)
        # Real voices first, then the finest time resolution; the name breaks ties.
        forms = sorted(
            forms, key=lambda f: (not self.has_voices(f[1]), -(self._steps_in_name(f[0]) or 0), f[0])
        )
        if self.format == "midi" or (
            self.format == "auto" and midi and not (forms and self.has_voices(forms[0][1]))
        ):
            if not midi:
                raise DataConfigError(f"data.source.format=midi: no MIDI files in {shown}")
            return None
        if not forms:
            what = "no JSON file with train/valid/test keys" if self.format == "json" else "no JSB chorales"
            raise DataConfigError(f"{shown}: {what} (MIDI under train/valid/test, or JSON with those keys)")
        return forms[0]

    def items(self) -> list[SourceItem]:
        root = Path(self.root)
        files = self.files()
        midi = [p for p in files if p.suffix.lower() in MIDI_EXTENSIONS]
        forms = self._json_forms(files)
        form = self._choose(midi, forms)
        items: list[SourceItem] = []
        if form is not None:
            path, data = form
            key = printable(relative_key(path, root))
            steps_per_quarter = self._steps_per_quarter(path)
            for name, split in JSB_SPLITS.items():
                for i, steps in enumerate(data.get(name, [])):
                    payload = (steps, steps_per_quarter)
                    items.append(
                        SourceItem(f"{key}/{name}/{i:04d}", "jsb_steps", str(path), i, split, payload)
                    )
            what = f"{key} ({'JSON, 4 voices per step' if self.has_voices(data) else 'JSON, chord lists'})"
        else:
            for path in midi:
                key = printable(relative_key(path, root))
                folders = [p.lower() for p in key.split("/")[:-1]]
                split = next((JSB_SPLITS[f] for f in reversed(folders) if f in JSB_SPLITS), None)
                items.append(SourceItem(key, "jsb_midi", str(path), split=split))
            what = f"{len(midi)} MIDI files"
        ignored = len(forms) - (form is not None) + (len(midi) if form is not None else 0)
        log.info(
            "JSB (data.source.format=%s): reading %s, %d chorales%s",
            self.format,
            what,
            len(items),
            f"; {ignored} other file(s) of the chorales ignored" if ignored else "",
        )
        return items

    def _settings(self) -> dict[str, Any]:
        return {"steps_per_quarter": self.steps_per_quarter, "format": self.format}


class LakhSource(MuspyDatasetSource):
    """The Lakh MIDI Dataset (Raffel 2016): ``full`` (176k files), ``matched`` or ``aligned`` (45k).

    `muspy.LakhMIDIDataset` / `LakhMIDIMatchedDataset` / `LakhMIDIAlignedDataset` handle the download;
    the ``.mid`` files under ``root`` are read with symusic. Broken files (there are some) are skipped
    and counted by the cache. No official split (hash split on the file path).
    """

    name = "lakh"
    VARIANTS: ClassVar[dict[str, str]] = {
        "full": "LakhMIDIDataset",
        "matched": "LakhMIDIMatchedDataset",
        "aligned": "LakhMIDIAlignedDataset",
    }

    def __init__(self, root: str, variant: str = "full", download: bool = False) -> None:
        if variant not in self.VARIANTS:
            raise DataConfigError(f"data.source.variant={variant}: must be one of {', '.join(self.VARIANTS)}")
        super().__init__(root, download)
        self.variant = variant

    def dataset_class(self) -> type[muspy.RemoteDataset]:
        return getattr(muspy, self.VARIANTS[self.variant])

    def items(self) -> list[SourceItem]:
        return list(self.iter_items())

    def iter_items(self) -> Iterator[SourceItem]:
        root = Path(self.root)
        for path in self.iter_files():
            yield from file_items(root, [path])

    def split_group(self, key: str) -> str | None:
        """In ``matched`` and ``aligned`` each Million Song Dataset track folder (``TR`` + 16
        characters) holds the MIDI files matched to one song: versions of one piece."""
        folder, _, _ = key.rpartition("/")
        if self.variant != "full" and re.fullmatch(r"TR[A-Z0-9]{16}", folder.rpartition("/")[2]):
            return folder
        return None

    def _settings(self) -> dict[str, Any]:
        return {"variant": self.variant}


class MaestroSource(MuspyDatasetSource):
    """MAESTRO (Hawthorne et al. 2019): ~1,300 virtuoso piano performances, with the official split.

    `muspy.MAESTRODatasetV3` (``version=3``) or ``V2``/``V1`` handle the download. The split comes from
    the ``split`` column of the ``maestro-v*.csv`` file found under ``root`` (``validation`` becomes
    ``val``), matched to the MIDI files through its ``midi_filename`` column, which is relative to the
    CSV's folder. MIDI files with no CSV row get no official split and are hash-split.
    """

    name = "maestro"
    extensions = (*MIDI_EXTENSIONS, ".csv")
    music_extensions = MIDI_EXTENSIONS
    CLASSES: ClassVar[dict[int, str]] = {1: "MAESTRODatasetV1", 2: "MAESTRODatasetV2", 3: "MAESTRODatasetV3"}
    SPLIT_NAMES: ClassVar[dict[str, str]] = {"train": "train", "validation": "val", "test": "test"}

    def __init__(self, root: str, version: int = 3, download: bool = False) -> None:
        if int(version) not in self.CLASSES:
            raise DataConfigError(
                f"data.source.version={version}: must be one of 1, 2, 3 (the MAESTRO version)"
            )
        super().__init__(root, download)
        self.version = int(version)

    def dataset_class(self) -> type[muspy.RemoteDataset]:
        return getattr(muspy, self.CLASSES[self.version])

    def official_splits(self, files: list[Path]) -> dict[Path, str]:
        """Resolved MIDI path -> split, from this version's ``maestro-v*.csv`` (any version's if absent)."""
        tables = [p for p in files if p.suffix.lower() == ".csv" and p.name.lower().startswith("maestro")]
        own = [p for p in tables if p.name.lower().startswith(f"maestro-v{self.version}")]
        splits: dict[Path, str] = {}
        for table in own or tables:
            with table.open(newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    split = self.SPLIT_NAMES.get((row.get("split") or "").strip().lower())
                    if split and row.get("midi_filename"):
                        splits[(table.parent / row["midi_filename"]).resolve()] = split
        return splits

    def items(self) -> list[SourceItem]:
        root = Path(self.root)
        files = self.files()
        splits = self.official_splits(files)
        midi = [p for p in files if p.suffix.lower() in MIDI_EXTENSIONS]
        if not midi:
            shown = _setting("data.source.root", self.root, self._typed_root)
            raise DataConfigError(f"{shown}: no MIDI files (.mid, .midi) in it or below it")
        return [
            SourceItem(printable(relative_key(p, root)), "midi", str(p), split=splits.get(p.resolve()))
            for p in midi
        ]

    def _settings(self) -> dict[str, Any]:
        return {"version": self.version}
