"""MuseNet benchmark: ``make bench-musenet`` (``python -m muselab.bench.musenet [key=value ...]``).

Four parts (``parts=encoding,sampling,throughput,quality``), each stored in ``<runs_dir>/results.json``
when it finishes, so parts can run at different times; the ``## MuseNet (make bench-musenet)`` section
of ``docs/benchmarks.md`` is rendered from every stored part, each with its commit, command, machine,
threads and date:

- **encoding**: files/s of the event-token pipeline (`build_cache` with `EventRepresentation`) against
  miditok's own tokenisation of the same files (``tokenizer(path)``: symusic parse + REMI) and against
  the piano-roll pipeline, on a generated multi-instrument MIDI folder and on the Bach chorales;
- **sampling**: 1024 tokens from the small model (``model=musenet``, untrained: time does not depend
  on the weights) with and without the KV cache, one piece and a batch of ``batch`` pieces;
- **throughput**: training tokens/s of the Lightning module against a plain PyTorch loop over the same
  model, the same batches and the same optimiser, measured in alternation in one process;
- **quality**: ``model=musenet`` and the piano-roll LSTM (``model=pianoroll_rnn``) trained for the
  same wall-clock budget (``minutes``) on ``bach`` and on ``nottingham``, then `muselab.evaluate` on
  the best checkpoint: test NLL, and the samples' music metrics, their overlap with real test music
  and their memorisation of the training set, all on decoded music and so comparable across models.

Arguments: ``parts``, ``threads`` (2), ``files`` (200), ``notes`` (1000 per file), ``repeats`` (3),
``tokens`` (1024), ``batch`` (4), ``steps`` (20 timed training steps per round), ``rounds`` (2),
``minutes`` (20 per training run), ``datas`` (bach,nottingham), ``models`` (musenet,pianoroll_rnn),
``samples`` (16 per evaluation), ``bars`` (16), ``nottingham`` (a copy of the ABC folder; default:
``../shared/data/nottingham_abc`` copied into ``runs_dir``), ``runs_dir`` (outputs/bench-musenet),
``docs`` (docs/benchmarks.md; empty: do not write), ``seed``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf, open_dict

from muselab.bench.markdown import cpu_model, replace_section

log = logging.getLogger("muselab.bench.musenet")

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
SECTION = "## MuseNet (make bench-musenet)"
PARTS = ("encoding", "sampling", "throughput", "quality")
DEFAULTS: dict[str, Any] = {
    "parts": ",".join(PARTS),
    "threads": 2,
    "files": 200,
    "notes": 1000,
    "repeats": 3,
    "tokens": 1024,
    "batch": 4,
    "steps": 20,
    "rounds": 2,
    "minutes": 20.0,
    "datas": "bach,nottingham",
    "models": "musenet,pianoroll_rnn",
    "samples": 16,
    "bars": 16,
    "nottingham": "",
    "runs_dir": "outputs/bench-musenet",
    "docs": "docs/benchmarks.md",
    "seed": 1234,
}
# Callbacks a quality run keeps: checkpoint selection only (sampling every epoch would eat the budget).
BENCH_CALLBACKS = ("model_checkpoint",)


# ------------------------------------------------------------------------------------------- helpers
def compose(overrides: list[str], output_dir: Path) -> Any:
    """``conf/train.yaml`` composed as ``muselab.train`` would, with the Hydra runtime filled in."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(ROOT)
    HydraConfig.instance().set_config(cfg)
    return cfg


def commit() -> str:
    """The code's commit (``+dirty`` when tracked files other than Markdown differ from it)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)*.md")
    return head + ("+dirty" if changed else "")


def machine(threads: int) -> str:
    cpu = cpu_model(platform.processor() or platform.machine())
    return f"{cpu}, {os.cpu_count()} cores, no GPU, torch {torch.__version__}, {threads} torch threads"


def load() -> float:
    return round(os.getloadavg()[0], 1)


def musenet_setup(data: str, overrides: list[str]) -> tuple[Any, Any]:
    """The small MuseNet and its datamodule (set up), as ``make train MODEL=musenet`` builds them."""
    from muselab.utils import instantiate_checked

    cfg = compose(["model=musenet", f"data={data}", *overrides], ROOT / "outputs" / "bench-musenet")
    datamodule = instantiate_checked(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    model = instantiate_checked(cfg.model, representation=datamodule.representation)
    return model, datamodule


# ------------------------------------------------------------------------------------------- encoding
def part_encoding(args: dict[str, Any]) -> dict[str, Any]:
    """Files/s of the event-token pipeline, of miditok's own tokenize and of the piano-roll pipeline."""
    from datamodules.events import EventRepresentation
    from datamodules.sources import FolderSource, Music21CorpusSource
    from muselab.bench.data import best_time, generate_midi_folder, layout_representation, time_pipeline

    def events_for(data: str) -> EventRepresentation:
        layout = OmegaConf.load(CONF_DIR / "train.yaml")["layout"]
        data_conf = OmegaConf.load(CONF_DIR / "data" / f"{data}.yaml")
        if "layout" in data_conf:
            layout = OmegaConf.merge(layout, data_conf["layout"])
        keys = ("n_tracks", "track_mode", "track_names", "program_groups", "programs", "drum_track")
        plain = OmegaConf.to_container(layout)
        settings = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "representation" / "events.yaml"))
        return EventRepresentation(
            tokenizer_config=settings["tokenizer_config"], genre=data, **{k: plain[k] for k in keys}
        )

    def pipeline(source: Any, representation: Any, n_jobs: int, repeats: int) -> tuple[float, int]:
        runs = [time_pipeline(source, representation, n_jobs) for _ in range(max(1, repeats))]
        return min(seconds for seconds, _ in runs), runs[0][1]["steps"]

    rows: list[dict[str, Any]] = []
    folder = Path(tempfile.mkdtemp(prefix="muselab-bench-midi-"))
    try:
        notes = generate_midi_folder(folder, args["files"], args["notes"], args["seed"])
        files = sorted(str(p) for p in folder.rglob("*.mid"))
        events = events_for("folder")
        roll = layout_representation("folder")
        source = FolderSource(str(folder))
        time_pipeline(FolderSource(str(folder / "00")), events, 1)  # warm-up: imports, page cache

        def miditok_tokenize() -> int:
            return sum(len(events.tokenizer(path).ids) for path in files)

        seconds, tokens = best_time(miditok_tokenize, args["repeats"])
        rows.append(
            _row("folder", "miditok `tokenizer(path)` (symusic parse + REMI)", 1, len(files), seconds, tokens)
        )
        for n_jobs in (1, 2):
            seconds, tokens = pipeline(source, events, n_jobs, args["repeats"])
            rows.append(
                _row("folder", "MuseLab event tokens (`build_cache`)", n_jobs, len(files), seconds, tokens)
            )
        for n_jobs in (1, 2):
            seconds, _ = pipeline(source, roll, n_jobs, args["repeats"])
            rows.append(
                _row("folder", "MuseLab piano-roll (`build_cache`)", n_jobs, len(files), seconds, None)
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    bach = Music21CorpusSource("bach")
    n_bach = len(bach.items())
    for name, representation in (
        ("event tokens", events_for("bach")),
        ("piano-roll", layout_representation("bach")),
    ):
        for n_jobs in (1, 2):
            seconds, steps = pipeline(bach, representation, n_jobs, 1)
            tokens = steps if name == "event tokens" else None
            rows.append(_row("bach", f"MuseLab {name} (`build_cache`)", n_jobs, n_bach, seconds, tokens))
    return {"rows": rows, "files": args["files"], "notes": notes, "repeats": args["repeats"]}


def _row(
    data: str, name: str, processes: int, files: int, seconds: float, tokens: int | None
) -> dict[str, Any]:
    return {
        "data": data,
        "name": name,
        "processes": processes,
        "files": files,
        "seconds": round(seconds, 3),
        "files_per_s": round(files / seconds, 1),
        "tokens_per_s": round(tokens / seconds) if tokens else None,
    }


# ------------------------------------------------------------------------------------------- sampling
def part_sampling(args: dict[str, Any]) -> dict[str, Any]:
    """Seconds to sample ``tokens`` tokens with and without the KV cache (best of ``repeats``)."""
    from hydra.utils import instantiate

    from muselab.utils import instantiate_checked

    cfg = compose(["model=musenet"], ROOT / "outputs" / "bench-musenet")
    representation = instantiate(cfg.representation, _convert_="all")
    model = instantiate_checked(cfg.model, representation=representation).eval()
    rows = []
    for n in (1, args["batch"]):
        times = {}
        for use_cache in (True, False):
            best = math.inf
            for _ in range(args["repeats"] if use_cache else 1):
                torch.manual_seed(args["seed"])
                start = time.perf_counter()
                out = model.generate(n, args["tokens"], use_cache=use_cache)
                best = min(best, time.perf_counter() - start)
            assert all(len(a) == args["tokens"] for a in out)
            times[use_cache] = best
        rows.append(
            {
                "n": n,
                "tokens": args["tokens"],
                "cached_s": round(times[True], 2),
                "uncached_s": round(times[False], 2),
                "speedup": round(times[False] / times[True], 1),
                "cached_tokens_per_s": round(n * args["tokens"] / times[True]),
            }
        )
        log.info("sampling %s", rows[-1])
    params = sum(p.numel() for p in model.parameters())
    return {"rows": rows, "context": model.context, "params": params, "layers": len(model.blocks)}


# ------------------------------------------------------------------------------------------- throughput
class StepTimes(L.Callback):
    """When every training step of a fit starts and ends."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_train_batch_start(self, *_: Any) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, *_: Any) -> None:
        self.ends.append(time.perf_counter())


def part_throughput(args: dict[str, Any]) -> dict[str, Any]:
    """Tokens/s of ``trainer.fit`` against a plain loop, over the same model, batches and optimiser.

    Both run ``steps`` steps (after 3 warm-up steps) from the same weights, ``rounds`` times in
    alternation, so a change in the machine's load hits both; each side keeps its best round. The
    plain loop does what the Lightning step does: the model's loss, backward, gradient-norm clipping,
    AdamW and the warm-up/cosine schedule per step.
    """
    import copy

    from lightning_modules.musenet import warmup_cosine

    model, datamodule = musenet_setup("bach", [])
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(0)
    warmup = 3
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == warmup + args["steps"]:
            break
    tokens = sum(int(b["mask"].sum()) for b in batches[warmup:])
    initial = copy.deepcopy(model.state_dict())

    def plain() -> float:
        model.load_state_dict(initial)
        model.train()
        optimizer = model.optimizer_factory(params=model.optimizer_parameters("model"))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(model.warmup_steps, len(batches), model.min_lr_ratio)
        )
        start = 0.0
        for i, batch in enumerate(batches):
            if i == warmup:
                start = time.perf_counter()
            loss = model.loss(batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), model.gradient_clip_val)
            optimizer.step()
            schedule.step()
        return time.perf_counter() - start

    def lightning() -> float:
        model.load_state_dict(initial)
        timer = StepTimes()
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=[timer],
            default_root_dir=tempfile.mkdtemp(prefix="muselab-bench-fit-"),
        )
        data = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
        trainer.fit(model, train_dataloaders=data)
        return timer.ends[-1] - timer.starts[warmup]

    rounds: dict[str, list[float]] = {"plain": [], "lightning": []}
    for _ in range(args["rounds"]):
        rounds["plain"].append(plain())
        rounds["lightning"].append(lightning())
        log.info("throughput round: %s", {k: v[-1] for k, v in rounds.items()})
    best = {k: min(v) for k, v in rounds.items()}
    return {
        "steps": args["steps"],
        "batch": datamodule.batch_size,
        "window": datamodule.window,
        "tokens": tokens,
        "params": sum(p.numel() for p in model.parameters()),
        "plain_tokens_per_s": round(tokens / best["plain"]),
        "lightning_tokens_per_s": round(tokens / best["lightning"]),
        "ratio": round(best["plain"] / best["lightning"], 3),
        "rounds_s": {k: [round(s, 2) for s in v] for k, v in rounds.items()},
    }


# ------------------------------------------------------------------------------------------- quality
def nottingham_root(args: dict[str, Any]) -> Path:
    """A writable copy of the Nottingham ABC files (muspy marks a dataset folder it opens)."""
    if args["nottingham"]:
        return Path(args["nottingham"]).expanduser().resolve()
    target = (ROOT / args["runs_dir"] / "nottingham_abc").resolve()
    if not target.is_dir():
        shutil.copytree((ROOT / ".." / "shared" / "data" / "nottingham_abc").resolve(), target)
    return target


def train_and_evaluate(model_name: str, data: str, args: dict[str, Any]) -> dict[str, Any]:
    """Train ``model_name`` on ``data`` for ``minutes``, evaluate its best checkpoint; one result row."""
    from lightning_modules.base import load_model
    from muselab.bench.poly import max_time
    from muselab.evaluate import evaluate
    from muselab.train import train

    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    output_dir = (ROOT / args["runs_dir"] / f"{model_name}-{data}-{stamp}").resolve()
    overrides = [
        f"model={model_name}",
        f"data={data}",
        "logger=csv",
        "callbacks.progress_bar=null",
        "n_samples=0",
        "test=false",
        f"seed={args['seed']}",
        f"torch_threads={args['threads']}",
        "trainer.max_epochs=1000",
        f"+trainer.max_time='{max_time(args['minutes'])}'",
    ]
    if data == "nottingham":
        overrides.append(f"data.source.root={nottingham_root(args)}")
    cfg = compose(overrides, output_dir)
    with open_dict(cfg):
        for name in list(cfg.callbacks):
            if name not in BENCH_CALLBACKS:
                cfg.callbacks[name] = None
    # What Hydra's app writes and `muselab.evaluate` reads back (resolved: no Hydra app runs here).
    (output_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    run_config = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    (output_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(run_config, resolve=True))
    start = time.perf_counter()
    out = train(cfg)
    wall = time.perf_counter() - start
    best = out["best_ckpt"]
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    model = load_model(best)
    if model_name.startswith("musenet"):
        options: dict[str, Any] = {"bars": args["bars"]}
        length = 128 * args["bars"]  # a token budget the bars fit in (a chorale bar: ~60 tokens)
    else:
        options, length = {}, args["bars"] * model.representation.steps_per_bar()
    torch.set_num_threads(args["threads"])
    report = evaluate(
        best, n=args["samples"], out=str(output_dir / "evaluation"), length=length, n_audio=0,
        seed=args["seed"], options=options,
    )  # fmt: skip
    metrics = report["metrics"]
    row = {
        "model": model_name,
        "data": data,
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": checkpoint["epoch"] + 1,
        "steps": checkpoint["global_step"],
        "wall_s": round(wall),
        "test_loss": metrics.get("test/loss"),
        "unit": "nats/token" if options else "nats/frame",
        "bars": report["bars"],
        "memorization": metrics.get("overfit/memorization"),
        "data_memorization": metrics.get("data/memorization"),
        "overlap": {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("overfit/overlap_")},
        "bad_token_rate": metrics.get("sample/bad_token_rate"),
        "n_notes": metrics.get("sample/n_notes"),
        "data_n_notes": metrics.get("data/n_notes"),
        "load": load(),
        "run_dir": str(output_dir.relative_to(ROOT)) if output_dir.is_relative_to(ROOT) else str(output_dir),
    }
    if options:
        row["music_token_nll"] = music_token_nll(model, best, data, args)
    log.info("quality %s", row)
    return row


def music_token_nll(model: Any, ckpt: str, data: str, args: dict[str, Any]) -> float:
    """Test NLL per token over the tokens after each window's conditioning prefix (the prefix is
    given, not predicted, when instruments are asked for)."""
    from muselab.evaluate import find_run_dir, load_run_config
    from muselab.utils import instantiate_checked

    cfg = load_run_config(find_run_dir(ckpt))
    datamodule = instantiate_checked(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            x, mask = batch["x"], batch["mask"].clone()
            for row in range(len(x)):
                mask[row, : model.representation.prefix_length(x[row].numpy())] = False
            logits, _ = model(model.inputs(x))
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x, reduction="none")
            total += float(nll[mask].sum())
            count += int(mask.sum())
    return total / max(count, 1)


def part_quality(args: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for data in [d.strip() for d in args["datas"].split(",") if d.strip()]:
        for model_name in [m.strip() for m in args["models"].split(",") if m.strip()]:
            rows.append(train_and_evaluate(model_name, data, args))
    return {"rows": rows, "minutes": args["minutes"], "samples": args["samples"], "bars": args["bars"]}


# ------------------------------------------------------------------------------------------- report
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(results: dict[str, Any]) -> str:
    """The docs section from every stored part."""
    lines = [
        SECTION,
        "",
        "The event-token transformer (`model=musenet`: 4 pre-LN blocks x 256, rotary positions, "
        "context 256, `representation=events`: miditok REMI with a program token per note behind a "
        "genre + instruments prefix). Rendered by `muselab.bench.musenet` from the stored results of "
        "each part; each part says the commit, command, machine and threads it ran with.",
        "",
    ]

    def header(part: dict[str, Any]) -> list[str]:
        meta = part["meta"]
        return [
            f"- Commit `{meta['commit']}`, {meta['date']}; command: `{meta['command']}`",
            f"- Machine: {meta['machine']}; load average {meta['load_start']} at the start, "
            f"{meta['load_end']} at the end (a shared machine: other jobs ran beside it).",
            "",
        ]

    if "encoding" in results:
        part = results["encoding"]
        lines += ["### Encoding speed", "", *header(part)]
        lines += [
            f"Generated MIDI folder: {part['files']} files, {part['notes']:,} notes (3 to 5 pitched tracks, "
            "drums in every other file, unquantised onsets; `muselab.bench.data`'s generator), and the "
            "410 Bach chorales (MusicXML, parsed by muspy). Event tokens use the `folder` and `bach` "
            f"layouts of the data configs; best of {part['repeats']} runs (bach: one run).",
            "",
            "| data | pipeline | processes | files/s | tokens/s |",
            "|---|---|---:|---:|---:|",
        ]
        for r in part["rows"]:
            lines.append(
                f"| {r['data']} | {r['name']} | {r['processes']} | {_fmt(r['files_per_s'])} | {_fmt(r['tokens_per_s'])} |"
            )
        lines.append("")
    if "sampling" in results:
        part = results["sampling"]
        lines += ["### Sampling with and without the KV cache", "", *header(part)]
        lines += [
            f"`model=musenet` ({part['params']:,} parameters, {part['layers']} layers, context {part['context']}), "
            "untrained (the time does not depend on the weights), `generate(n, tokens)`; beyond the "
            "context the window slides by a quarter of it (the cache is rebuilt then). Target: the cache "
            "at least 5x faster.",
            "",
            "| pieces | tokens | with cache (s) | without (s) | speed-up | tokens/s with cache |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in part["rows"]:
            lines.append(
                f"| {r['n']} | {r['tokens']} | {r['cached_s']} | {r['uncached_s']} | **{r['speedup']}x** | {_fmt(r['cached_tokens_per_s'])} |"
            )
        lines.append("")
    if "throughput" in results:
        part = results["throughput"]
        lines += ["### Training throughput: Lightning against a plain loop", "", *header(part)]
        lines += [
            f"`model=musenet` ({part['params']:,} parameters) on Bach windows of {part['window']} tokens, "
            f"batches of {part['batch']}: the same {part['steps']} batches ({part['tokens']:,} tokens), "
            "the same initial weights and optimiser (AdamW, clipping, warm-up + cosine), in alternation; "
            f"each side's best round. Rounds (s): {part['rounds_s']}. Target: Lightning at least 0.9 of the "
            "plain loop.",
            "",
            "| loop | tokens/s |",
            "|---|---:|",
            f"| plain PyTorch | {_fmt(part['plain_tokens_per_s'])} |",
            f"| Lightning (`trainer.fit`) | {_fmt(part['lightning_tokens_per_s'])} |",
            f"| **ratio** | **{part['ratio']}** |",
            "",
        ]
    if "quality" in results:
        part = results["quality"]
        lines += ["### Likelihood and samples for a fixed budget", "", *header(part)]
        lines += [
            f"Each model trained for {part['minutes']:g} minutes of wall time (`+trainer.max_time`), the "
            "checkpoint with the best `val/loss` evaluated by `muselab.evaluate`: its test loss, then "
            f"{part['samples']} samples of {part['bars']} bars (MuseNet: `bars={part['bars']}`) measured "
            "against 64 real test windows of as many bars. Losses are in each model's unit (nats per "
            "token, nats per frame summed over tracks x pitches) and do not compare across models; the "
            "other columns are measured on decoded music and do. *music tokens*: the NLL over the "
            "tokens after each window's conditioning prefix. *overlap*: the mean over the metrics of "
            "the overlapping area of generated and real per-window distributions (1 = the same). "
            "*memorised*: share of the samples' 4-bar windows found in the training set, beside the "
            "same measure for real test music.",
            "",
            "| data | model | params | epochs (steps) | test loss | music tokens | overlap | memorised (samples / test data) | bad tokens | notes per sample (data) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in part["rows"]:
            overlap = np.mean(list(r["overlap"].values())) if r["overlap"] else None
            lines.append(
                f"| {r['data']} | {r['model']} | {_fmt(r['params'])} | {r['epochs']} ({_fmt(r['steps'])}) | "
                f"{_fmt(r['test_loss'])} {r['unit']} | {_fmt(r.get('music_token_nll'))} | {_fmt(overlap)} | "
                f"{_fmt(r['memorization'])} / {_fmt(r['data_memorization'])} | {_fmt(r['bad_token_rate'])} | "
                f"{_fmt(r['n_notes'])} ({_fmt(r['data_n_notes'])}) |"
            )
        lines += ["", "Overlap per metric:", ""]
        names = sorted({k for r in part["rows"] for k in r["overlap"]})
        lines += ["| data | model | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
        for r in part["rows"]:
            lines.append(
                f"| {r['data']} | {r['model']} | "
                + " | ".join(_fmt(r["overlap"].get(k)) for k in names)
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the parts asked for, store them, and rewrite the docs section from every stored part."""
    from muselab.cli import parse_kv_args

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = parse_kv_args(argv, DEFAULTS)
    os.environ.setdefault("WANDB_MODE", "offline")
    parts = [p.strip() for p in args["parts"].split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"unknown parts {unknown}; parts: {', '.join(PARTS)}")
    torch.set_num_threads(args["threads"])
    store = ROOT / args["runs_dir"] / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    command = ("make bench-musenet " + " ".join(argv)).strip()
    for part in parts:
        meta = {
            "commit": commit(),
            "date": time.strftime("%Y-%m-%d"),
            "command": command,
            "load_start": load(),
        }
        log.info("bench-musenet: %s", part)
        result = globals()[f"part_{part}"](args)
        meta.update(load_end=load(), machine=machine(args["threads"]))
        result["meta"] = meta
        results[part] = result
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(results, indent=2, default=str))
        print(json.dumps({part: result}, indent=2, default=str))
    if args["docs"]:
        replace_section(ROOT / args["docs"], SECTION, render(results))
        log.info("Wrote %s", ROOT / args["docs"])
    return results


if __name__ == "__main__":
    main()
