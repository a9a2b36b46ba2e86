"""Piano-roll RNN and WaveNet x Bernoulli and NADE heads, and the polyphonic benchmark (`muselab.bench.poly`).

Causality, generation = scoring, the receptive field, the benchmark metric against a hand
computation, NADE as a proper distribution, and short real training runs on a Boulanger ``.mat``
this file writes and on the Bach chorales.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import scipy.io
import torch
import yaml
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger

from callbacks.poly_nll import PolyNLLCallback, poly_nll
from datamodules import MusicDataModule
from datamodules.representations import PianoRollRepresentation, build_representation
from datamodules.sources import BoulangerSource, load_boulanger
from lightning_modules.base import load_model
from lightning_modules.frame import PianoRollModule
from lightning_modules.layers.heads import HEADS, BernoulliHead, NADEHead
from lightning_modules.pianoroll_rnn import PianoRollRNN
from lightning_modules.wavenet import WaveNet
from muselab.bench import poly
from tests.helpers import CONF_DIR, compose_train

MODELS = {
    "rnn-lstm": (PianoRollRNN, {"cell": "lstm", "hidden_size": 24, "num_layers": 2}),
    "rnn-gru": (PianoRollRNN, {"cell": "gru", "hidden_size": 24, "num_layers": 2}),
    "wavenet": (
        WaveNet,
        {
            "residual_channels": 16,
            "gate_channels": 16,
            "skip_channels": 24,
            "hidden_size": 24,
            "layers_per_stack": 3,
            "n_stacks": 2,
        },
    ),
}
HEAD_NAMES = ["bernoulli", "nade"]
HEAD_KWARGS = {"bernoulli": {}, "nade": {"hidden_units": 16}}
BOULANGER_REPRESENTATION = {"n_tracks": 1, "track_mode": "merge", "steps_per_beat": 1, "pitch_low": 21}


def build(name: str, head: str, representation: PianoRollRepresentation, **extra) -> PianoRollModule:
    cls, kwargs = MODELS[name]
    return cls(representation, head=head, head_kwargs=HEAD_KWARGS[head], **{**kwargs, **extra})


def small_representation(n_tracks: int = 2, n_pitches: int = 12) -> PianoRollRepresentation:
    return PianoRollRepresentation(
        n_tracks=n_tracks, track_mode="index", pitch_low=60, pitch_high=59 + n_pitches
    )


def random_rolls(shape: tuple[int, ...], seed: int = 0, density: float = 0.15) -> torch.Tensor:
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < density).float()


def shifted(x: torch.Tensor) -> torch.Tensor:
    """``x_in`` of `PianoRollModule.context`: frame t-1 at t, silence first."""
    frames = x.reshape(x.shape[0], x.shape[1], -1)
    return torch.cat([torch.zeros_like(frames[:, :1]), frames[:, :-1]], dim=1)


def write_boulanger_mat(path: Path, seed: int = 0, counts: tuple[int, int, int] = (8, 3, 3)) -> Path:
    """A tiny Boulanger-format ``.mat``: object arrays of (frames x 88) 0/1 piano-rolls per split."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> np.ndarray:
        out = np.empty((1, n), dtype=object)
        for i in range(n):
            roll = np.zeros((int(rng.integers(6, 20)), 88))
            for t in range(len(roll)):  # three or four voices, like a chorale
                roll[t, rng.choice(np.arange(30, 70), size=int(rng.integers(3, 5)), replace=False)] = 1
            out[0, i] = roll
        return out

    scipy.io.savemat(
        path, {"traindata": split(counts[0]), "validdata": split(counts[1]), "testdata": split(counts[2])}
    )
    return path


@pytest.fixture(scope="module")
def boulanger_mat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_boulanger_mat(tmp_path_factory.mktemp("boulanger") / "JSB_Chorales.mat")


@pytest.fixture
def boulanger_datamodule(boulanger_mat: Path, cache_dir: Path) -> MusicDataModule:
    return MusicDataModule(
        BoulangerSource(str(boulanger_mat)),
        PianoRollRepresentation(**BOULANGER_REPRESENTATION),
        cache_dir=str(cache_dir),
        window=None,
        batch_size=4,
        min_steps=2,
    )


# --------------------------------------------------------------------------------------------- causality
@pytest.mark.parametrize("head", HEAD_NAMES)
@pytest.mark.parametrize("name", MODELS)
def test_changing_frame_t_never_changes_anything_before_t_plus_1(name: str, head: str) -> None:
    torch.manual_seed(0)
    model = build(name, head, small_representation()).eval()
    x = random_rolls((2, 40, 2, 12))
    t = 17
    x2 = x.clone()
    x2[:, t] = 1 - x2[:, t]
    with torch.no_grad():
        h, h2 = model.context(shifted(x)), model.context(shifted(x2))
        nll, nll2 = model.frame_nll(x), model.frame_nll(x2)
    # The context that predicts frames <= t has not seen frame t; the one predicting t+1 has.
    torch.testing.assert_close(h[:, : t + 1], h2[:, : t + 1], rtol=0, atol=1e-6)
    assert (h[:, t + 1] - h2[:, t + 1]).abs().max() > 1e-4
    # NLL terms of frames < t are untouched; frame t's own term changes (it is the target).
    torch.testing.assert_close(nll[:, :t], nll2[:, :t], rtol=0, atol=1e-5)
    assert (nll[:, t] - nll2[:, t]).abs().min() > 1e-3


@pytest.mark.parametrize("head", HEAD_NAMES)
@pytest.mark.parametrize("name", MODELS)
def test_step_by_step_generation_state_matches_parallel_context(name: str, head: str) -> None:
    """``init_state``/``step`` (generation) computes exactly what ``context`` (scoring) computes."""
    torch.manual_seed(1)
    model = build(name, head, small_representation()).eval()
    x_in = shifted(random_rolls((3, 30, 2, 12), seed=1))
    with torch.no_grad():
        full = model.context(x_in)
        state, steps = model.init_state(3), []
        for t in range(x_in.shape[1]):
            h, state = model.step(x_in[:, t], state)
            steps.append(h)
    torch.testing.assert_close(torch.stack(steps, dim=1), full, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------- WaveNet
@pytest.mark.parametrize(("kernel_size", "layers_per_stack", "n_stacks"), [(2, 3, 2), (3, 2, 3), (2, 5, 1)])
def test_receptive_field_formula_matches_measured_impulse_response(
    kernel_size: int, layers_per_stack: int, n_stacks: int
) -> None:
    torch.manual_seed(2)
    model = WaveNet(
        small_representation(1, 6),
        residual_channels=8,
        gate_channels=8,
        skip_channels=8,
        hidden_size=8,
        kernel_size=kernel_size,
        layers_per_stack=layers_per_stack,
        n_stacks=n_stacks,
        dropout=0.0,
        input_dropout=0.0,
    ).eval()
    expected = 1 + (kernel_size - 1) * n_stacks * (2**layers_per_stack - 1)
    assert model.receptive_field == expected
    length = expected + 20
    t = length - 6
    x_in = torch.rand(1, length, model.units, requires_grad=True)
    h = model.context(x_in)
    (h[0, t] * torch.randn(h.shape[-1])).sum().backward()
    reached = (x_in.grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert reached == list(range(t - expected + 1, t + 1))


def test_wavenet_logs_receptive_field_at_fit_start(
    tmp_path: Path, boulanger_datamodule: MusicDataModule
) -> None:
    model = build("wavenet", "bernoulli", boulanger_datamodule.representation)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=boulanger_datamodule)
    hparams = yaml.safe_load((Path(trainer.logger.log_dir) / "hparams.yaml").read_text())
    assert hparams["model/receptive_field"] == model.receptive_field == 1 + 2 * 7


def test_wavenet_global_conditioning_reaches_every_path() -> None:
    torch.manual_seed(3)
    model = build("wavenet", "bernoulli", small_representation(), n_classes=3).eval()
    x = random_rolls((2, 20, 2, 12), seed=3)
    with torch.no_grad():
        default = model.frame_nll(x)
        torch.testing.assert_close(model.frame_nll(x, torch.tensor([0, 0])), default)  # missing = class 0
        other = model.frame_nll(x, torch.tensor([2, 1]))
        assert (other - default).abs().max() > 1e-3
        mask = torch.ones(2, 20, dtype=torch.bool)
        loss = model.loss({"x": x, "mask": mask, "cond": torch.tensor([2, 1])})["loss"]
        torch.testing.assert_close(loss, other.mean())
        x_in = shifted(x)
        state, steps = model.init_state(2, cond=torch.tensor([2, 1])), []
        for t in range(20):
            h, state = model.step(x_in[:, t], state)
            steps.append(h)
        torch.testing.assert_close(torch.stack(steps, 1), model.context(x_in, torch.tensor([2, 1])))
    # The class reaches generation as a sampling option.
    samples = {}
    for cond in (0, 2):
        torch.manual_seed(0)
        samples[cond] = model.generate(2, 8, cond=cond)
    assert not torch.equal(samples[0], samples[2])
    assert len(model.sample(2, length=8, cond=2)) == 2
    with pytest.raises(ValueError, match="class id"):
        model.sample(1, length=8, cond=3)


# --------------------------------------------------------------------------------------------- heads
def test_nade_is_a_normalised_distribution_over_all_frames() -> None:
    torch.manual_seed(4)
    units = 6
    head = NADEHead(hidden_size=5, units=units, hidden_units=7)
    with torch.no_grad():  # larger weights than at init, so the distribution is far from uniform
        head.W.normal_(0, 2.0)
        head.V.normal_(0, 2.0)
    h = torch.randn(3, 5)
    frames = torch.tensor(list(itertools.product([0.0, 1.0], repeat=units)))  # all 2**units frames
    with torch.no_grad():
        nll = head.nll(h[:, None].expand(3, len(frames), 5), frames[None].expand(3, -1, -1))
    probs = torch.exp(-nll.double())
    torch.testing.assert_close(probs.sum(1), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-5)
    assert (probs.max(1).values / probs.min(1).values > 10).all()


def test_nade_logits_match_the_unit_by_unit_definition() -> None:
    """The k+1-state shortcut equals a_i = b_h + sum_{j<i} x_j W_j computed unit by unit."""
    torch.manual_seed(5)
    head = NADEHead(hidden_size=4, units=10, hidden_units=6)
    h, x = torch.randn(7, 4), random_rolls((7, 10), seed=5, density=0.4)
    x[0] = 0  # a silent frame
    x[1] = 1  # every unit on
    expected = torch.empty(7, 10)
    for i in range(10):
        a = head.bias_h(h) + x[:, :i] @ head.W[:i]
        expected[:, i] = head.bias_v(h)[:, i] + torch.sigmoid(a) @ head.V[i]
    torch.testing.assert_close(head.logits(h, x), expected)


def test_nade_samples_follow_its_own_likelihood() -> None:
    """Sampling unit by unit draws from the distribution ``nll`` scores (total variation < 0.02)."""
    torch.manual_seed(6)
    head = NADEHead(hidden_size=3, units=3, hidden_units=4)
    with torch.no_grad():
        head.W.normal_(0, 2.0)
        head.V.normal_(0, 2.0)
        head.bias_v.bias.zero_()
        h = torch.randn(1, 3).expand(40_000, 3)
        samples = head.sample(h)
        frames = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))
        expected = torch.exp(-head.nll(h[: len(frames)], frames))
    codes = (samples * torch.tensor([4.0, 2.0, 1.0])).sum(1).long()
    observed = torch.bincount(codes, minlength=8).double() / len(samples)
    assert 0.5 * (observed - expected.double()).abs().sum() < 0.02


def test_heads_registry_has_both_heads() -> None:
    assert HEADS["bernoulli"] is BernoulliHead and HEADS["nade"] is NADEHead


# --------------------------------------------------------------------------------------------- metric
class PreviousFrameModel(PianoRollModule):
    """A fixed model: each key is on with p=0.8 after a frame where it was on, p=0.25 otherwise."""

    def __init__(self) -> None:
        super().__init__(PianoRollRepresentation(n_tracks=1, track_mode="merge", pitch_low=60, pitch_high=61))
        self.head = BernoulliHead(self.units, self.units).double()  # float64: the check is to 1e-12
        logit = lambda p: math.log(p / (1 - p))  # noqa: E731
        with torch.no_grad():
            self.head.proj.weight.copy_(torch.eye(2, dtype=torch.float64) * (logit(0.8) - logit(0.25)))
            self.head.proj.bias.fill_(logit(0.25))

    def context(self, x_in: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return x_in


def test_poly_nll_matches_a_hand_computation() -> None:
    sequences = [
        np.array([[1, 0], [1, 1], [0, 1]]),
        np.array([[0, 0], [1, 0]]),
        np.array([[1, 1]]),  # one frame: nothing to predict
    ]
    log = math.log
    # seq 1: [1,1] after [1,0]: on after on (0.8), on after off (0.25);
    #        [0,1] after [1,1]: off after on (0.2), on after on (0.8).
    # seq 2: [1,0] after [0,0]: on after off (0.25), off after off (0.75). 3 predicted frames.
    expected = -(log(0.8) + log(0.25) + log(0.2) + log(0.8) + log(0.25) + log(0.75)) / 3
    model = PreviousFrameModel()
    assert poly_nll(model, sequences) == pytest.approx(expected, rel=1e-12)
    assert poly_nll(model, sequences, max_frames=1) == pytest.approx(expected, rel=1e-12)
    assert poly_nll(model.float(), sequences) == pytest.approx(expected, rel=1e-6)


def test_poly_nll_is_the_same_batched_or_one_sequence_at_a_time() -> None:
    torch.manual_seed(7)
    model = build("wavenet", "nade", small_representation())
    sequences = [random_rolls((n, 2, 12), seed=n).numpy() for n in (5, 17, 2, 30)]
    with torch.no_grad():
        terms = [model.eval().frame_nll(torch.as_tensor(s)[None])[0, 1:].double() for s in sequences]
    expected = float(torch.cat(terms).sum()) / sum(len(s) - 1 for s in sequences)
    model.train()
    assert poly_nll(model, sequences) == pytest.approx(expected, rel=1e-6)
    assert poly_nll(model, sequences, max_frames=20) == pytest.approx(expected, rel=1e-6)
    assert model.training  # restored


# --------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("head", HEAD_NAMES)
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("data", ["boulanger", "bach"])
def test_fast_dev_run_and_multitrack_samples(
    name: str, head: str, data: str, request: pytest.FixtureRequest
) -> None:
    datamodule = request.getfixturevalue(f"{data}_datamodule")
    model = build(name, head, datamodule.representation)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = L.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    n_tracks = datamodule.representation.n_tracks
    musics = model.sample(2, length=12)
    assert len(musics) == 2 and all(len(m.tracks) == n_tracks for m in musics)
    roll = datamodule.representation.encode(musics[0])
    assert roll.shape[1:] == (n_tracks, datamodule.representation.n_pitches) and len(roll) <= 12


# --------------------------------------------------------------------------------------------- configs
EXPERIMENTS = sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("poly_*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_poly_experiments_build_their_model_and_head(
    experiment: str, tmp_path: Path, boulanger_mat: Path
) -> None:
    cfg = compose_train(
        [f"experiment={experiment}", f"data.source.path={boulanger_mat}"], output_dir=tmp_path
    )
    assert cfg.data.source._target_.endswith("BoulangerSource") and cfg.data.window is None
    assert cfg.callbacks.model_checkpoint.monitor == "val/poly_nll"
    representation = build_representation(instantiate(cfg.representation, _convert_="all"))
    assert representation.describe().shape_per_step == (1, 88)
    model = instantiate(cfg.model, representation=representation, _convert_="all")
    _, family, head = experiment.split("_")
    assert isinstance(model, WaveNet if family == "wavenet" else PianoRollRNN)
    assert isinstance(model.head, HEADS[head])
    if family != "wavenet":
        assert model.hparams.cell == ("gru" if family == "gru" else "lstm")
    callback = instantiate(cfg.callbacks.poly_nll)
    assert isinstance(callback, PolyNLLCallback) and callback.path == str(boulanger_mat)


@pytest.mark.parametrize("model_config", ["pianoroll_rnn", "wavenet"])
def test_head_is_one_override_away(model_config: str, tmp_path: Path) -> None:
    default = compose_train([f"model={model_config}"], output_dir=tmp_path).model.head
    other = {"nade": "bernoulli", "bernoulli": "nade"}[default]
    cfg = compose_train(
        [f"model={model_config}", f"model.head={other}", "model.head_kwargs={}"], output_dir=tmp_path
    )
    representation = build_representation(instantiate(cfg.representation, _convert_="all"))
    model = instantiate(cfg.model, representation=representation, _convert_="all")
    assert isinstance(model.head, HEADS[other]) and model.units == 4 * 49


# --------------------------------------------------------------------------------------------- bench
def test_bench_section_is_replaced_merged_and_the_rest_kept(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        "# Benchmarks\n\n## Data\n\nkeep me\n\n" + poly.SECTION + "\n\nstale\n\n## Later\n\nkeep too\n"
    )
    row = {
        "set": "jsb",
        "model": "rnn_nade",
        "head": "nade",
        "params": 1000,
        "val": 5.9,
        "test": 5.4321,
        "epochs": 3,
        "best_epoch": 2,
        "wall_s": 60.0,
        "max_minutes": 1.0,
        "threads": 1,
    }
    meta = {"command": "make bench-poly", "hardware": "cpu", "date": "today"}
    poly.write_section(docs, [row], [], meta)
    poly.write_section(docs, [{**row, "model": "wavenet_nade", "test": 6.789}], [], meta)
    text = docs.read_text()
    assert "keep me" in text and "keep too" in text and "stale" not in text
    assert text.count(poly.SECTION) == 1 and text.index("## Data") < text.index(poly.SECTION) < text.index(
        "## Later"
    )
    assert "5.432" in text and "6.789" in text and "≤ 5.5 ✓" in text  # both runs, merged
    assert "| RNN-NADE (Boulanger-Lewandowski 2012) | 5.56 | 2.31 | 5.60 | 7.05 |" in text


def test_bench_end_to_end_on_a_tiny_mat(tmp_path: Path, cache_dir: Path) -> None:
    mat = write_boulanger_mat(tmp_path / "JSB_Chorales.mat", seed=1)
    docs = tmp_path / "benchmarks.md"
    out = poly.main(
        [
            f"data_dir={tmp_path}",
            "sets=jsb",
            "models=wavenet_bernoulli",
            "max_epochs=2",
            "threads=1",
            f"docs={docs}",
            f"runs_dir={tmp_path / 'runs'}",
            f"paths.cache_dir={cache_dir}",
            "model.residual_channels=8",
            "model.skip_channels=8",
            "model.hidden_size=8",
            "model.layers_per_stack=2",
            "model.n_stacks=1",
        ]
    )
    [row] = out["results"]
    assert row["epochs"] == 2 and 1 <= row["best_epoch"] <= 2
    # The reported figure is the exact metric of the best-validation checkpoint on the raw test split.
    [best] = (poly.ROOT / row["run_dir"] / "checkpoints").glob("epoch*.ckpt")
    expected = poly_nll(load_model(best), load_boulanger(mat)["test"])
    assert row["test"] == pytest.approx(expected, rel=1e-6)
    assert {s["n"] for s in out["sampling"]} == {1, 8} and all(s["seconds"] > 0 for s in out["sampling"])
    text = docs.read_text()
    assert f"**{row['test']:.3f}**" in text and "### Sampling speed" in text
