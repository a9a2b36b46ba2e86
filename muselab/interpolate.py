"""Interpolate between two pieces in a latent model's space (``make interpolate``).

``python -m muselab.interpolate ckpt=PATH a=a.mid b=b.mid steps=8 out=dir [mode=lerp]``; arguments
and defaults in ``conf/interpolate.yaml``, read as `make sample` reads its own (`muselab.cli`). The
model encodes A and B (its ``encode(musics) -> z``), ``steps`` codes are taken from A's to B's,
spherically by default, and each is decoded (``decode(z) -> musics``). Written to ``out``:

- ``step_00.mid`` .. ``step_NN.mid``: one piece per step (step 0 is A's reconstruction);
- ``interpolation.mid``: the steps one after the other, and ``interpolation.png``, its piano-roll
  (the whole path in one image); ``interpolation.wav`` with ``audio=true``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import lightning as L
import muspy

from lightning_modules.base import load_model
from lightning_modules.musicvae import interpolate_latents
from muselab.cli import compose_command
from muselab.errors import UserError, report_user_errors
from muselab.music.evaluation import n_notes, write_midi
from muselab.music.rendering import pianoroll_image, render_audio
from muselab.primer import load_primer

log = logging.getLogger("muselab.interpolate")


def concatenate(musics: list[muspy.Music]) -> muspy.Music:
    """The pieces one after the other, track by track (they share a resolution and tracks)."""
    first = musics[0]
    length = max(int(m.get_end_time()) for m in musics)
    bar = first.resolution * 4
    total = length * len(musics)
    out = muspy.Music(
        resolution=first.resolution,
        tempos=list(first.tempos),
        time_signatures=list(first.time_signatures),
        barlines=[muspy.Barline(t) for t in [*range(0, total, bar), total]],
    )
    for index, track in enumerate(first.tracks):
        notes = [
            muspy.Note(n.time + k * length, n.pitch, n.duration, n.velocity)
            for k, music in enumerate(musics)
            for n in music.tracks[index].notes
        ]
        out.tracks.append(
            muspy.Track(program=track.program, is_drum=track.is_drum, name=track.name, notes=notes)
        )
    return out


def _read(key: str, spec: str) -> muspy.Music:
    """A piece given as a file or as melody events, or an error naming the argument."""
    try:
        return load_primer(spec)
    except UserError as err:
        raise UserError(f"{key}={spec}: {str(err).removeprefix(f'primer {spec!r}: ')}") from None


def interpolate(
    ckpt: str,
    a: str,
    b: str,
    steps: int = 8,
    out: str = "interpolation",
    mode: str = "slerp",
    temperature: float = 0.0,
    seed: int = 0,
    audio: bool = True,
    audio_backend: str = "auto",
) -> dict[str, Path | list[Path]]:
    """Encode ``a`` and ``b``, decode ``steps`` codes between them and write the files (see the module
    docstring). Returns the paths: ``steps`` (one MIDI per step), ``midi``, ``png`` and ``wav``."""
    L.seed_everything(seed, verbose=False)
    model = load_model(ckpt)
    if not callable(getattr(model, "encode", None)) or not callable(getattr(model, "decode", None)):
        raise UserError(
            f"{ckpt}: a {type(model).__name__} has no latent space to interpolate in (MusicVAE has)"
        )
    z = model.encode([_read("a", a), _read("b", b)])
    musics = model.decode(interpolate_latents(z[0], z[1], int(steps), mode), temperature=temperature)
    out_dir = Path(out)
    step_files = write_midi(musics, out_dir, prefix="step")
    whole = concatenate(musics)
    midi = out_dir / "interpolation.mid"
    muspy.write_midi(midi, whole)
    title = f"{Path(str(a)).name} -> {Path(str(b)).name}: {steps} steps ({mode})"
    png = pianoroll_image(whole, out_dir / "interpolation.png", title=title)
    wav = None
    if audio:
        wav = out_dir / "interpolation.wav"
        render_audio(whole, wav, backend=audio_backend)
    for path, music in zip(step_files, musics):
        log.info("%s: %d notes", path, n_notes(music))
    return {"steps": step_files, "midi": midi, "png": png, "wav": wav}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with report_user_errors("muselab.interpolate"):
        cfg = compose_command("interpolate", sys.argv[1:] if argv is None else argv, options_key=None)
        files = interpolate(**dict(cfg.items()))
    print(
        f"wrote {len(files['steps'])} steps and the whole path ({files['midi'].name}, {files['png'].name}) to {cfg.out}"
    )


if __name__ == "__main__":
    main()
