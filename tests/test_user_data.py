"""A researcher's own data: clear errors for bad roots and settings, odd file names, ABC gaps, paths
as typed, preprocessing helpers that end with their parent, splits that keep versions of a piece
together, one JSB form, and `make` overrides that reach Hydra unchanged. Every test writes real
files (muspy/symusic MIDI, ABC, JSON, .mat) and reads them back; nothing is mocked."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import muspy
import numpy as np
import pytest

from datamodules import MusicDataModule
from datamodules.cache import build_cache, load_cache
from datamodules.music_datamodule import split_group_label
from datamodules.representations import PianoRollRepresentation
from datamodules.sources import (
    BoulangerSource,
    DataConfigError,
    FolderSource,
    JSBSource,
    LakhSource,
    MaestroSource,
    NottinghamSource,
)
from tests.conftest import bach_representation, random_music, write_midi_folder
from tests.test_sources import write_jsb

REPO = Path(__file__).resolve().parents[1]
FOLDER_EXTENSIONS = ".mid, .midi, .abc, .xml, .mxl, .musicxml"


def one_line_error(call, message: str) -> str:
    """Run ``call``; it must raise `DataConfigError` whose one-line message starts with ``message``."""
    with pytest.raises(DataConfigError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text and text.startswith(message), text
    return text


def datamodule(source, tmp_path: Path, representation=None, **overrides) -> MusicDataModule:
    kwargs = {
        "cache_dir": str(tmp_path / "cache"),
        "window": 16,
        "batch_size": 4,
        "n_jobs": 1,
        "min_steps": 1,
    }
    return MusicDataModule(source, representation or PianoRollRepresentation(), **(kwargs | overrides))


# ------------------------------------------------------------------------------------- data roots
def test_a_bad_folder_root_is_one_line_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    source = FolderSource(str(missing))
    expected = f"data.source.root={missing}: no such directory (set data.source.root=/path/to/your/midi)"
    for call in (source.check, source.items, source.fingerprint):
        assert one_line_error(call, expected) == expected
    dm = datamodule(source, tmp_path)
    one_line_error(dm.check, expected)
    one_line_error(dm.prepare_data, expected)  # the build reaches the same message, not a scandir error
    assert not (tmp_path / "cache").exists()

    a_file = tmp_path / "piece.mid"
    muspy.write_midi(a_file, random_music(np.random.default_rng(0)))
    one_line_error(FolderSource(str(a_file)).check, f"data.source.root={a_file}: not a directory")

    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    (empty / "notes.txt").write_text("not music")
    muspy.write_midi(empty / ".hidden" / "x.mid", random_music(np.random.default_rng(0)))
    one_line_error(
        FolderSource(str(empty)).items,
        f"data.source.root={empty}: no music files ({FOLDER_EXTENSIONS}) in it or below it",
    )

    monkeypatch.delenv("MUSELAB_UNSET_VARIABLE", raising=False)
    one_line_error(
        FolderSource("$MUSELAB_UNSET_VARIABLE/midi").check,
        "data.source.root=$MUSELAB_UNSET_VARIABLE/midi: no such directory ($MUSELAB_UNSET_VARIABLE not set)",
    )
    cache_file = tmp_path / "cache-is-a-file"
    cache_file.write_text("")
    dm = datamodule(
        FolderSource(str(write_midi_folder(tmp_path / "midi"))), tmp_path, cache_dir=str(cache_file)
    )
    one_line_error(dm.check, f"paths.cache_dir={cache_file}: not a directory")


@pytest.mark.parametrize("cls", [JSBSource, LakhSource, MaestroSource, NottinghamSource])
def test_dataset_roots_name_the_key_and_a_download_root_must_be_writable(cls, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    one_line_error(
        cls(str(missing)).check,
        f"data.source.root={missing}: no such directory (set data.source.root=/path/to/{cls.name} "
        "or data.source.download=true)",
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    one_line_error(
        cls(str(blocker / "data"), download=True).check,
        f"data.source.root={blocker / 'data'}: cannot write to {blocker} to download into it",
    )
    cls(str(tmp_path / "fresh" / "data"), download=True).check()  # a folder to be created is fine


def test_maestro_needs_midi_not_just_its_csv(tmp_path: Path) -> None:
    (tmp_path / "maestro-v3.0.0.csv").write_text("split,midi_filename\ntrain,2004/a.midi\n")
    one_line_error(
        MaestroSource(str(tmp_path)).check,
        f"data.source.root={tmp_path}: no music files (.mid, .midi) in it or below it",
    )


def test_a_bad_boulanger_path_names_data_source_path(tmp_path: Path) -> None:
    from scipy.io import savemat

    missing = tmp_path / "JSB.mat"
    expected = f"data.source.path={missing}: no such file (set data.source.path=/path/to/JSB_Chorales.mat)"
    for call in (BoulangerSource(str(missing)).check, BoulangerSource(str(missing)).fingerprint):
        one_line_error(call, expected)
    one_line_error(
        BoulangerSource(str(tmp_path)).check, f"data.source.path={tmp_path}: a directory, not a .mat"
    )
    empty = tmp_path / "empty.mat"
    empty.write_bytes(b"")
    one_line_error(BoulangerSource(str(empty)).check, f"data.source.path={empty}: an empty file")
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"this is no MATLAB file at all" * 10)
    one_line_error(
        BoulangerSource(str(garbage)).items, f"data.source.path={garbage}: not a readable MATLAB .mat"
    )
    other = tmp_path / "other.mat"
    savemat(str(other), {"something": np.zeros((3, 88))})
    one_line_error(
        BoulangerSource(str(other)).items,
        f"data.source.path={other}: not a Boulanger piano-roll .mat file (no traindata, validdata, testdata)",
    )


UNREADABLE_SCRIPT = """
import logging, os, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
from datamodules.sources import DataConfigError, FolderSource
if os.geteuid() == 0:
    # Permissions do not bind root: drop to `nobody` once everything is imported (the interpreter
    # itself may live where nobody cannot read).
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
try:
    FolderSource(sys.argv[1]).check()
    print("NO ERROR")
except DataConfigError as exc:
    print("ERROR", exc)
print("KEYS", [item.key for item in FolderSource(sys.argv[2]).items()])
"""


def test_an_unreadable_root_is_an_error_and_an_unreadable_sub_folder_is_skipped() -> None:
    base = Path(tempfile.mkdtemp(prefix="muselab-perm-"))  # not under pytest's root-only tmp folder
    try:
        locked = base / "locked"
        write_midi_folder(locked, n_good=2, bad=False)
        partly = base / "partly"
        write_midi_folder(partly / "open", n_good=2, bad=False)
        write_midi_folder(partly / "closed", n_good=2, bad=False)
        for path in [base, *base.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        locked.chmod(0o000)
        (partly / "closed").chmod(0o000)
        result = subprocess.run(
            [sys.executable, "-c", UNREADABLE_SCRIPT, str(locked), str(partly)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        out = result.stdout
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"ERROR data.source.root={locked}: cannot read it (permission denied)" in out, out
        assert f"WARNING cannot read folder {partly / 'closed'} (Permission denied): skipped" in out, out
        assert "KEYS ['open/a/piece1.mid', 'open/b/piece0.mid']" in out, out
    finally:
        for path in (locked, partly / "closed"):
            path.chmod(0o755)
        shutil.rmtree(base)


# ----------------------------------------------------------------------------------- typed paths
def test_home_and_variables_are_expanded_in_every_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hydra.utils import instantiate

    from tests.helpers import compose_train

    home, data = tmp_path / "home", tmp_path / "data"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MUSELAB_DATA", str(data))
    write_midi_folder(home / "midi", n_good=4, bad=False)
    write_midi_folder(data / "midi", n_good=4, bad=False)

    assert FolderSource("~/midi").root == str(home / "midi")
    assert FolderSource("$MUSELAB_DATA/midi").root == str(data / "midi")
    assert LakhSource("~/lmd").root == str(home / "lmd") and JSBSource("$MUSELAB_DATA/jsb").root == str(
        data / "jsb"
    )
    assert BoulangerSource("$MUSELAB_DATA/JSB.mat").path == str(data / "JSB.mat")
    one_line_error(
        FolderSource("~/nowhere").check,
        f"data.source.root=~/nowhere (= {home / 'nowhere'}): no such directory",
    )

    dm = datamodule(FolderSource("~/midi"), tmp_path, cache_dir="$MUSELAB_DATA/cache")
    dm.setup()
    assert (
        dm.cache_dir == str(data / "cache")
        and len(list((data / "cache").glob("folder-*/manifest.json"))) == 1
    )
    assert sum(len(k) for k in dm.split_keys.values()) >= 4

    # As a user types them on the command line (Hydra passes both through unchanged).
    cfg = compose_train(
        ["data=folder", "data.source.root=$MUSELAB_DATA/midi", "paths.cache_dir=$MUSELAB_DATA/cache2"],
        output_dir=tmp_path,
    )
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.source.root == str(data / "midi") and dm.cache_dir == str(data / "cache2")


# ------------------------------------------------------------------------------------ odd names
def write_bytes_named(folder: Path, name: bytes, content: bytes) -> None:
    path = os.path.join(os.fsencode(folder), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(content)


def test_file_names_that_are_not_utf8_are_read_or_skipped_by_a_printable_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_midi_folder(tmp_path / "midi", n_good=4, bad=False)
    good = tmp_path / "good.mid"
    muspy.write_midi(good, random_music(np.random.default_rng(7)))
    write_bytes_named(root, b"bad\xff.mid", good.read_bytes())
    write_bytes_named(root, b"corrupt\xfe.mid", b"MThd\x00\x00\x00\x06garbage")
    abc = "X: 7\nT:Tune\nM:3/4\nL:1/4\nK:C\nc e g|f a c'|d g B|c3|]\n"
    write_bytes_named(root, b"dir\xfc/tune\xfd.abc", abc.encode())

    source = FolderSource(str(root))
    before = source.fingerprint()  # was: UnicodeEncodeError ... surrogates not allowed
    keys = [item.key for item in source.items()]
    assert {"bad\\xff.mid", "corrupt\\xfe.mid", "dir\\xfc/tune\\xfd.abc#0:X7"} <= set(keys)
    for key in keys:
        key.encode("utf-8")

    dm = datamodule(source, tmp_path)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    kept = {key for split in dm.split_keys.values() for key in split}
    assert {"bad\\xff.mid", "dir\\xfc/tune\\xfd.abc#0:X7"} <= kept  # read like any other file
    index = dm.corpus.keys.index("bad\\xff.mid")
    rep = dm.representation
    assert np.array_equal(dm.corpus.arrays[index], rep.encode(muspy.read_midi(good)))
    reasons = dict(dm.corpus.skipped)
    assert list(reasons) == ["corrupt\\xfe.mid"] and reasons["corrupt\\xfe.mid"].startswith("unreadable: ")
    summary = dm.data_summary()
    json.dumps(summary, ensure_ascii=False).encode("utf-8")  # a W&B summary and a log line can hold it
    assert summary["data/skipped_first"][0].startswith("corrupt\\xfe.mid (unreadable")
    assert "corrupt\\xfe.mid (unreadable" in caplog.text
    manifest = json.loads(
        next((tmp_path / "cache").glob("folder-*/manifest.json")).read_text(encoding="utf-8")
    )
    assert manifest["skipped_first"][0].startswith("corrupt\\xfe.mid")

    odd = os.path.join(os.fsencode(root), b"bad\xff.mid")
    os.utime(odd, ns=(os.stat(odd).st_atime_ns, os.stat(odd).st_mtime_ns + 1_000_000))
    assert source.fingerprint() != before


# ------------------------------------------------------------------------------------------- ABC
NO_TUNE_ABC = "T:No number\nM:4/4\nL:1/8\nK:C\nCDEF GABc|c8|]\n"
BROKEN_ABC = """X:3
T:Broken
M:4/4
L:1/8
K:C
"C"[CEG c2|

X:4
T:Fine
M:4/4
L:1/8
K:C
"C"CDEF GABc|"G"c8|]
"""


def test_abc_without_a_tune_or_with_a_syntax_error_is_skipped_as_an_abc_problem(tmp_path: Path) -> None:
    root = tmp_path / "abc"
    root.mkdir()
    (root / "notune.abc").write_text(NO_TUNE_ABC)
    (root / "broken.abc").write_text(BROKEN_ABC)
    rep = PianoRollRepresentation(n_tracks=2, pitch_low=36, pitch_high=96)
    for source in (FolderSource(str(root)), NottinghamSource(str(root))):
        assert sorted(i.key for i in source.items()) == ["broken.abc#0:X3", "broken.abc#1:X4", "notune.abc"]
        directory = build_cache(source, rep, tmp_path / "cache", n_jobs=1, progress=False, min_steps=1)
        corpus = load_cache(directory)
        assert corpus.keys == ["broken.abc#1:X4"]
        reasons = dict(corpus.skipped)
        assert reasons["notune.abc"] == "abc: no tune (no X: line)"
        assert reasons["broken.abc#0:X3"].startswith(
            "abc: syntax error in tune X:3: ValueError: substring not found"
        ), reasons
        manifest = json.loads((directory / "manifest.json").read_text())
        assert manifest["skipped_by_reason"] == {"abc": 2}


# -------------------------------------------------------------------------------------- no orphans
BUILD_SCRIPT = """
import sys
from datamodules.cache import build_cache
from datamodules.representations import PianoRollRepresentation
from datamodules.sources import FolderSource

build_cache(FolderSource(sys.argv[1]), PianoRollRepresentation(), sys.argv[2], n_jobs=2, progress=False,
            min_steps=1)
"""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text.rpartition(")")[2].split()[:2]
    return state, int(ppid)


def _children(pid: int) -> list[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [child for child in pids if (stat := _stat(child)) is not None and stat[1] == pid]


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")  # a zombie has ended; its reaper may be slow


def write_kill_test_folder(root: Path) -> Path:
    """400 real MIDI files, then 400 broken ones with long names: their skipped-file reports make the
    helper's messages large enough to fill a pipe that no one reads (the old hang at exit)."""
    rng = np.random.default_rng(3)
    for i in range(400):
        folder = root / "good" / f"{i % 8}"
        folder.mkdir(parents=True, exist_ok=True)
        muspy.write_midi(folder / f"piece{i:04d}.mid", random_music(rng, n_tracks=1, n_notes=12))
    junk = root / "junk"
    junk.mkdir()
    for i in range(400):
        (junk / f"broken-{i:04d}-{'x' * 120}.mid").write_bytes(
            b"MThd\x00\x00\x00\x06" + bytes([i % 256]) * 40
        )
    return root


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the helpers")
def test_helpers_end_when_their_parent_is_killed_and_the_resumed_cache_is_byte_identical(
    tmp_path: Path,
) -> None:
    root = write_kill_test_folder(tmp_path / "midi")
    for attempt in range(3):
        cache = tmp_path / f"killed-{attempt}"
        parent = subprocess.Popen(
            [sys.executable, "-c", BUILD_SCRIPT, str(root), str(cache)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        helpers: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and parent.poll() is None:
            helpers = _children(parent.pid)
            if helpers and list(cache.glob("*/shard-*.npz")):
                break
            time.sleep(0.002)
        assert parent.poll() is None and helpers, parent.stderr.read().decode()[-3000:]
        os.kill(parent.pid, signal.SIGKILL)  # kill -9 mid-build: no Python cleanup in the parent
        parent.wait()
        parent.stderr.close()
        (directory,) = cache.iterdir()
        if not (directory / "manifest.json").exists():
            break  # the kill landed mid-build (it always has; a finished build would prove nothing)
    else:
        pytest.fail("every build finished before it could be killed")

    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in helpers), f"orphaned helpers: {helpers}"
    shards = sorted(directory.glob("shard-*.npz"))
    n_shards = (800 + 31) // 32
    assert len(shards) < n_shards  # the helper stopped instead of building for no one
    # A helper stopped by SIGTERM removes its half-written shard; only the parent's own may remain.
    assert len(list(directory.glob(".shard-*.tmp"))) <= 1

    rep = PianoRollRepresentation()
    resumed = build_cache(FolderSource(str(root)), rep, cache, n_jobs=2, progress=False, min_steps=1)
    clean = build_cache(
        FolderSource(str(root)), rep, tmp_path / "clean", n_jobs=2, progress=False, min_steps=1
    )
    assert resumed == directory and clean.name == directory.name

    def content(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.npz"))}

    assert len(content(clean)) == n_shards
    assert content(resumed) == content(clean)
    assert (resumed / "manifest.json").read_text() == (clean / "manifest.json").read_text()


# ------------------------------------------------------------------------------------ split groups
def write_versions(root: Path) -> dict[str, list[str]]:
    """POP909-style songs with versions, melody/chords renderings of tunes, and single pieces.
    Returns group name -> keys."""
    rng = np.random.default_rng(5)
    groups: dict[str, list[str]] = {}

    def write(key: str, group: str) -> None:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        muspy.write_midi(root / key, random_music(rng, n_tracks=1, n_notes=8))
        groups.setdefault(group, []).append(key)

    for song in range(1, 13):
        name = f"{song:03d}"
        write(f"pop909/{name}/{name}.mid", name)
        for version in (1, 2):
            write(f"pop909/{name}/versions/{name}-v{version}.mid", name)
    for tune in range(1, 13):
        for part in ("melody", "chords"):
            write(f"nmd/{part}/jig_{tune}.mid", f"jig_{tune}")
    for single in range(1, 13):
        write(f"singles/solo_{single}.mid", f"solo_{single}")
    return groups


def test_versions_of_one_piece_land_in_one_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    groups = write_versions(tmp_path / "midi")
    source = FolderSource(str(tmp_path / "midi"))

    def splits(split_group: str) -> tuple[dict[str, str], MusicDataModule]:
        dm = datamodule(source, tmp_path, val_fraction=0.25, test_fraction=0.25, split_group=split_group)
        dm.setup()
        return {key: split for split, keys in dm.split_keys.items() for key in keys}, dm

    with caplog.at_level(logging.INFO):
        grouped, dm = splits("auto")
    assert len(grouped) == 72
    for keys in groups.values():
        assert len({grouped[k] for k in keys}) == 1, {k: grouped[k] for k in keys}
    assert dm.data_summary()["data/split_groups_merged"] == 24
    assert "Split groups (data.split_group=auto): 24 groups of versions, 60 pieces" in caplog.text
    assert len({grouped[keys[0]] for keys in groups.values()}) == 3  # the groups still spread

    ungrouped, dm = splits("none")
    assert dm.data_summary()["data/split_groups_merged"] == 0
    assert any(len({ungrouped[k] for k in keys}) > 1 for keys in groups.values())  # the leak, without
    singles = [keys[0] for name, keys in groups.items() if name.startswith("solo_")]
    assert {k: grouped[k] for k in singles} == {
        k: ungrouped[k] for k in singles
    }  # a piece alone keeps its split

    by_regex, dm = splits(r"^pop909/(\d+)/")
    assert dm.data_summary()["data/split_groups_merged"] == 12
    for name, keys in groups.items():
        if name.isdigit():
            assert len({by_regex[k] for k in keys}) == 1

    one_line_error(
        lambda: datamodule(source, tmp_path, split_group="(unclosed"),
        "data.split_group='(unclosed': must be auto, file, none or a regular expression",
    )


def test_official_splits_are_not_grouped_and_lakh_groups_by_song(tmp_path: Path) -> None:
    root = tmp_path / "jsb"
    rng = np.random.default_rng(2)
    for split in ("train", "test"):  # one file name in sibling folders: grouped by name, but official
        (root / split).mkdir(parents=True)
        muspy.write_midi(root / split / "12.mid", random_music(rng, n_tracks=4, n_notes=16))
    dm = datamodule(JSBSource(str(root)), tmp_path, bach_representation())
    dm.setup()
    assert dm.split_keys["train"] == ["train/12.mid"] and dm.split_keys["test"] == ["test/12.mid"]

    track = "A/B/C/TRAAAGR128F425B14B"
    matched = LakhSource(str(tmp_path), variant="matched")
    assert split_group_label(f"{track}/1d9d16a9.mid", "auto", matched) == track
    assert split_group_label(f"{track}/1d9d16a9.mid", "auto", LakhSource(str(tmp_path))) == "A/B/C/*/1d9d16a9"
    assert split_group_label("jigs.abc#2:X3", "file") == "jigs.abc"
    assert split_group_label("x/melody/jigs.abc#2:X3", "auto") == "x/*/jigs#2:X3"


# -------------------------------------------------------------------------------------- JSB forms
def test_jsb_reads_one_form_when_the_folder_holds_both(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from hydra.utils import instantiate

    from tests.helpers import compose_train

    root = write_jsb(tmp_path / "jsb")  # 8 voice-separated JSON chorales and one MIDI chorale
    with caplog.at_level(logging.INFO):
        items = JSBSource(str(root)).items()
    assert len(items) == 8 and {i.loader for i in items} == {"jsb_steps"}
    assert (
        "reading Jsb16thSeparated.json (JSON, 4 voices per step), 8 chorales; 1 other file(s)" in caplog.text
    )
    assert len(JSBSource(str(root), format="json").items()) == 8
    assert [i.key for i in JSBSource(str(root), format="midi").items()] == ["JSB Chorales/valid/12.mid"]

    dm = datamodule(JSBSource(str(root)), tmp_path, bach_representation())
    dm.setup()
    assert sum(len(keys) for keys in dm.split_keys.values()) == 8

    # Chord lists carry no voices: then the MIDI files are preferred, and the JSON is there on request.
    chords = tmp_path / "chords"
    shutil.copytree(root / "JSB Chorales", chords / "JSB Chorales")
    data = {"train": [[[60, 64, 67], [62, 65]]] * 3, "valid": [[[60, 64, 67, 72]]], "test": [[[59, 62]]]}
    (chords / "jsb-chorales-16th.json").write_text(json.dumps(data))
    assert {i.loader for i in JSBSource(str(chords)).items()} == {"jsb_midi"}
    assert len(JSBSource(str(chords), format="json").items()) == 5

    only_json = tmp_path / "only-json"
    only_json.mkdir()
    shutil.copy(root / "Jsb16thSeparated.json", only_json)
    one_line_error(
        JSBSource(str(only_json), format="midi").items,
        f"data.source.format=midi: no MIDI files in data.source.root={only_json}",
    )
    one_line_error(lambda: JSBSource(str(root), format="xml"), "data.source.format=xml: must be one of auto")
    assert JSBSource(str(root), format="midi").fingerprint() != JSBSource(str(root)).fingerprint()

    cfg = compose_train(
        ["data=jsb", f"data.source.root={root}", "data.source.format=midi"], output_dir=tmp_path
    )
    assert instantiate(cfg.data, _convert_="all").source.format == "midi"


# ------------------------------------------------------------------------------- numeric settings
@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("window", -5, "data.window=-5: must be a positive number of steps or null"),
        ("window", 0, "data.window=0: must be a positive number of steps or null"),
        ("window", 2.5, "data.window=2.5: must be a positive number of steps or null"),
        ("stride", 0, "data.stride=0: must be a positive number of steps or null"),
        ("batch_size", 0, "data.batch_size=0: must be a positive number"),
        ("num_workers", -1, "data.num_workers=-1: must be 0 or more"),
        ("min_steps", -1, "data.min_steps=-1: must be a whole number of steps >= 0"),
        ("val_fraction", 1.5, "data.val_fraction=1.5: must be a fraction, at least 0 and below 1"),
        ("test_fraction", -0.1, "data.test_fraction=-0.1: must be a fraction, at least 0 and below 1"),
        ("transpose", -2, "data.transpose=-2: must be a whole number of semitones >= 0"),
        ("transpose", True, "data.transpose=True: must be a whole number of semitones >= 0"),
        ("n_jobs", 0, "data.n_jobs=0: must be a positive number of processes or null (all cores)"),
    ],
)
def test_a_bad_numeric_setting_names_its_key(setting: str, value, message: str, tmp_path: Path) -> None:
    one_line_error(lambda: datamodule(FolderSource("/nowhere"), tmp_path, **{setting: value}), message)


def test_fractions_must_leave_pieces_to_train_on_and_good_edges_pass(tmp_path: Path) -> None:
    one_line_error(
        lambda: datamodule(FolderSource("/nowhere"), tmp_path, val_fraction=0.5, test_fraction=0.5),
        "data.val_fraction=0.5 + data.test_fraction=0.5: must add up to less than 1",
    )
    dm = datamodule(FolderSource("/nowhere"), tmp_path, window=None, stride=None, n_jobs=None, transpose=0)
    assert dm.stride is None and dm.window is None


def test_a_bad_setting_stops_hydra_instantiation_with_the_key(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from tests.helpers import compose_train

    cfg = compose_train(["data.window=-5"], output_dir=tmp_path)
    with pytest.raises(
        Exception, match=re.escape("data.window=-5: must be a positive number of steps or null")
    ):
        instantiate(cfg.data, _convert_="all")


# ------------------------------------------------------------------------------------------ make
FAKE_PYTHON = """#!/bin/sh
exec "{python}" -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@"
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_passes_overrides_to_hydra_as_typed(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    overrides = [
        "model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1}",
        "data.source.root=$HOME/my midi",
        "hydra.run.dir=it's",
        "tags=[a,b]",
        "data.window=${oc.env:WINDOW}",
        "data.source.extensions=*.mid",
        "paths.output_dir=~/runs",
        "paths.cache_dir=a\\b",
    ]
    # A parent make's command-line variables would reach this one through MAKEFLAGS.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def make(*args: str) -> str:
        result = subprocess.run(["make", "-s", *args], cwd=REPO, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    # -o: take the install as done (this checkout's .venv is not to be reinstalled by a test).
    argv = json.loads(make("-o", ".venv/.installed", "train", f"PY={fake}", "DATA=folder", *overrides))
    assert argv == ["-m", "muselab.train", "data=folder", *overrides]
    # MODEL and DATA are passed on only when given: the defaults live in conf/ alone.
    plain = json.loads(make("-o", ".venv/.installed", "train", f"PY={fake}"))
    assert plain == ["-m", "muselab.train"]
    primed = json.loads(
        make("-o", ".venv/.installed", "sample", f"PY={fake}", "CKPT=a b.ckpt", "PRIMER=60,62", "top_k=3")
    )
    assert primed == ["-m", "muselab.sample", "ckpt=a b.ckpt", "prompt=60,62", "top_k=3"]

    # -n -B: print what a fresh install would run, without running it.
    index = "https://download.pytorch.org/whl/cpu"
    plan = make("-n", "-B", "install", f"TORCH_INDEX={index}")
    assert f"pip install -q torch==2.13.0 --index-url '{index}'" in plan
    default = make("-n", "-B", "install")  # pip's own configuration: here a local CPU wheel
    assert re.search(r"pip install -q torch==2\.13\.0 *\n", default) and "--index-url" not in default
