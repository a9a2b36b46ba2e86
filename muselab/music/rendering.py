"""Hear and see a piece: `render_audio` (MIDI -> WAV) and `pianoroll_image` (MIDI -> PNG).

Audio backends (``backend="auto"`` picks the first that works, once per process):

- ``"fluidsynth"``: Debian's ``fluidsynth`` binary with a General MIDI soundfont
  (``/usr/share/sounds/sf2/FluidR3_GM.sf2`` from ``fluid-soundfont-gm``; ``$MUSELAB_SOUNDFONT``
  overrides it);
- ``"numpy"``: a small additive synthesizer (a few harmonics under an envelope), always available
  and always in tune: the automatic fallback when fluidsynth is missing;
- ``"symusic"`` (only when asked for): symusic 0.5.9's built-in synthesizer with a local soundfont
  (the system one, or the ``TimGM6mb.sf2`` inside the ``pretty_midi`` wheel; symusic's own default
  is a download). It renders offline, but out of tune: with FluidR3 a piano A4 (440 Hz) sounds at
  784 Hz and C4 at 294 Hz (``tests/test_callbacks.py`` measures it), so it is never chosen
  automatically.

Whatever the backend, the WAV written is 16-bit mono at ``sample_rate``, peak-normalised, and at least
a second long, so silent music still gives a valid, playable file.

Piano-roll images look the same for every model: one row per track, pitch names on the y axis, time
in bars on the x axis.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import muspy
import numpy as np
from scipy.io import wavfile

log = logging.getLogger(__name__)

BACKENDS = ("fluidsynth", "numpy", "symusic")
FLUIDSYNTH_BIN = "fluidsynth"
SYSTEM_SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
)
# Resolution (steps per beat) piano-rolls are drawn at: exact for 16ths and triplets, and small
# enough that a 10080-ticks-per-beat chorale does not become a huge image.
IMAGE_RESOLUTION = 12
MIN_SECONDS = 1.0
PEAK = 0.9
SILENCE_PEAK = 1e-4  # in full-scale units: below this a render is silence
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

_auto_backend: str | None = None
_warned_no_fluidsynth = False


# ------------------------------------------------------------------------------------------ audio
def system_soundfont() -> Path | None:
    """The General MIDI soundfont installed on the system (``$MUSELAB_SOUNDFONT`` first), if any."""
    candidates = [os.environ.get("MUSELAB_SOUNDFONT", ""), *SYSTEM_SOUNDFONTS]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def local_soundfont() -> Path | None:
    """A soundfont that needs no download: the system one, pretty_midi's, or symusic's cached one."""
    found = system_soundfont()
    if found is not None:
        return found
    spec = importlib.util.find_spec("pretty_midi")  # found without importing it (slow to import)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "TimGM6mb.sf2"
        if path.is_file():
            return path
    try:
        from symusic import BuiltInSF3

        cached = Path(BuiltInSF3.MuseScoreGeneral().path(download=False))
        return cached if cached.is_file() else None
    except Exception:  # an older/newer symusic without this API: just no cached soundfont
        return None


def fluidsynth_available() -> bool:
    """True when the ``fluidsynth`` binary and a system GM soundfont are both installed."""
    return shutil.which(FLUIDSYNTH_BIN) is not None and system_soundfont() is not None


def _symusic_available() -> bool:
    if local_soundfont() is None:
        return False
    try:
        import symusic  # noqa: F401
    except ImportError:
        return False
    return True


def _warn_no_fluidsynth(reason: str) -> None:
    global _warned_no_fluidsynth
    if not _warned_no_fluidsynth:
        _warned_no_fluidsynth = True
        warnings.warn(
            f"{reason}: rendering audio with MuseLab's numpy synthesizer. For real instruments: "
            "apt-get install -y fluidsynth fluid-soundfont-gm",
            stacklevel=3,
        )


def resolve_backend(backend: str = "auto") -> str:
    """The backend ``render_audio`` uses for ``backend``; ``"auto"`` is chosen once and logged once.

    An explicitly requested backend that is unavailable falls back to ``numpy`` too (with the same
    single warning), because a missing synthesizer must never fail a training run.
    """
    global _auto_backend
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, not {backend!r}")
    if backend == "numpy":
        return backend
    if backend == "symusic":
        if _symusic_available():
            return backend
        _warn_no_fluidsynth("symusic has no local soundfont")
        return "numpy"
    if backend == "fluidsynth":
        if fluidsynth_available():
            return backend
        _warn_no_fluidsynth("fluidsynth or its GM soundfont is not installed")
        return "numpy"
    if _auto_backend is None:
        if fluidsynth_available():
            _auto_backend = "fluidsynth"
        else:
            _warn_no_fluidsynth("fluidsynth or its GM soundfont is not installed")
            _auto_backend = "numpy"
        soundfont = system_soundfont() if _auto_backend == "fluidsynth" else "-"
        log.info("Audio backend: %s (soundfont: %s)", _auto_backend, soundfont)
    return _auto_backend


def reset_backend() -> None:
    """Forget the automatic choice and the warning (tests; after installing fluidsynth)."""
    global _auto_backend, _warned_no_fluidsynth
    _auto_backend = None
    _warned_no_fluidsynth = False


def _has_notes(music: muspy.Music) -> bool:
    return any(len(t.notes) for t in music.tracks)


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Mono 16-bit WAV, peak-normalised, padded with silence to at least `MIN_SECONDS`, written atomically."""
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim > 1:  # (channels, samples) or (samples, channels): average the shorter axis
        audio = audio.mean(axis=int(np.argmin(audio.shape)))
    audio = np.nan_to_num(audio)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    # Never blow the noise floor of a (near-)silent render up to full scale.
    audio = audio * (PEAK / peak) if peak > SILENCE_PEAK else np.zeros_like(audio)
    minimum = int(MIN_SECONDS * sample_rate)
    if len(audio) < minimum:
        audio = np.pad(audio, (0, minimum - len(audio)))
    tmp = path.with_name(f".{path.name}.tmp")
    wavfile.write(tmp, sample_rate, (audio * 32767).astype(np.int16))
    os.replace(tmp, path)


def _render_fluidsynth(midi_path: Path, sample_rate: int) -> np.ndarray:
    soundfont = system_soundfont()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        # Dynamic sample loading reads only the instruments used: ~20% faster on the 148 MB FluidR3.
        cmd = [
            shutil.which(FLUIDSYNTH_BIN) or FLUIDSYNTH_BIN,
            "-ni",
            "-q",
            "-o",
            "synth.dynamic-sample-loading=1",
            "-g",
            "0.6",
            "-r",
            str(sample_rate),
            "-F",
            str(out),
            str(soundfont),
            str(midi_path),
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        if not out.is_file() or out.stat().st_size <= 44:
            return np.zeros(0)
        _, audio = wavfile.read(out)
    if np.issubdtype(audio.dtype, np.integer):  # to full-scale floats, like the other backends
        return audio.astype(np.float64) / (float(np.iinfo(audio.dtype).max) + 1.0)
    return audio.astype(np.float64)


def _render_symusic(midi_path: Path, sample_rate: int) -> np.ndarray:
    import symusic

    score = symusic.Score(str(midi_path))
    if not any(len(t.notes) for t in score.tracks):
        return np.zeros(0)  # symusic raises "No valid tracks" on silence
    synth = symusic.Synthesizer(str(local_soundfont()), sample_rate, 0)
    return np.asarray(synth.render(score, stereo=False), dtype=np.float64)


def _render_numpy(music: muspy.Music, sample_rate: int) -> np.ndarray:
    """Additive synthesis: each note is a few harmonics under an attack/decay/release envelope."""
    seconds = _note_seconds(music)
    if not len(seconds):
        return np.zeros(0)
    total = int((seconds[:, 1].max() + 0.3) * sample_rate) + 1
    audio = np.zeros(total)
    harmonics = np.array([1.0, 0.5, 0.25, 0.125])
    for start, end, pitch, velocity in seconds:
        begin = int(start * sample_rate)
        length = max(int((end - start + 0.2) * sample_rate), 1)  # 0.2 s release tail
        t = np.arange(length) / sample_rate
        freq = 440.0 * 2 ** ((pitch - 69) / 12)
        tone = (harmonics[:, None] * np.sin(2 * np.pi * freq * np.arange(1, 5)[:, None] * t)).sum(axis=0)
        held = end - start
        envelope = np.minimum(t / 0.01, 1.0) * np.exp(-1.5 * t)
        envelope *= np.clip((held + 0.2 - t) / 0.2, 0.0, 1.0)  # release after the note ends
        stop = min(begin + length, total)
        audio[begin:stop] += (velocity / 127.0) * (tone * envelope)[: stop - begin]
    return audio


def _note_seconds(music: muspy.Music) -> np.ndarray:
    """(n, 4) array of start and end in seconds, pitch and velocity (first tempo, or 120 qpm)."""
    qpm = music.tempos[0].qpm if music.tempos else 120.0
    seconds_per_tick = 60.0 / (qpm * (music.resolution or muspy.DEFAULT_RESOLUTION))
    rows = [
        (n.time * seconds_per_tick, n.end * seconds_per_tick, n.pitch, n.velocity or 64)
        for track in music.tracks
        if not track.is_drum
        for n in track.notes
    ]
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def render_audio(
    music_or_midi_path: muspy.Music | str | Path,
    wav_path: str | Path,
    sample_rate: int = 22050,
    backend: str = "auto",
) -> str:
    """Render a `muspy.Music` or a MIDI file to a mono 16-bit WAV; returns the backend used.

    A backend that fails at render time (a broken soundfont, a crashing binary) falls back to the
    numpy synthesizer with a warning rather than raising: audio is a diagnostic, never a reason to
    stop a run.
    """
    wav_path = Path(wav_path)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    chosen = resolve_backend(backend)
    if isinstance(music_or_midi_path, muspy.Music):
        music, midi_path = music_or_midi_path, None
    else:
        midi_path = Path(music_or_midi_path)
        music = muspy.read_midi(midi_path)
    if not _has_notes(music):  # silence: no synthesizer needed (and symusic raises on it)
        _write_wav(wav_path, np.zeros(0), sample_rate)
        return chosen
    with tempfile.TemporaryDirectory() as tmp:
        if midi_path is None and chosen != "numpy":
            midi_path = Path(tmp) / "piece.mid"
            muspy.write_midi(midi_path, music)
        try:
            if chosen == "fluidsynth":
                audio = _render_fluidsynth(midi_path, sample_rate)
            elif chosen == "symusic":
                audio = _render_symusic(midi_path, sample_rate)
            else:
                audio = _render_numpy(music, sample_rate)
        except Exception as err:  # keep the run alive: fall back to the dependency-free synth
            warnings.warn(
                f"audio backend {chosen} failed ({err!r}); using the numpy synthesizer", stacklevel=2
            )
            audio, chosen = _render_numpy(music, sample_rate), "numpy"
    _write_wav(wav_path, audio, sample_rate)
    return chosen


def read_wav_mono(wav_path: str | Path) -> tuple[np.ndarray, int]:
    """A WAV file as float32 mono samples in [-1, 1], and its sample rate (for TensorBoard)."""
    sample_rate, raw = wavfile.read(wav_path)
    audio = raw.astype(np.float32)
    if np.issubdtype(raw.dtype, np.integer):
        audio /= float(np.iinfo(raw.dtype).max) + 1.0
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    return audio, int(sample_rate)


# ------------------------------------------------------------------------------------------ image
def pitch_name(pitch: int) -> str:
    """MIDI pitch to its name with octave, middle C (60) being ``C4``."""
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


def beats_per_bar_of(music: muspy.Music, default: int = 4) -> int:
    """Beats (quarter notes) per bar from the first time signature, else ``default``."""
    if music.time_signatures:
        ts = music.time_signatures[0]
        if ts.numerator and ts.denominator:
            return max(1, round(ts.numerator * 4 / ts.denominator))
    return default


def _rescaled_tracks(music: muspy.Music) -> list[tuple[str, np.ndarray]]:
    """Each track's name and (n, 4) onset, end, pitch, velocity at `IMAGE_RESOLUTION` steps per beat.

    This is ``adjust_resolution`` on a copy, done on arrays: muspy's ``deepcopy`` goes object by
    object and is slow on the dense output of an untrained model. Rounding is muspy's (nearest), and
    a note never shrinks below one step, so every note stays visible.
    """
    factor = IMAGE_RESOLUTION / float(music.resolution or muspy.DEFAULT_RESOLUTION)
    out = []
    for track in music.tracks:
        raw = np.array(
            [(n.time, n.time + n.duration, n.pitch, n.velocity or 64) for n in track.notes], dtype=np.float64
        ).reshape(-1, 4)
        onset = np.rint(raw[:, 0] * factor).astype(np.int64)
        end = np.maximum(np.rint(raw[:, 1] * factor).astype(np.int64), onset + 1)
        notes = np.stack([onset, end, raw[:, 2].astype(np.int64), raw[:, 3].astype(np.int64)], axis=1)
        notes = notes[(notes[:, 2] >= 0) & (notes[:, 2] <= 127) & (notes[:, 0] >= 0)]
        out.append((track.name or f"program {track.program}", notes.reshape(-1, 4)))
    return out or [("(no tracks)", np.zeros((0, 4), dtype=np.int64))]


def _roll(notes: np.ndarray, low: int, n_pitches: int, length: int) -> np.ndarray:
    """(pitches, steps) image of (n, 4) onset, end, pitch, velocity rows, velocity / 127 where a note sounds.

    Filled in one vectorised assignment (an untrained model's sample can hold thousands of notes).
    """
    roll = np.zeros(n_pitches * length, dtype=np.float32)
    if len(notes):
        duration = notes[:, 1] - notes[:, 0]
        first = np.repeat((notes[:, 2] - low) * length + notes[:, 0], duration)
        offset = np.arange(int(duration.sum())) - np.repeat(np.cumsum(duration) - duration, duration)
        roll[first + offset] = np.repeat(notes[:, 3] / 127.0, duration)
    return roll.reshape(n_pitches, length)


def pianoroll_image(
    music: muspy.Music, png_path: str | Path, title: str | None = None, beats_per_bar: int | None = None
) -> Path:
    """Draw ``music`` as a piano-roll PNG: one row per track, pitch names on y, bars on x.

    The notes are copied at `IMAGE_RESOLUTION` first (the caller's object is untouched), so a
    10080-ticks-per-beat chorale and a 4-steps-per-beat sample give images of the same scale.
    Silent music and empty track lists still give a valid image (an empty grid, labelled).
    """
    # A bare Figure renders through Agg whatever pyplot's backend is, and holds no global state.
    from matplotlib.figure import Figure

    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    beats = beats_per_bar or beats_per_bar_of(music)
    tracks = _rescaled_tracks(music)
    steps_per_bar = IMAGE_RESOLUTION * beats
    pitches = np.concatenate([notes[:, 2] for _, notes in tracks])
    low, high = (int(pitches.min()), int(pitches.max())) if len(pitches) else (60, 60)
    # At least two octaves around the notes, so single notes and silence still have a readable axis.
    centre = (low + high) // 2
    low, high = max(0, min(low - 2, centre - 12)), min(127, max(high + 2, centre + 12))
    ends = np.concatenate([notes[:, 1] for _, notes in tracks])
    length = max(int(ends.max()) if len(ends) else 0, steps_per_bar)
    n_bars = -(-length // steps_per_bar)
    length = n_bars * steps_per_bar

    # Fixed margins in inches rather than tight_layout, which costs as much as drawing the figure.
    height = 0.8 + 1.6 * len(tracks)
    fig = Figure(figsize=(10, height), dpi=80)
    fig.subplots_adjust(left=0.08, right=0.985, top=1 - 0.3 / height, bottom=0.5 / height, hspace=0.12)
    axes = fig.subplots(len(tracks), 1, sharex=True, squeeze=False)
    for ax, (name, notes) in zip(axes[:, 0], tracks):
        ax.imshow(
            _roll(notes, low, high - low + 1, length),
            aspect="auto",
            origin="lower",
            cmap="Blues",
            vmin=0.0,
            vmax=1.0,
            interpolation="nearest",
            extent=(0, n_bars, low - 0.5, high + 0.5),
        )
        c_pitches = [p for p in range(low, high + 1) if p % 12 == 0] or [low]
        ax.set_yticks(c_pitches)
        ax.set_yticklabels([pitch_name(p) for p in c_pitches], fontsize=7)
        ax.set_ylabel(name, fontsize=8)
        ax.grid(axis="x", color="0.85", linewidth=0.5)
        ax.set_xlim(0, n_bars)
    step = max(1, n_bars // 16)
    axes[-1, 0].set_xticks(np.arange(0, n_bars + 1, step))
    axes[-1, 0].set_xlabel(f"bar ({beats}/4)", fontsize=8)
    axes[-1, 0].tick_params(axis="x", labelsize=7)
    if title:
        axes[0, 0].set_title(title, fontsize=9)
    tmp = png_path.with_name(f".{png_path.stem}.tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, png_path)
    return png_path
