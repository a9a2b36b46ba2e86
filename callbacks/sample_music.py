"""`SampleMusic`: hear, see and measure what a model makes, every few epochs, with any logger.

After validation (every ``every_n_epochs``), rank 0 calls ``pl_module.sample(n, length,
temperature, **options)`` (the one contract of every `GenerativeModule`) under a forked, seeded RNG,
so sampling never changes the training run's random stream, and:

- writes ``<root>/samples/epoch_XXX/sample_NN.{mid,png,wav}`` (audio for the first ``n_audio`` only:
  synthesis is the slow part, and runs in a background thread while training goes on), and once
  ``<root>/samples/data/real_00.{mid,png,wav}`` from a validation window, where ``root`` is
  ``dirpath`` or ``trainer.default_root_dir``;
- logs the media: W&B (``samples/pianoroll`` images, ``samples/audio``, the MIDI files saved into
  the run), TensorBoard (``add_image`` / ``add_audio`` under the same tags); CSV and no logger
  keep the files on disk only;
- logs scalars (every logger): ``sample/<metric>`` (`MusicMetrics` means over the samples),
  ``sample/n_notes``, the model's figures about decoding its samples (``sample/bad_tokens`` for
  event tokens: `GenerativeModule.last_sample_figures`), once ``data/<metric>`` (real validation windows of as many bars, measured on
  decoded music like the samples: `muselab.music.MusicReference`),
  ``overfit/loss_gap`` (val - train loss), ``overfit/loss_ratio`` (val / train loss),
  ``overfit/memorization`` (share of generated n-bar windows copied verbatim from the training
  set), ``overfit/overlap_<metric>`` (overlapping area of generated vs real per-piece
  distributions) and ``sample/callback_seconds`` (the wall time this callback held up training).

The metrics are computed on rank 0's samples alone (``sync_on_compute=False``), so other DDP ranks
never wait in a collective this callback opened; the losses it compares are the epoch values
Lightning already synced across ranks.
"""

from __future__ import annotations

import importlib.util
import logging
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import muspy
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

from muselab.music.evaluation import MusicReference, loss_gap, music_report, n_bars, write_pieces
from muselab.music.rendering import read_wav_mono, render_audio, resolve_backend

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ the callback
class SampleMusic(Callback):
    """Generate, save, render, log and measure samples after validation (see the module docstring).

    Args:
        n_samples: pieces generated each time.
        length: length of a piece in the model's unit (steps or tokens; None: the model's default).
        temperature: sampling temperature.
        options: sampling options passed to ``sample`` unchanged (``top_k``, ``chords``, ...).
        every_n_epochs: run after the validation of every n-th epoch.
        n_audio: samples rendered to audio each time (synthesis is the slowest part).
        background_audio: render audio in a background thread while training goes on; it is
            logged (at the step it belongs to) by the next run of the callback or at the end of
            training, so audio never holds up the training loop.
        images: draw a piano-roll PNG per sample.
        n_real: real validation windows measured once for ``data/`` and the overlaps.
        memorization_bars: window length of the memorisation index (capped by the samples' bars).
        audio_backend: ``auto``, ``fluidsynth``, ``symusic`` or ``numpy`` (see `muselab.music.rendering`).
        sample_rate: audio sample rate.
        beats_per_bar: bar length for the bar metrics.
        dirpath: root of the ``samples/`` folder (default: ``trainer.default_root_dir``).
        log_midi: save the MIDI files into the W&B run.
        seed: base seed of the sampling RNG (epoch ``e`` samples with ``seed + e``).
        generation_threads: torch CPU threads while sampling on the CPU (None: leave as set).
    """

    def __init__(
        self,
        n_samples: int = 4,
        length: int | None = None,
        temperature: float = 1.0,
        options: dict[str, Any] | None = None,
        every_n_epochs: int = 1,
        n_audio: int = 1,
        background_audio: bool = True,
        images: bool = True,
        n_real: int = 32,
        memorization_bars: int = 4,
        audio_backend: str = "auto",
        sample_rate: int = 22050,
        beats_per_bar: int = 4,
        dirpath: str | None = None,
        log_midi: bool = True,
        seed: int = 0,
        generation_threads: int | None = 1,
    ) -> None:
        super().__init__()
        if n_samples < 1 or every_n_epochs < 1:
            raise ValueError("n_samples and every_n_epochs must be at least 1")
        self.n_samples = int(n_samples)
        self.length = length
        self.temperature = float(temperature)
        self.options = dict(options or {})
        self.every_n_epochs = int(every_n_epochs)
        self.n_audio = int(n_audio)
        self.background_audio = background_audio
        self.images = images
        self.n_real = int(n_real)
        self.memorization_bars = int(memorization_bars)
        self.audio_backend = audio_backend
        self.sample_rate = int(sample_rate)
        self.beats_per_bar = int(beats_per_bar)
        self.dirpath = dirpath
        self.log_midi = log_midi
        self.seed = int(seed)
        self.generation_threads = generation_threads
        self._validated_epoch: int | None = None
        self._reference: MusicReference | None = None
        self._real_logged = False
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[_PendingAudio] = []
        self.last_metrics: dict[str, float] = {}
        self.last_files: list[dict[str, Path | None]] = []
        self.audio_seconds: list[float] = []  # wall time of each background render, for benchmarks

    def __getstate__(self) -> dict[str, Any]:
        # A thread pool cannot be pickled (spawned DDP workers pickle callbacks); it restarts lazily.
        state = dict(self.__dict__)
        state["_executor"], state["_pending"] = None, []
        return state

    # -------------------------------------------------------------------------- hooks
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit":
            # Sample in on_train_epoch_end: there both the epoch's train and val losses are final
            # and `log` is allowed (it is not in on_validation_end).
            self._validated_epoch = trainer.current_epoch
        elif trainer.is_global_zero:  # trainer.validate(): no train epoch follows
            metrics = self._run(trainer, pl_module, split="val")
            self._log_scalars(trainer, None, metrics)
            self._collect_audio(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self._validated_epoch != epoch or (epoch + 1) % self.every_n_epochs:
            return
        if trainer.is_global_zero:
            metrics = self._run(trainer, pl_module, split="val")
            self._log_scalars(trainer, pl_module, metrics)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._collect_audio(trainer)  # the last epoch's audio

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._collect_audio(trainer, log_media=False)  # finish the files; the loggers may be broken

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._collect_audio(trainer, log_media=False)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -------------------------------------------------------------------------- work
    def _root(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir) / "samples"

    def _generate(self, pl_module: L.LightningModule, epoch: int) -> list[muspy.Music]:
        devices = [pl_module.device.index or 0] if pl_module.device.type == "cuda" else []
        threads = torch.get_num_threads()
        if self.generation_threads and pl_module.device.type == "cpu":
            # Step-by-step sampling of a few pieces is a long chain of tiny ops: more intra-op
            # threads only add synchronisation, and on a busy 2-core machine 2 threads measured
            # 6-14 s for what 1 thread does in 0.4 s.
            torch.set_num_threads(self.generation_threads)
        try:
            # A forked RNG: samples are reproducible per epoch, and training draws the same random
            # numbers with or without this callback.
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed + epoch)
                return pl_module.sample(self.n_samples, self.length, self.temperature, **self.options)
        finally:
            torch.set_num_threads(threads)

    def reference(self, trainer: L.Trainer, pl_module: L.LightningModule, bars: int) -> MusicReference | None:
        """Validation windows and the training set's memorisation index, built on first use."""
        if self._reference is None:
            datamodule = getattr(trainer, "datamodule", None)
            splits = getattr(datamodule, "split_arrays", {}) if datamodule is not None else {}
            representation = getattr(pl_module, "representation", None)
            if not splits or representation is None:
                return None
            self._reference = MusicReference(
                splits.get("val"),
                splits.get("train"),
                representation,
                bars,
                self.n_real,
                self.memorization_bars,
                beats_per_bar=self.beats_per_bar,
            )
        return self._reference

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> dict[str, float]:
        start = time.perf_counter()
        self._collect_audio(trainer)  # the previous run's audio, rendered in the meantime
        epoch, step = trainer.current_epoch, trainer.global_step
        if not all(torch.isfinite(p).all() for p in pl_module.parameters()):
            # A diverged model: its samples would be noise or silence; the NaN guard stops the run.
            log.warning("SampleMusic epoch %d: the model's weights are not finite; no samples", epoch)
            return {}
        musics = self._generate(pl_module, epoch)
        root = self._root(trainer)
        n_audio_now = 0 if self.background_audio else self.n_audio
        files = write_pieces(
            musics,
            root / f"epoch_{epoch:03d}",
            "sample",
            n_audio_now,
            self.images,
            self.audio_backend,
            self.sample_rate,
            title=f"epoch {epoch} sample",
        )
        reference = self.reference(trainer, pl_module, max(n_bars(m, self.beats_per_bar) for m in musics))
        metrics = music_report(musics, reference, self.beats_per_bar)
        metrics.update({f"sample/{k}": v for k, v in getattr(pl_module, "last_sample_figures", {}).items()})
        metrics.update(loss_gap(trainer.callback_metrics, split))
        real_files: list[dict[str, Path | None]] = []
        if reference is not None and not self._real_logged:
            self._real_logged = True
            metrics.update(reference.data_metrics())
            if reference.windows:  # one real piece beside the samples: the same look, for comparison
                real_files = write_pieces(
                    reference.windows[:1],
                    root / "data",
                    "real",
                    min(1, n_audio_now),
                    self.images,
                    self.audio_backend,
                    self.sample_rate,
                    title="validation data",
                )
        self._log_media(trainer, files, real_files)
        if self.background_audio:
            self._submit_audio("samples", files[: self.n_audio], step, epoch)
            self._submit_audio("data", real_files[: min(1, self.n_audio)], step, epoch)
        metrics["sample/callback_seconds"] = time.perf_counter() - start
        self.last_metrics = metrics
        self.last_files = files
        log.info(
            "SampleMusic epoch %d: %d samples in %s (%.2f s)",
            epoch,
            len(musics),
            files[0]["midi"].parent,
            metrics["sample/callback_seconds"],
        )
        return metrics

    def _render(self, midi: Path, wav: Path) -> float:
        start = time.perf_counter()
        render_audio(midi, wav, sample_rate=self.sample_rate, backend=self.audio_backend)
        return time.perf_counter() - start

    def _submit_audio(self, prefix: str, items: list[dict[str, Path | None]], step: int, epoch: int) -> None:
        if not items:
            return
        resolve_backend(self.audio_backend)  # chosen (and any warning given) here, in the main thread
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="muselab-audio")
        for index, item in enumerate(items):
            wav = item["midi"].with_suffix(".wav")
            item["wav"] = wav
            future = self._executor.submit(self._render, item["midi"], wav)
            self._pending.append(_PendingAudio(prefix, index, step, epoch, wav, future))

    def _collect_audio(self, trainer: L.Trainer, log_media: bool = True) -> None:
        """Wait for the background renders and log each WAV at the step its samples came from."""
        pending, self._pending = self._pending, []
        groups: dict[tuple[str, int, int], list[tuple[int, Path]]] = {}
        for item in pending:
            try:
                self.audio_seconds.append(item.future.result())
            except Exception as err:  # audio is a diagnostic: a failed render never stops a run
                warnings.warn(f"rendering {item.wav} failed: {err!r}", stacklevel=2)
                continue
            groups.setdefault((item.prefix, item.step, item.epoch), []).append((item.index, item.wav))
        if not log_media:
            return
        for logger in trainer.loggers:
            for (prefix, step, epoch), wavs in groups.items():
                self._log_audio(logger, prefix, wavs, step, epoch)

    # -------------------------------------------------------------------------- logging
    def _log_scalars(
        self, trainer: L.Trainer, pl_module: L.LightningModule | None, metrics: dict[str, float]
    ) -> None:
        if pl_module is not None:
            # Rank 0 alone logs these, which `rank_zero_only` declares (no cross-rank reduction).
            for key, value in metrics.items():
                pl_module.log(key, value, on_step=False, on_epoch=True, rank_zero_only=True)
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})

    def _log_media(
        self,
        trainer: L.Trainer,
        files: list[dict[str, Path | None]],
        real_files: list[dict[str, Path | None]],
    ) -> None:
        step = trainer.global_step
        groups = [("samples", files), ("data", real_files)]
        for logger in trainer.loggers:
            for prefix, items in groups:
                if items:
                    self._log_to(logger, prefix, items, step, trainer.current_epoch)

    def _log_to(
        self, logger: Logger, prefix: str, items: list[dict[str, Path | None]], step: int, epoch: int
    ) -> None:
        pngs = [(i, f["png"]) for i, f in enumerate(items) if f["png"] is not None]
        wavs = [(i, f["wav"]) for i, f in enumerate(items) if f["wav"] is not None]
        if isinstance(logger, WandbLogger):
            if pngs:
                captions = [f"{prefix} {i} (epoch {epoch})" for i, _ in pngs]
                logger.log_image(
                    f"{prefix}/pianoroll", [str(p) for _, p in pngs], step=step, caption=captions
                )
            if self.log_midi:
                # Saved into the run's files (copied or linked offline, uploaded when synced).
                base = items[0]["midi"].parent.parent.parent  # keeps samples/epoch_XXX/ in the run
                for item in items:
                    logger.experiment.save(str(item["midi"]), base_path=str(base), policy="now")
        elif isinstance(logger, TensorBoardLogger):
            writer = logger.experiment
            for i, png in pngs:
                writer.add_image(f"{prefix}/pianoroll_{i}", _png_array(png), step, dataformats="HWC")
            writer.flush()
        if wavs:
            self._log_audio(logger, prefix, wavs, step, epoch)

    def _log_audio(
        self, logger: Logger, prefix: str, wavs: list[tuple[int, Path]], step: int, epoch: int
    ) -> None:
        if isinstance(logger, WandbLogger) and _wandb_audio_ok():
            logger.log_audio(
                f"{prefix}/audio",
                [str(p) for _, p in wavs],
                step=step,
                caption=[f"{prefix} {i} (epoch {epoch})" for i, _ in wavs],
                sample_rate=[self.sample_rate] * len(wavs),
            )
        elif isinstance(logger, TensorBoardLogger):
            for i, wav in wavs:
                audio, rate = read_wav_mono(wav)
                logger.experiment.add_audio(
                    f"{prefix}/audio_{i}", torch.from_numpy(audio)[None], step, sample_rate=rate
                )
            logger.experiment.flush()


@dataclass
class _PendingAudio:
    """A WAV being rendered in the background, and where to log it when done."""

    prefix: str
    index: int
    step: int
    epoch: int
    wav: Path
    future: Future


_warned_no_soundfile = False


def _wandb_audio_ok() -> bool:
    """wandb.Audio needs the ``soundfile`` package; without it audio stays on disk (one warning)."""
    global _warned_no_soundfile
    if importlib.util.find_spec("soundfile") is not None:
        return True
    if not _warned_no_soundfile:
        _warned_no_soundfile = True
        warnings.warn(
            "wandb.Audio needs the soundfile package (pip install soundfile): audio is kept on disk only",
            stacklevel=2,
        )
    return False


def _png_array(path: Path) -> np.ndarray:
    """A PNG as an (H, W, 3) uint8 array (TensorBoard's ``add_image`` layout)."""
    from matplotlib.image import imread

    image = imread(path)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    return image[..., :3]
