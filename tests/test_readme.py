"""The README's `make` examples run as written.

Every ``make ...`` line in the README's ``bash`` blocks is run through the real Makefile, on real
files written here: the placeholders a reader replaces (``/path/to/abc``, ``~/my_midi``,
``<run>``, ``tune.mid``) are replaced by them, and each training run is cut short and written to a
temporary folder (``trainer.max_epochs=1`` on a few batches; ``data.source.limit`` where the source
has one), which is all that is added. A command that needs a download or a long benchmark is listed
in `NOT_RUN` with the reason, and is checked with ``make -n`` instead (the target exists and the
arguments parse).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import muspy
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# What a command needs that no test can give it, by a substring of the command.
NOT_RUN = {
    "make test": "the test suite itself",
    "make bench": "benchmarks take minutes to hours (their commands are in docs/benchmarks.md)",
    "make sweep": "a sweep runs many trainings (tests/test_sweep.py runs a 2-trial one)",
    "make install": "re-installing the environment",
    "DATA=lakh": "needs the Lakh MIDI Dataset",
    "DATA=maestro": "needs MAESTRO",
    "DATA=jsb": "needs the JSB chorales files",
    "DATA=boulanger": "needs the Boulanger .mat files",
    "experiment=poly": "needs the Boulanger .mat files",
    "trainer=gpu": "needs a GPU",
    "trainer=ddp ": "needs GPUs",
    "trainer=fsdp": "needs GPUs",
    "trainer=multinode": "needs a cluster",
    "logger.wandb.offline=false": "needs a W&B account",
    "data.source.download=true": "downloads a dataset",
    "TORCH_INDEX=": "re-installing torch",
}
SHORT_RUN = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "+trainer.max_steps=2",
    "test=false",
    "n_samples=1",
    "logger=none",
    "callbacks.sample_music=null",
    "torch_threads=1",
]


def readme_commands() -> list[str]:
    """Every ``make`` command in the README's bash blocks, comments and line continuations removed."""
    commands, in_bash = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            in_bash = line.strip() in ("```bash", "```sh")
            continue
        if in_bash and line.strip().startswith("make "):
            commands.append(line.split(" #", 1)[0].strip())
    return list(dict.fromkeys(commands))


def write_midi_files(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(8):
        music = muspy.Music(resolution=4, tempos=[muspy.Tempo(0, 120.0)])
        for name, program, low, is_drum in (
            ("Melody", 0, 64, False),
            ("Bass", 33, 36, False),
            ("Drums", 0, 36, True),
        ):
            # 20 bars: long enough for the 16-bar models (musicvae_trio keeps pieces of 16 bars and more)
            notes = [muspy.Note(2 * j, int(low + rng.integers(0, 12)), 2, 80) for j in range(160)]
            music.tracks.append(muspy.Track(program=program, is_drum=is_drum, name=name, notes=notes))
        muspy.write_midi(folder / f"song{i}.mid", music)


ABC = """X:1
T:Test jig
M:6/8
L:1/8
K:G
"G"GAB c2d|"C"e2f g2e|"D"d2B A2G|"G"G3 G3:|
X:2
T:Test reel
M:4/4
L:1/8
K:D
"D"d2fd A2fd|"G"B2dB G2BG|"A"A2cA E2cA|"D"d2d2 d4:|
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files the README's placeholders stand for."""
    root = tmp_path_factory.mktemp("readme")
    home = root / "home"
    write_midi_files(home / "my_midi")
    write_midi_files(home / "my midi")  # the README shows how a path with a space is quoted
    write_midi_files(home / "midi")
    (root / "abc").mkdir()
    for i in range(3):
        (root / "abc" / f"tunes{i}.abc").write_text(ABC)
    write_midi_files(root / "files")
    return {"root": root, "home": home, "abc": root / "abc", "files": root / "files"}


def substitute(command: str, world: dict[str, Path], checkpoints: dict[str, str]) -> str | None:
    """The command with its placeholders replaced; None when a checkpoint it needs does not exist."""
    files = world["files"]
    for placeholder in ("/path/to/nottingham_abc", "/path/to/abc", "/data/nottingham_abc"):
        command = command.replace(placeholder, str(world["abc"]))
    for name in ("tune.mid", "song.mid", "a.mid", "b.mid", "tune.abc"):
        command = command.replace(name, str(files / ("song1.mid" if name == "b.mid" else "song0.mid")))
    model_ckpt = re.search(r"(CKPT=|ckpt_path=)(\S*<run>\S*|\.\.\.\S*)", command)
    if model_ckpt:
        run = re.search(r"outputs/([a-z0-9_]+?)-([a-z0-9_]+)/", model_ckpt.group(2))
        # the run of that model on that data where the README trained one, else that model's first
        key = next(
            (k for k in (run and f"{run.group(1)}-{run.group(2)}", run and run.group(1)) if k in checkpoints),
            None,
        )
        key = key if run else next(iter(checkpoints), None)
        if key not in checkpoints:
            return None
        command = command.replace(model_ckpt.group(0), model_ckpt.group(1) + checkpoints[key])
    return command


def default_data(model: str) -> str:
    """The data a model config trains on when DATA is not given."""
    text = (ROOT / "conf" / "model" / f"{model}.yaml").read_text()
    found = re.search(r"override /data:\s*(\w+)", text)
    return found.group(1) if found else "bach"


@pytest.mark.slow
def test_every_readme_make_command_runs_as_written(world: dict[str, Path], tmp_path: Path) -> None:
    commands = readme_commands()
    assert len(commands) > 10
    env = {**os.environ, "HOME": str(world["home"]), "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    env = {k: v for k, v in env.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    cache = tmp_path / "cache"
    checkpoints: dict[str, str] = {}
    ran, waiting = [], list(commands)
    # Train commands first, so that the sample/evaluate examples after them have checkpoints.
    waiting.sort(key=lambda c: not c.startswith("make train"))
    for i, original in enumerate(waiting):
        reason = next((why for needle, why in NOT_RUN.items() if needle in original + " "), None)
        words = shlex.split(original)
        if reason:
            dry = subprocess.run(
                [*words[:1], "-n", *words[1:]], cwd=ROOT, env=env, capture_output=True, text=True
            )
            assert dry.returncode == 0, f"{original}: make -n failed\n{dry.stderr[-1500:]}"
            continue
        command = substitute(original, world, checkpoints)
        assert command is not None, f"{original}: no checkpoint for it (train its model in the README first)"
        words = shlex.split(command)
        if words[1] == "train":
            run_dir = tmp_path / f"run{i}"
            words += [*SHORT_RUN, f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}"]
            resumed = any(w.startswith("ckpt_path=") for w in words)
            if resumed:  # one more epoch (two more steps) after the checkpoint's
                words = [w for w in words if not w.startswith(("trainer.max_epochs=", "+trainer.max_steps="))]
                words += ["trainer.max_epochs=2", "+trainer.max_steps=4"]
            model = next((w.split("=", 1)[1] for w in words if w.startswith("MODEL=")), "pianoroll_rnn")
            data = next((w.split("=", 1)[1] for w in words if w.startswith("DATA=")), default_data(model))
            if data in ("bach", "essen") and "data.source.limit" not in command:
                words.append("data.source.limit=24")  # the music21 corpus sources take a limit
        elif words[1] == "compare":  # the runs the README's train commands just made, the page beside
            words = [w for w in words if not w.startswith(("RUNS=", "OUT="))]
            words += [f"RUNS={tmp_path}", f"OUT={tmp_path / f'page{i}'}"]
        elif words[1] in ("sample", "evaluate", "interpolate"):
            # an OUT the README names (relative to the clone) goes to tmp too, so the test leaves no files
            words = [w for w in words if not w.startswith("OUT=")]
            words += [f"OUT={tmp_path / f'out{i}'}"] if words[1] != "evaluate" else []
        result = subprocess.run(
            ["make", "-o", ".venv/.installed", *words[1:]],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, (
            f"{original}\n  ran as: {' '.join(words)}\n{(result.stdout + result.stderr)[-3000:]}"
        )
        ran.append(original)
        if words[1] == "train":
            last = tmp_path / f"run{i}" / "checkpoints" / "last.ckpt"
            assert last.is_file(), (
                f"{original}: no checkpoint written\n{' '.join(words)}\n{result.stderr[-2000:]}"
            )
            if resumed:
                assert "Restored all states from the checkpoint" in result.stderr, (
                    f"{original}: did not resume"
                )
            checkpoints.setdefault(model, str(last))
            checkpoints.setdefault(f"{model}-{data}", str(last))
    assert len(ran) >= len(commands) // 2, f"only {len(ran)} of {len(commands)} README commands ran"
