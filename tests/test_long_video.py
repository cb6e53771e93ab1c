"""Long videos (pipelines/long_video.py, pipelines/fifo.py): FIFO-Diffusion's queue and autoregressive prediction.

FIFO degenerates to ordinary sampling bit for bit, walks every frame through every level once on a
monotone diagonal, holds the same tensors at 4× the length and runs on a tiny model of every family;
autoregressive clips start exactly from the frames they continue (re-encoded, for a causal VAE); a video is
a function of its seed; bad arguments are one-line errors before any model call; the CLI writes a long file.
"""
from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest
import torch

import moviola
from moviola.autoencoders import IdentityAutoencoder
from moviola.cli import main
from moviola.config import load_config
from moviola.diffusion import CLEAN, build_schedule, spaced_timesteps
from moviola.diffusion.schedule import randn
from moviola.models.registry import FAMILIES, build_model
from moviola.pipelines import FIFO, Autoregressive, Pipeline, Sampling
from moviola.pipelines.fifo import fifo, windows
from moviola.pipelines.long_video import autoregressive, chunk_seed

FRAMES, SIZE = 4, 16
ROOT = Path(__file__).resolve().parents[1]
TINY = {  # the smallest model of each family (tests/test_registry.py)
    "latte": ["model.patch_size=8", "model.hidden_size=32", "model.depth=2", "model.num_heads=2"],
    "walt": ["model.patch_size=2", "model.hidden_size=16", "model.depth=2", "model.num_heads=2",
             "model.pos_grid=[4,8,8]"],
    "video_ldm": ["model.block_out_channels=[16,32]", "model.layers_per_block=1", "model.num_heads=2",
                  "model.norm_num_groups=8", "model.temporal_head_channels=8"],
    "videocrafter": ["model.block_out_channels=[16,32]", "model.layers_per_block=1", "model.num_heads=2",
                     "model.norm_num_groups=8", "model.relative_position=true"],
}


class Recorder(torch.nn.Module):
    """Wraps a denoiser and keeps the inputs of every call."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.calls = model, []
        self.accepts, self.learned_sigma = model.accepts, model.learned_sigma

    def forward(self, x, t, cond=None):
        self.calls.append((tuple(x.shape), t.clone(), cond))
        return self.inner(x, t, cond)


def make_pipe(family: str = "latte", context: bool = False, size: int = SIZE, *extra: str) -> tuple[Pipeline, Recorder]:
    cfg = load_config(overrides=[f"model.family={family}", *TINY[family], "conditions.num_classes=48",
                                 f"conditions.context_frames={'true' if context else 'false'}",
                                 "conditions.context_mode=prefix2", f"data.size={size}", f"data.frames={FRAMES}",
                                 "sample.steps=4", *extra])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.conditions, 3)
    with torch.no_grad():  # live output layers: a zero model would make every check trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rec = Recorder(model)
    return Pipeline(rec, IdentityAutoencoder(), build_schedule(cfg.diffusion), cfg, device="cpu"), rec


def gens(seed: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


# ------------------------------------------------------------------ (a) FIFO reduces to ordinary sampling
ONE_LEVEL = FIFO(partitions=1, lookahead=False, init="noise", frames_per_level=FRAMES)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_fifo_with_one_partition_no_lookahead_and_one_level_is_ordinary_sampling(sampler, eta):
    """The issue's test: the queue with every frame at one level walks exactly ordinary sampling's steps, and the
    clips after the first are ordinary samples from the noise (and step noise) that follow in each video's stream."""
    pipe, _ = make_pipe()
    args = dict(labels=[5, 9], steps=4, cfg=2.0, seed=3, sampler=sampler, eta=eta)
    ordinary = pipe(num_frames=FRAMES, **args)
    assert torch.equal(pipe(num_frames=FRAMES, long=ONE_LEVEL, **args), ordinary)
    long = pipe(num_frames=3 * FRAMES, long=ONE_LEVEL, **args)
    conds = pipe.conditions(2, FRAMES, SIZE, SIZE, labels=[5, 9])
    g = gens(3, 2)
    for clip in range(3):  # clip after clip from one generator per video
        x_T = randn((2, 3, FRAMES, SIZE, SIZE), generator=g)
        z = pipe.denoise(conds, x_T, g, 2.0, sampler, 4, eta)
        assert torch.equal(long[:, :, clip * FRAMES:(clip + 1) * FRAMES], pipe.decode(z)), clip
    assert torch.equal(long[:, :, :FRAMES], ordinary)


# ------------------------------------------------------------------ (b) the diagonal
def walk(pipe, options: FIFO, frames: int, steps: int):
    """Each latent frame's moves (level -> target) in order, and every iteration's Step."""
    moves: dict[int, list[tuple[int, int]]] = {}
    seen = []

    def on_step(step):
        seen.append(step)
        moving = [(i, a, b) for i, a, b in zip(step.frames, step.levels, step.targets) if a != b]
        assert len({i for i, _, _ in moving}) == len(moving)  # a frame takes at most one step per iteration
        for i, a, b in moving:
            moves.setdefault(i, []).append((a, b))

    conds = pipe.conditions(1, FRAMES, SIZE, SIZE, labels=[3])
    video = fifo(pipe, conds, gens(0, 1), Sampling("ddim", steps, 0.0, 2.0), frames, SIZE, SIZE, options,
                 on_step=on_step)
    assert video.shape == (1, 3, frames, SIZE, SIZE)
    return moves, seen


@pytest.mark.parametrize("options,steps", [
    (FIFO(partitions=2, lookahead=True, init="noise"), 8),  # the paper's diagonal: S = f·n
    (FIFO(partitions=2, lookahead=False, init="noise", frames_per_level=2), 8),  # pairs of frames, 2 steps apart
    (FIFO(partitions=1, lookahead=True, init="clip"), 8),  # 2 steps between neighbours, the queue from a clip
])
def test_the_queue_is_a_monotone_diagonal_and_each_frame_walks_every_level_once(options, steps):
    pipe, rec = make_pipe()
    frames = 5 * FRAMES
    moves, seen = walk(pipe, options, frames, steps)
    levels = list(spaced_timesteps(steps, 1000))
    full = list(zip(levels, levels[1:] + [CLEAN]))
    front = FRAMES // 2 if options.lookahead else 0
    for step in seen:
        queue = step.levels[front:]
        assert all(a <= b for a, b in zip(queue, queue[1:])), queue  # head least noisy, tail noisiest
        assert step.frames[front:] == sorted(step.frames[front:])  # the video's frames in order
        assert all(a == b for a, b in zip(step.levels[:front], step.targets[:front]))  # the front never moves
        if front and step.frames[front] > 0:  # once frames have left: the last ones, clean, before the head
            assert step.levels[:front] == [CLEAN] * front and step.frames[front - 1] == step.frames[front] - 1
    for i in range(frames):  # every frame made walked every level once, in order (a clip's frames: from theirs)
        if options.init == "noise" or i >= FRAMES * options.partitions:
            assert moves[i] == full, i
        else:
            assert moves[i] == full[len(full) - len(moves[i]):] and moves[i], i
    if options.frames_per_level == 1:  # the model saw one level per frame, not one per window
        assert any(t.dim() == 2 and len(set(t[0].tolist())) == FRAMES for _, t, _ in rec.calls)
    assert all(shape[2] == FRAMES for shape, _, _ in rec.calls)  # every call is one native clip


@pytest.mark.parametrize("sampler,eta", [("ddim", 1.0), ("ddpm", 0.0)])
def test_plan_step_row_by_row_is_sample_with_the_plan(sampler, eta):
    """FIFO's step: one plan row at a time through plan_step walks a diagonal plan exactly as sample() does."""
    from moviola.diffusion import diagonal_plan, plan_targets, plan_step, sample

    schedule = build_schedule(load_config().diffusion)
    plan = diagonal_plan(spaced_timesteps(4, 1000), 3, lag=1)  # (6, 3): frames 1 and 2 start later
    fn = lambda x, t: 0.5 * torch.tanh(x) + 0.001 * t.float().reshape(x.shape[0], 1, -1, 1, 1)
    x_T = torch.randn(2, 3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    whole = sample(fn, schedule, x_T.shape, sampler=sampler, eta=eta, plan=plan, x_T=x_T,
                   generator=gens(1, 2))
    x, g = x_T, gens(1, 2)
    for levels, targets in zip(plan, plan_targets(plan)):
        x = plan_step(fn, schedule, x, levels, targets, sampler=sampler, eta=eta, generator=g).x_prev
    assert torch.equal(x, whole)


def test_windows_tile_the_queue_and_lookahead_sees_half_a_clip_before():
    assert windows(8, 4, 0) == [(0, 0, 4), (4, 4, 8)]
    assert windows(10, 4, 2) == [(0, 2, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)]
    assert windows(12, 5, 2) == [(0, 2, 5), (3, 5, 8), (6, 8, 11), (7, 11, 12)]  # the last one moved back


# ------------------------------------------------------------------ (c) autoregressive context
def test_autoregressive_clips_start_exactly_from_the_frames_they_continue():
    pipe, rec = make_pipe(context=True)
    conds = pipe.conditions(2, FRAMES, SIZE, SIZE, labels=[5, 9])
    chunks = []
    sampling = Sampling("ddim", 4, 0.0, 2.0, context_guidance=1.5)
    video = autoregressive(pipe, conds, [3, 4], sampling, FRAMES + 5, SIZE, SIZE, 2,
                           on_chunk=lambda c, z, pixels: chunks.append((z, pixels)))
    assert video.shape == (2, 3, FRAMES + 5, SIZE, SIZE) and len(chunks) == 4  # 4 + 2 + 2 + 1 (of 2) frames
    for (z0, _), (z1, _) in zip(chunks, chunks[1:]):
        assert torch.equal(z1[:, :, :2], z0[:, :, -2:])  # the overlap is the clip before's last frames, exactly
    expected = torch.cat([chunks[0][1]] + [p[:, :, 2:] for _, p in chunks[1:]], dim=2)[:, :, :FRAMES + 5]
    assert torch.equal(video, expected)  # the clips joined without the repeated frames
    given = [cond for _, _, cond in rec.calls if cond.context_mask is not None and cond.context_mask.any()]
    assert given and given[0].context_mask[0, 0, :, 0, 0].tolist() == [1, 1, 0, 0]
    assert given[0].context.shape[0] == 6  # guided: cond, uncond (class nulled, frames kept), no frames (s = 1.5)
    with pytest.warns(UserWarning, match="context_guidance=1.5 is ignored"):  # clip 0 alone gives no frames
        first = pipe(labels=[5, 9], num_frames=FRAMES, steps=4, cfg=2.0, seed=3, context_guidance=1.5)
    assert torch.equal(video[:, :, :FRAMES], first)  # clip 0 is the ordinary sample of the seed
    long = pipe(labels=[5, 9], num_frames=FRAMES + 5, steps=4, cfg=2.0, seed=3, context_guidance=1.5,
                long=Autoregressive(context_frames=2))
    assert torch.equal(long, video)


def test_a_causal_vae_continues_from_the_last_five_frames_encoded_again():
    """W.A.L.T's long videos: the last 5 pixel frames of a clip, encoded again, are the next clip's 2 latent frames."""
    pipe = moviola.load_pipeline(ROOT / "checkpoints" / "shapes-walt-t2v", device="cpu")
    conds = pipe.conditions(1, 17, 32, 32, prompt=["a green square moving down"])
    chunks = []
    video = autoregressive(pipe, conds, [0], Sampling("ddim", 3, 0.0, 4.0), 29, 32, 32, 2,
                           on_chunk=lambda c, z, pixels: chunks.append((z, pixels)))
    assert len(chunks) == 2 and video.shape == (1, 3, 29, 32, 32)
    (z0, p0), (z1, p1) = chunks
    assert z1.shape[2] == 5 and torch.equal(z1[:, :, :2], pipe.autoencoder.encode(p0[:, :, -5:]))
    assert torch.equal(video, torch.cat([p0, p1[:, :, 5:]], dim=2))


# ------------------------------------------------------------------ (d) memory
def live_tensor_bytes() -> int:
    """Bytes of every tensor storage alive in the process (each storage once)."""
    seen, total = set(), 0
    with warnings.catch_warnings():  # isinstance on some of torch's deprecated objects warns
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects()
                   if isinstance(obj, torch.Tensor) and not isinstance(obj, torch.nn.Parameter)]
    for obj in tensors:
        storage = obj.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def test_fifo_holds_the_same_tensors_at_four_times_the_length():
    pipe, rec = make_pipe()
    conds = pipe.conditions(1, FRAMES, SIZE, SIZE, labels=[3])
    frame = 3 * SIZE * SIZE * 4  # bytes of one latent (and pixel) frame

    shapes = set()

    def peaks(frames: int) -> tuple[int, int]:
        held, live = [], []

        def on_step(step):
            shapes.update(shape for shape, _, _ in rec.calls)
            rec.calls.clear()  # the recorder's own history would grow
            held.append(step.held_bytes)
            live.append(live_tensor_bytes())
        assert fifo(pipe, conds, gens(0, 1), Sampling("ddim", 8, 0.0, 2.0), frames, SIZE, SIZE,
                    FIFO(partitions=2), on_frames=lambda pixels: None, on_step=on_step) is None
        return max(held), max(live)

    held, live = peaks(2 * FRAMES)
    held4, live4 = peaks(8 * FRAMES)
    assert held4 == held == (8 + 2 + FRAMES - 1) * frame  # the queue (8), its front (2), < one clip to decode
    assert live4 <= live + frame  # the whole process: no tensor grows with the length (a history would: 24 frames)
    assert shapes == {(2, 3, FRAMES, SIZE, SIZE)}  # every call: one clip, guided (a doubled batch)


# ------------------------------------------------------------------ (e) seeds
@pytest.mark.parametrize("long", [FIFO(partitions=1, init="clip"), Autoregressive(context_frames=1)])
def test_a_long_video_is_a_function_of_its_seed(long):
    pipe, _ = make_pipe(context=True)
    args = dict(num_frames=3 * FRAMES, steps=4, cfg=2.0, eta=1.0, long=long)
    together = pipe(labels=[5, 9], seed=7, **args)
    assert torch.equal(together, pipe(labels=[5, 9], seed=7, **args))
    assert torch.equal(together[1], pipe(labels=[9], seed=8, **args)[0])  # video 1 had seed 7 + 1, alone too
    assert not torch.equal(together[0], pipe(labels=[5], seed=8, **args)[0])


def test_clip_seeds_are_the_seed_first_then_unrelated():
    assert chunk_seed(7, 0) == 7
    seeds = {chunk_seed(s, c) for s in range(50) for c in range(1, 50)}
    assert len(seeds) == 50 * 49 and all(0 <= s < 2 ** 64 for s in seeds)
    assert chunk_seed(-5, 3) == chunk_seed(2 ** 64 - 5, 3)  # any int seed torch takes


# ------------------------------------------------------------------ (f) argument errors
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(long="sideways"), ValueError, r"long='sideways': choose one of \['autoregressive', 'fifo'\]"),
    (dict(long="fifo", num_frames=FRAMES - 1), ValueError, "fewer than one clip of this model"),
    (dict(long="fifo", num_frames=None), ValueError, "pass num_frames"),
    (dict(long="autoregressive"), ValueError, "needs a model trained with context frames"),
    (dict(long=FIFO(partitions=2), steps=5), ValueError, "multiples of its queue's 8 levels"),
    (dict(long=FIFO(frames_per_level=3)), ValueError, "must divide the queue's 16 latent frames"),
    (dict(long="fifo", sampler="dpm++2m"), ValueError, "use sampler ddim or ddpm"),
    (dict(long="fifo", steps=0), ValueError, "steps must be positive"),
    (dict(long="fifo", cfg=float("nan")), ValueError, "cfg must be a finite number"),
])
def test_bad_long_arguments_are_one_line_errors_before_any_model_call(kwargs, error, match):
    pipe, rec = make_pipe()
    with pytest.raises(error, match=match) as info:
        pipe(**{"labels": [1], "num_frames": 3 * FRAMES, **kwargs})
    assert "\n" not in str(info.value)
    assert rec.calls == []


def test_bad_long_arguments_for_a_model_with_context_frames():
    pipe, rec = make_pipe(context=True)
    image = torch.zeros(3, SIZE, SIZE)
    for kwargs, match in ((dict(long="fifo", image=image), "takes no given frames"),
                          (dict(long="autoregressive", frames={FRAMES: image}), "frames of its first clip"),
                          (dict(long=Autoregressive(context_frames=FRAMES)), "leaves nothing to generate")):
        with pytest.raises(ValueError, match=match):
            pipe(labels=[1], num_frames=3 * FRAMES, **kwargs)
    with pytest.raises(ValueError, match="positive int"):
        FIFO(partitions=0)
    with pytest.raises(ValueError, match="init must be one of"):
        FIFO(init="zeros")
    assert rec.calls == []


# ------------------------------------------------------------------ FIFO on every family
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fifo_runs_on_every_family_with_a_level_per_frame(family):
    pipe, rec = make_pipe(family, False, 8)
    video = pipe(labels=[2], num_frames=2 * FRAMES, steps=4, cfg=1.0, long=FIFO(partitions=1))
    assert video.shape == (1, 3, 2 * FRAMES, 8, 8) and torch.isfinite(video).all()
    diagonal = [t for _, t, _ in rec.calls if t.dim() == 2]
    assert diagonal and all(len(set(t[0].tolist())) > 1 for t in diagonal)


# ------------------------------------------------------------------ (g) the command line
TINY_YAML = """\
name: long-tiny
model: {size: tiny, patch_size: 8, hidden_size: 32, depth: 2, num_heads: 2}
conditions: {num_classes: 48}
data: {size: 32, frames: 4, count: 8}
train: {steps: 2, batch_size: 2, lr: 1e-3, log_every: 2, checkpoint_every: 2, device: cpu, precision: fp32}
sample: {steps: 3, cfg: 2.0}
"""


def test_the_cli_writes_a_long_video_and_refuses_bad_long_arguments(tmp_path, capsys):
    from moviola.video import read_video

    (tmp_path / "cfg.yaml").write_text(TINY_YAML)
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "cfg.yaml"), "--run-dir", str(run), "--quiet"]) == 0
    out = tmp_path / "long.mp4"
    code = main(["sample", str(run), "--label", "5", "--frames", "13", "--long", "fifo", "--partitions", "1",
                 "--steps", "4", "--out", str(out), "--quiet"])
    assert code == 0 and read_video(out).shape[0] == 13
    capsys.readouterr()
    for argv, needle in (
        (["--frames", "13", "--long", "autoregressive"], "needs a model trained with context frames"),
        (["--long", "fifo"], "give --frames"),
        (["--frames", "13", "--partitions", "2"], "--partitions is an option of --long fifo"),
        (["--frames", "13", "--long", "fifo", "--context-frames", "1"], "--context-frames is an option"),
        (["--frames", "2", "--long", "fifo"], "fewer than one clip"),
    ):
        code = main(["sample", str(run), "--label", "5", "--out", str(tmp_path / "x.mp4"), "--quiet", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith("moviola: error: ") and needle in err[-1], (argv, err)
