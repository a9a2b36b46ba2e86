"""The core every model kind plugs into: token models, sampling options and primers end to end,
several optimisers with manual optimisation, and top-k / top-p sampling."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import hydra
import lightning as L
import muspy
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datamodules import MusicDataModule
from datamodules.representations import MelodyRepresentation, Representation
from datamodules.sources import Music21CorpusSource
from lightning_modules.base import GenerativeModule, PromptNotSupported, load_model
from lightning_modules.layers.sampling import filter_logits, sample_logits
from lightning_modules.pianoroll_rnn import PianoRollRNN
from lightning_modules.token import TokenModule
from lightning_modules.wavenet import WaveNet
from tests.conftest import bach_representation
from tests.helpers import compose_train


# ------------------------------------------------------------------------------------ test models
class TinyTokenRNN(TokenModule):
    """The smallest real token model: a GRU language model whose cache is its hidden state."""

    supports_cache = True

    def __init__(self, representation: Representation | dict, hidden_size: int = 16, **kwargs) -> None:
        super().__init__(representation, **kwargs)
        self.save_model_hyperparameters()
        self.embed = nn.Embedding(self.input_vocab_size, hidden_size)
        self.rnn = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.out = nn.Linear(hidden_size, self.n_classes)

    def forward(self, tokens: torch.Tensor, cache=None):
        h, cache = self.rnn(self.embed(tokens), cache)
        return self.out(h), cache


class ToyGAN(GenerativeModule):
    """Two networks, two named optimisers, manual optimisation and its own gradient clipping."""

    def __init__(
        self, representation: Representation | dict, noise: int = 8, steps: int = 16, **kwargs
    ) -> None:
        super().__init__(representation, **kwargs)
        self.save_model_hyperparameters()
        self.automatic_optimization = False
        self.steps, self.noise = steps, noise
        self.shape = (steps, *self.representation.describe().shape_per_step)
        units = int(np.prod(self.shape))
        self.generator = nn.Linear(noise, units)
        self.discriminator = nn.Linear(units, 1)

    def optimizer_parameters(self, name: str):
        return getattr(self, name).parameters()

    def fake(self, n: int) -> torch.Tensor:
        return torch.sigmoid(self.generator(torch.randn(n, self.noise, device=self.device)))

    def training_step(self, batch, batch_idx):
        g_opt, d_opt = self.optimizers()
        real = batch["x"][:, : self.steps].flatten(1)
        fake = self.fake(len(real))
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        d_loss = F.binary_cross_entropy_with_logits(self.discriminator(real), ones)
        d_loss = d_loss + F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), zeros)
        d_opt.zero_grad()
        self.manual_backward(d_loss)
        self.clip(d_opt)
        d_opt.step()
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        self.clip(g_opt)
        g_opt.step()
        self.log_figures({"loss": g_loss + d_loss, "d_loss": d_loss, "g_loss": g_loss}, "train", len(real))

    def loss(self, batch):
        real = batch["x"][:, : self.steps].flatten(1)
        return {
            "loss": F.binary_cross_entropy_with_logits(self.discriminator(real), torch.ones(len(real), 1))
        }

    @torch.no_grad()
    def generate(self, n, length, temperature=1.0, prompt=None):
        return (self.fake(n) > 0.5).reshape(n, *self.shape)[:, :length]


@pytest.fixture(scope="module")
def melody_datamodule(tmp_path_factory: pytest.TempPathFactory) -> MusicDataModule:
    """The Bach chorales' soprano lines as melody tokens (the melody track found by its name)."""
    dm = MusicDataModule(
        Music21CorpusSource("bach", limit=12),
        MelodyRepresentation(pitch_low=48, pitch_high=84),
        cache_dir=str(tmp_path_factory.mktemp("melody-cache")),
        window=32,
        batch_size=8,
        n_jobs=1,
    )
    dm.prepare_data()
    dm.setup()
    return dm


def quick_trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    defaults = dict(
        default_root_dir=str(tmp_path), logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def save_checkpoint(model: GenerativeModule, path: Path) -> Path:
    """A checkpoint as Lightning writes one (hyper-parameters, weights, MuseLab's model class)."""
    checkpoint = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


# ------------------------------------------------------------------------------------ TokenModule
def test_token_module_trains_and_reports_nats_per_token(tmp_path: Path, melody_datamodule) -> None:
    model = TinyTokenRNN(melody_datamodule.representation)
    assert model.bos_id == model.vocab_size == melody_datamodule.representation.vocab_size
    batch = next(iter(melody_datamodule.train_dataloader()))
    out = model.loss(batch)
    # Untrained, the loss is about log(vocabulary): nats per token.
    assert abs(out["loss"].item() - math.log(model.vocab_size)) < 0.5
    assert 0.0 <= out["accuracy"].item() <= 1.0
    # Padding is masked out: changing padded tokens changes nothing.
    padded = {"x": batch["x"].clone(), "mask": batch["mask"].clone()}
    padded["mask"][:, -5:] = False
    other = {"x": padded["x"].clone(), "mask": padded["mask"]}
    other["x"][:, -5:] = 1
    torch.testing.assert_close(model.loss(padded)["loss"], model.loss(other)["loss"])
    trainer = quick_trainer(tmp_path, fast_dev_run=True)
    trainer.fit(model, datamodule=melody_datamodule)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert "val/accuracy" in trainer.callback_metrics


def test_greedy_sampling_with_and_without_the_cache_gives_the_same_tokens(melody_datamodule) -> None:
    torch.manual_seed(0)
    model = TinyTokenRNN(melody_datamodule.representation).eval()
    cached = model.generate(3, 40, temperature=0.0, use_cache=True)
    full = model.generate(3, 40, temperature=0.0, use_cache=False)
    assert cached.shape == (3, 40) and torch.equal(cached, full)
    # Sampling draws from the same distributions either way: the same seed, the same tokens.
    draws = []
    for use_cache in (True, False):
        torch.manual_seed(5)
        draws.append(model.generate(4, 40, temperature=1.0, top_k=5, use_cache=use_cache))
    assert torch.equal(draws[0], draws[1])


def test_token_model_continues_a_primer_and_decodes_monophonic_music(
    tmp_path: Path, melody_datamodule
) -> None:
    from muselab.sample import main

    representation = melody_datamodule.representation
    model = TinyTokenRNN(representation)
    primer = representation.decode(np.array([14, 0, 0, 0, 16, 0, 18, 1], dtype=np.int64))  # 60, 62, 64
    musics = model.sample(2, length=32, prompt=primer, top_p=0.9)
    for music in musics:
        tokens = representation.encode(music)
        assert tokens[:7].tolist() == [14, 0, 0, 0, 16, 0, 18]
        notes = music.tracks[0].notes
        assert all(a.time + a.duration <= b.time for a, b in itertools.pairwise(notes))
    # From the command line: a pitch-list primer, through a checkpoint, with options.
    ckpt = save_checkpoint(model, tmp_path / "token.ckpt")
    main(
        [
            f"ckpt={ckpt}",
            "n=2",
            f"out={tmp_path / 's'}",
            "prompt=60,-2,-2,-2,62,-2,64",
            "render=false",
            "top_k=4",
        ]
    )
    for path in sorted((tmp_path / "s").glob("*.mid")):
        notes = muspy.read_midi(path).adjust_resolution(4).tracks[0].notes
        assert [(n.time, n.pitch) for n in notes[:3]] == [(0, 60), (4, 62), (6, 64)]


# ------------------------------------------------------------------------------------ primers for frame models
@pytest.mark.parametrize("model_class", [PianoRollRNN, WaveNet])
def test_piano_roll_models_continue_a_midi_primer(model_class, tmp_path: Path) -> None:
    from muselab.sample import main

    representation = bach_representation()
    model = model_class(representation, hidden_size=16, head="nade", head_kwargs={"hidden_units": 8})
    # A two-voice primer, one bar long, written to MIDI with the chorale voices' names.
    primer = muspy.Music(resolution=4, tempos=[muspy.Tempo(0, 100.0)])
    primer.tracks.append(
        muspy.Track(program=52, name="Soprano", notes=[muspy.Note(0, 72, 8, 80), muspy.Note(8, 74, 8, 80)])
    )
    primer.tracks.append(muspy.Track(program=52, name="Bass", notes=[muspy.Note(0, 48, 16, 80)]))
    midi = tmp_path / "primer.mid"
    muspy.write_midi(midi, primer)
    roll = representation.encode(primer)
    musics = model.sample(2, prompt=primer)
    for music in musics:
        sample_roll = representation.encode(music)
        assert len(sample_roll) <= len(roll) + model.default_length
        assert np.array_equal(sample_roll[: len(roll)], roll)  # the primer's notes, then the model's
    ckpt = save_checkpoint(model, tmp_path / "model.ckpt")
    assert type(load_model(ckpt)) is model_class
    main([f"ckpt={ckpt}", "n=1", f"out={tmp_path / 's'}", f"prompt={midi}", "length=32", "render=false"])
    written = representation.encode(muspy.read_midi(tmp_path / "s" / "sample_00.mid"))
    assert np.array_equal(written[:16], roll)


def test_options_and_primers_a_model_cannot_take_are_clear_errors(tmp_path: Path) -> None:
    from muselab.sample import main

    model = PianoRollRNN(bach_representation(), hidden_size=8)
    with pytest.raises(ValueError, match=r"does not take the sampling option\(s\) 'top_k'; it takes: none"):
        model.sample(1, top_k=3)
    gan = ToyGAN(bach_representation())
    with pytest.raises(PromptNotSupported, match="ToyGAN cannot continue a primer"):
        gan.sample(1, prompt=muspy.Music(resolution=4))
    with pytest.raises(ValueError, match="primer is 16 steps long"):
        model.sample(1, length=10, prompt=np.zeros((16, 4, 49), dtype=bool))
    ckpt = save_checkpoint(gan, tmp_path / "gan.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main([f"ckpt={ckpt}", "prompt=60,62", f"out={tmp_path}"])
    assert exit_info.value.code == 2


# ------------------------------------------------------------------------------------ optimisers
def test_two_optimisers_and_manual_optimisation_under_the_default_trainer_config(
    tmp_path: Path, bach_datamodule
) -> None:
    from functools import partial

    cfg = compose_train(["logger=none", "callbacks=none"], output_dir=tmp_path)
    adam = partial(torch.optim.Adam, lr=1e-2, betas=(0.5, 0.999))
    model = ToyGAN(
        bach_datamodule.representation,
        optimizer={"generator": adam, "discriminator": adam},
        gradient_clip_val=0.5,
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = hydra.utils.instantiate(
        cfg.trainer, max_epochs=1, limit_train_batches=2, limit_val_batches=1, enable_progress_bar=False
    )
    trainer.fit(model, datamodule=bach_datamodule)
    optimizers = trainer.optimizers
    assert len(optimizers) == 2
    assert {id(p) for p in optimizers[0].param_groups[0]["params"]} == {
        id(p) for p in model.generator.parameters()
    }
    for name, p in model.named_parameters():
        assert not torch.equal(before[name], p.detach()), f"{name} was not updated"
    assert {"train/d_loss", "train/g_loss", "val/loss"} <= set(trainer.callback_metrics)


# ------------------------------------------------------------------------------------ sampling filters
def test_top_k_and_top_p_on_hand_made_logits() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 0.0]])
    kept = lambda x: torch.isfinite(x).int().tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [[1, 1, 0, 0], [1, 1, 1, 1]]  # ties at the k-th are kept
    assert kept(filter_logits(logits, top_k=1)) == [[1, 0, 0, 0], [0, 0, 1, 0]]
    # softmax of row 0: 0.644, 0.237, 0.087, 0.032. top_p 0.7: 0.644 < 0.7, so the second class too.
    assert kept(filter_logits(logits[:1], top_p=0.7)) == [[1, 1, 0, 0]]
    assert kept(filter_logits(logits[:1], top_p=0.6)) == [[1, 0, 0, 0]]
    assert kept(filter_logits(logits[:1], top_p=0.9)) == [[1, 1, 1, 0]]
    assert kept(filter_logits(logits[:1], top_p=0.01)) == [[1, 0, 0, 0]]  # the best class always stays
    assert sample_logits(logits, temperature=0.0).tolist() == [0, 2]
    torch.manual_seed(0)
    draws = torch.stack([sample_logits(logits[:1], top_k=2) for _ in range(200)])
    assert set(draws.flatten().tolist()) == {0, 1}
    # A diverged model's logits never crash sampling.
    nan = torch.tensor([[math.nan, math.nan], [math.nan, 1.0]])
    assert sample_logits(nan).tolist() == [0, 1]
