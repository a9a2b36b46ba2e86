"""Evaluate a checkpoint: ``python -m muselab.evaluate ckpt=PATH n=16`` (or ``make evaluate``).

1. loads the model with `lightning_modules.base.load_model` (any MuseLab model);
2. rebuilds the datamodule from the run's saved Hydra config (``<run>/.hydra/config.yaml`` beside
   ``checkpoints/``; ``${hydra:...}`` values come from ``<run>/.hydra/hydra.yaml``); a checkpoint
   whose data layout differs from the run's is an error that names the layout it needs;
3. runs ``Trainer.test``: ``test/loss`` is the model's loss on the test split (nats per step or
   token; also given in bits);
4. generates ``n`` pieces (with any sampling options) and measures them, as decoded music, against
   real test windows of as many bars (`muselab.music.MusicReference`): music metrics (``sample/``
   vs ``data/``), their distribution overlap (``overfit/overlap_<metric>``) and memorisation of the
   training set (``overfit/memorization``; ``data/memorization`` is the same measure on the real
   test windows, the baseline to read it against);
5. writes ``evaluation.json`` and ``evaluation.md`` (piano-rolls embedded, audio linked) to ``out``
   (default ``<run>/evaluation``), with the samples as MIDI, PNG and WAV.

Arguments and defaults: ``conf/evaluate.yaml``; any other ``key=value`` is a sampling option.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L

from lightning_modules.base import CheckpointError, load_model
from muselab.cli import command_arguments
from muselab.errors import UserError, report_user_errors
from muselab.music.evaluation import MusicReference, music_report, n_bars, write_pieces
from muselab.music.metrics import METRIC_NAMES
from muselab.music.rendering import resolve_backend
from muselab.primer import load_primer
from muselab.runs import find_run_dir, load_run_config
from muselab.utils import instantiate_checked

log = logging.getLogger("muselab.evaluate")


def _num(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def layout_difference(needed: dict[str, Any], found: dict[str, Any]) -> str:
    """``key: needed vs found`` for each representation setting that differs."""
    keys = sorted(set(needed) | set(found))
    return ", ".join(
        f"{k}: {needed.get(k)!r} vs {found.get(k)!r}" for k in keys if needed.get(k) != found.get(k)
    )


def evaluate(
    ckpt: str,
    n: int = 16,
    out: str | None = None,
    length: int | None = None,
    temperature: float = 1.0,
    prompt: str | None = None,
    seed: int = 0,
    n_real: int = 64,
    n_audio: int = 2,
    audio_backend: str = "auto",
    batch_size: int | None = None,
    accelerator: str = "cpu",
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``ckpt`` (see the module docstring); returns what ``evaluation.json`` holds."""
    start = time.perf_counter()
    ckpt_path = Path(ckpt).expanduser().resolve()
    model = load_model(ckpt_path)
    run_dir = find_run_dir(ckpt_path)
    if run_dir is None:
        raise UserError(
            f"{ckpt_path}: no .hydra/config.yaml above it: evaluate needs the run directory the "
            "checkpoint was trained in (muselab.train writes it)"
        )
    out_dir = Path(out).expanduser() if out else run_dir / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_run_config(run_dir)
    datamodule = instantiate_checked(cfg.data)
    if batch_size:
        datamodule.batch_size = batch_size
    needed, found = model.representation.to_config(), datamodule.representation.to_config()
    if needed != found:
        raise CheckpointError(
            f"{ckpt_path}: trained on another data layout than its run's config gives "
            f"({layout_difference(needed, found)}); it needs the layout {needed}"
        )
    datamodule.prepare_data()
    datamodule.setup()

    # 1. Test-split loss: the model's own loss, exactly as training logged it.
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out_dir),
    )
    [test_results] = trainer.test(model, datamodule=datamodule, verbose=False)
    metrics: dict[str, float | None] = {k: _num(v) for k, v in test_results.items()}
    if metrics.get("test/loss") is not None:
        metrics["test/bits_per_step"] = metrics["test/loss"] / math.log(2)

    # 2. Samples vs real test windows of as many bars, all as decoded music.
    L.seed_everything(seed, verbose=False)
    primer = load_primer(prompt) if prompt else None
    musics = model.sample(n, length, temperature, primer, **(options or {}))
    bars = max(n_bars(m) for m in musics)
    splits = datamodule.split_arrays
    reference = MusicReference(splits["test"], splits["train"], model.representation, bars, n_real)
    metrics.update(music_report(musics, reference))
    metrics.update({f"sample/{k}": v for k, v in model.last_sample_figures.items()})
    metrics.update(reference.data_metrics())
    if reference.windows and reference.memorization is not None:
        metrics["data/memorization"] = reference.memorization.score(reference.windows)

    # 3. Files: every sample as MIDI + PNG (audio for the first few), and two real windows.
    backend = resolve_backend(audio_backend)
    samples = write_pieces(musics, out_dir / "samples", "sample", n_audio, True, audio_backend)
    reals = write_pieces(
        reference.windows[:2], out_dir / "real", "real", min(1, n_audio), True, audio_backend
    )

    report = {
        "checkpoint": str(ckpt_path),
        "run_dir": str(run_dir),
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "data": str(cfg.data.get("name", "")),
        "n_samples": n,
        "length": length or model.default_length,
        "bars": bars,
        "temperature": temperature,
        "options": dict(options or {}),
        "seed": seed,
        "n_real": len(reference.windows),
        "test_windows": len(datamodule.datasets["test"]),
        "memorization_bars": reference.memorization_bars,
        "audio_backend": backend,
        "metrics": metrics,
        "samples": [_relative(f, out_dir) for f in samples],
        "real": [_relative(f, out_dir) for f in reals],
        "seconds": time.perf_counter() - start,
    }
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    (out_dir / "evaluation.md").write_text(markdown_report(report))
    log.info("Wrote %s and %s", out_dir / "evaluation.json", out_dir / "evaluation.md")
    return report


def _relative(files: dict[str, Path | None], root: Path) -> dict[str, str | None]:
    return {k: (str(v.relative_to(root)) if v is not None else None) for k, v in files.items()}


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def markdown_report(report: dict[str, Any]) -> str:
    """The Markdown evaluation report: losses, metric table, memorisation, piano-rolls and audio."""
    m = report["metrics"]
    lines = [
        f"# Evaluation of `{Path(report['checkpoint']).name}`",
        "",
        f"- checkpoint: `{report['checkpoint']}`",
        f"- model: `{report['model']}`, data: `{report['data']}`",
        f"- {report['n_samples']} samples of {report['length']} steps or tokens ({report['bars']} bars) at "
        f"temperature {report['temperature']} (seed {report['seed']}, options {report['options']}), against "
        f"{report['n_real']} real test windows of as many bars",
        f"- audio backend: {report['audio_backend']}; took {report['seconds']:.1f} s",
        "",
        "## Likelihood (test split)",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| test/loss (nats per step or token) | {_fmt(m.get('test/loss'))} |",
        f"| test/bits_per_step | {_fmt(m.get('test/bits_per_step'))} |",
        "",
        "## Music metrics (generated vs real test music)",
        "",
        "Overlap is the overlapping area of the two per-piece distributions (1: the same, 0: disjoint).",
        "",
        "| metric | generated | real | overlap |",
        "| --- | --- | --- | --- |",
    ]
    listed = (*METRIC_NAMES, "n_notes")
    # Then the model's own figures about its samples (tokens decoding skipped, ...).
    extra = [k.split("/", 1)[1] for k in m if k.startswith("sample/") and k.split("/", 1)[1] not in listed]
    for name in (*listed, *extra):
        gen, real = m.get(f"sample/{name}"), m.get(f"data/{name}")
        if gen is None and real is None:
            continue
        lines.append(f"| {name} | {_fmt(gen)} | {_fmt(real)} | {_fmt(m.get(f'overfit/overlap_{name}'))} |")
    lines += [
        "",
        "## Memorisation",
        "",
        f"Share of {report['memorization_bars']}-bar windows found verbatim in the training set: "
        f"generated {_fmt(m.get('overfit/memorization'))}, real test music {_fmt(m.get('data/memorization'))} "
        "(the baseline: what unseen music of this corpus shares with its training set).",
        "",
        "## Samples",
        "",
    ]
    for i, files in enumerate(report["samples"]):
        lines.append(f"### Sample {i}")
        lines.append("")
        if files.get("png"):
            lines.append(f"![sample {i}]({files['png']})")
            lines.append("")
        links = [f"[MIDI]({files['midi']})"] + ([f"[audio]({files['wav']})"] if files.get("wav") else [])
        lines += [" · ".join(links), ""]
    if report["real"]:
        lines += ["## Real test music (for comparison)", ""]
        for i, files in enumerate(report["real"]):
            if files.get("png"):
                lines += [f"![real {i}]({files['png']})", ""]
            links = [f"[MIDI]({files['midi']})"] + ([f"[audio]({files['wav']})"] if files.get("wav") else [])
            lines += [" · ".join(links), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: ``python -m muselab.evaluate ckpt=PATH [n=16] [out=DIR] [key=value ...]``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with report_user_errors("muselab.evaluate"):
        args = command_arguments("evaluate", sys.argv[1:] if argv is None else argv)
        report = evaluate(**args)
    out = Path(args["out"]) if args["out"] else Path(report["run_dir"]) / "evaluation"
    print(f"test/loss {_fmt(report['metrics'].get('test/loss'))}; report: {out / 'evaluation.md'}")


if __name__ == "__main__":
    main()
