"""The optional LPIPS perceptual loss of train-vae: weight loading, the distance, and its use in training."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from moviola.config import ConfigError
from moviola.training.perceptual import LPIPS, PerceptualWeightsError, video_lpips
from moviola.training.vae_trainer import VAETrainer
from test_vae_training import vae_cfg

# torchvision's indices of VGG16's thirteen convolutions and their (in, out) channels: written out by hand
# here, independently of the module's layout table
CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256),
         17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512)}
CHANNELS = [64, 128, 256, 512, 512]


def random_vgg(seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (cin, cout) in CONVS.items():
        sd[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5
        sd[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.05
    sd["classifier.0.weight"] = torch.randn(8, 8, generator=g)  # torchvision files carry the classifier: ignored
    return sd


def random_lin(seed=1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(CHANNELS)}


def naive_lpips(vgg, lin, x, y):
    """LPIPS written from the paper, image by image: blocks of convolutions + ReLU, max-pool between."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(3, 1, 1)
    blocks = [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]
    out = []
    for a, b in zip(x, y):
        d_total = 0.0
        fa, fb = ((a - shift) / scale)[None], ((b - shift) / scale)[None]
        for k, convs in enumerate(blocks):
            if k:
                fa, fb = F.max_pool2d(fa, 2), F.max_pool2d(fb, 2)
            for i in convs:
                w, bias = vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"]
                fa, fb = F.relu(F.conv2d(fa, w, bias, padding=1)), F.relu(F.conv2d(fb, w, bias, padding=1))
            h, w_ = fa.shape[-2:]
            acc = 0.0
            for r in range(h):
                for c in range(w_):
                    u, v = fa[0, :, r, c], fb[0, :, r, c]
                    u, v = u / (u.norm() + 1e-10), v / (v.norm() + 1e-10)
                    weights = lin[f"lin{k}.model.1.weight"].flatten() if lin else torch.ones_like(u)
                    acc += float((weights * (u - v) ** 2).sum())
            d_total += acc / (h * w_)
        out.append(d_total)
    return torch.tensor(out)


@pytest.fixture
def files(tmp_path):
    vgg, lin = random_vgg(), random_lin()
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    return tmp_path, vgg, lin


def test_lpips_matches_a_naive_computation_with_and_without_linear_layers(files):
    d, vgg, lin = files
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 32, 24, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(3, 3, 32, 24, generator=g)).clamp(-1, 1)
    full = LPIPS.from_files([d / "vgg16.pth", d / "vgg.pth"])
    assert full.lin is not None
    torch.testing.assert_close(full(x, y), naive_lpips(vgg, lin, x, y), rtol=1e-4, atol=1e-6)
    base = LPIPS.from_files([d / "vgg16.pth"])
    assert base.lin is None
    torch.testing.assert_close(base(x, y), naive_lpips(vgg, None, x, y), rtol=1e-4, atol=1e-6)
    assert torch.all(full(x, x) == 0) and torch.all(full(x, y) > 0)


def test_lpips_state_dict_naming_and_safetensors_load_the_same_network(files, tmp_path):
    d, vgg, lin = files
    slice_of = {0: 1, 2: 1, 5: 2, 7: 2, 10: 3, 12: 3, 14: 3, 17: 4, 19: 4, 21: 4, 24: 5, 26: 5, 28: 5}
    lpips_sd = {f"net.slice{slice_of[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v
                for k, v in vgg.items() if k.startswith("features.")}
    lpips_sd.update(lin)
    lpips_sd["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    save_file({k: v.contiguous() for k, v in lpips_sd.items()}, str(tmp_path / "lpips.safetensors"))
    a = LPIPS.from_files([d / "vgg16.pth", d / "vgg.pth"])
    b = LPIPS.from_files([tmp_path / "lpips.safetensors"])
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(a(x, y), b(x, y))


def test_lpips_weights_refused_with_a_clear_message(files, tmp_path):
    d, vgg, lin = files
    with pytest.raises(PerceptualWeightsError, match="is not a file"):
        LPIPS.from_files([tmp_path / "nope.pth"])
    with pytest.raises(PerceptualWeightsError, match="no VGG16 features found"):
        LPIPS.from_files([d / "vgg.pth"])
    (tmp_path / "page.pth").write_text("<!DOCTYPE html><html>sign in</html>")
    with pytest.raises(PerceptualWeightsError, match="not a readable weights file"):
        LPIPS.from_files([tmp_path / "page.pth"])
    torch.save({**vgg, "features.0.weight": torch.zeros(64, 1, 3, 3)}, tmp_path / "gray.pth")
    with pytest.raises(PerceptualWeightsError, match=r"features.0.weight has shape \(64, 1, 3, 3\)"):
        LPIPS.from_files([tmp_path / "gray.pth"])
    torch.save({k: v for k, v in lin.items() if not k.startswith("lin4")}, tmp_path / "lin4.pth")
    with pytest.raises(PerceptualWeightsError, match="lin4.model.1.weight missing"):
        LPIPS.from_files([d / "vgg16.pth", tmp_path / "lin4.pth"])


def test_video_lpips_averages_frames_and_subsamples_the_same_frames_of_both(files):
    d, _, _ = files
    model = LPIPS.from_files([d / "vgg16.pth", d / "vgg.pth"])
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 5, 16, 16, generator=g) * 2 - 1
    b = torch.rand(2, 3, 5, 16, 16, generator=g) * 2 - 1
    per_frame = torch.stack([model(a[:, :, t], b[:, :, t]) for t in range(5)], 1)  # (B, T)
    torch.testing.assert_close(video_lpips(model, a, b), per_frame.mean(), rtol=1e-5, atol=1e-7)
    # two frames per clip: the mean over the drawn frames, drawn with the generator given
    sub = video_lpips(model, a, b, frames=2, generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    picks = [torch.randperm(5, generator=gen)[:2] for _ in range(2)]
    expected = torch.stack([per_frame[i, p] for i, p in enumerate(picks)]).mean()
    torch.testing.assert_close(sub, expected, rtol=1e-5, atol=1e-7)
    # gradients reach the reconstruction, never the frozen network
    a.requires_grad_(True)
    video_lpips(model, a, b).backward()
    assert a.grad.abs().sum() > 0 and all(p.grad is None for p in model.parameters())


def test_train_vae_with_perceptual_loss_lowers_it(files, tmp_path):
    d, _, _ = files
    weights = f"vae.perceptual_weights=[{d / 'vgg16.pth'},{d / 'vgg.pth'}]"
    cfg = vae_cfg("causal_vae", "train.steps=30", "vae.adv_weight=0", "train.checkpoint_every=30",
                  "vae.perceptual_weight=1.0", weights, "vae.perceptual_frames=2")
    trainer = VAETrainer(cfg, tmp_path / "p", quiet=True)
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    lp = [r["lpips"] for r in rows if "lpips" in r]
    assert len(lp) == 30
    assert sum(lp[-5:]) / 5 < 0.7 * sum(lp[:5]) / 5, (lp[:5], lp[-5:])
    # the loss logged includes the perceptual term
    assert all(r["loss"] >= r["rec"] + r["lpips"] - 1e-6 for r in rows if "lpips" in r)


def test_perceptual_loss_without_files_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="needs vae.perceptual_weights"):
        VAETrainer(vae_cfg("frame_vae", "vae.perceptual_weight=0.5"), tmp_path / "x", quiet=True)
    with pytest.raises(ConfigError, match="is not a file"):
        VAETrainer(vae_cfg("frame_vae", "vae.perceptual_weight=0.5", f"vae.perceptual_weights=[{tmp_path}/v.pth]"),
                   tmp_path / "y", quiet=True)


def test_perceptual_and_adversarial_training_resumes_exactly(files, tmp_path):
    d, _, _ = files
    extra = ["vae.perceptual_weight=0.5", f"vae.perceptual_weights=[{d / 'vgg16.pth'},{d / 'vgg.pth'}]",
             "vae.perceptual_frames=2"]
    straight = VAETrainer(vae_cfg("causal_vae", *extra), tmp_path / "a", quiet=True)
    straight.train()
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert "adv_lambda" in rows[-1] and "lpips" in rows[-1]
    first = VAETrainer(vae_cfg("causal_vae", *extra), tmp_path / "b", quiet=True)
    first.train(max_steps=2)
    resumed = VAETrainer(vae_cfg("causal_vae", *extra), tmp_path / "b", resume=True, quiet=True)
    resumed.train()
    for (ka, va), (kb, vb) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_adaptive_weight_balances_against_reconstruction_plus_perceptual(files, tmp_path, monkeypatch):
    """VQGAN's λ is computed from the gradient of rec + w·LPIPS, not of rec alone."""
    import moviola.training.vae_trainer as vt
    d, _, _ = files
    seen = []
    real = vt.adaptive_weight
    monkeypatch.setattr(vt, "adaptive_weight", lambda rec, adv, w: seen.append(float(rec.detach())) or real(rec, adv, w))
    extra = ["vae.perceptual_weight=0.5", f"vae.perceptual_weights=[{d / 'vgg16.pth'}]", "vae.adv_start=0",
             "train.steps=1"]
    VAETrainer(vae_cfg("frame_vae", *extra), tmp_path / "w", quiet=True).train()
    row = json.loads((tmp_path / "w" / "metrics.jsonl").read_text().splitlines()[0])
    assert seen and abs(seen[0] - (row["rec"] + 0.5 * row["lpips"])) < 1e-5 * max(1.0, seen[0])


def test_perceptual_loss_refuses_frames_vgg_cannot_see(files, tmp_path):
    d, _, _ = files
    with pytest.raises(ConfigError, match="at least 16 pixels"):
        VAETrainer(vae_cfg("frame_vae", "data.size=8", "vae.perceptual_weight=0.5",
                           f"vae.perceptual_weights=[{d / 'vgg16.pth'}]"), tmp_path / "s", quiet=True)
    model = LPIPS.from_files([d / "vgg16.pth"])
    with pytest.raises(ValueError, match="at least 16×16"):
        model(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_relative_perceptual_weight_paths_are_saved_absolute(files, tmp_path, monkeypatch):
    from moviola.config import load_config
    d, _, _ = files
    monkeypatch.chdir(d)
    cfg = load_config(overrides=["vae.perceptual_weights=[vgg16.pth, ~/x.pth]"])
    assert cfg.vae.perceptual_weights[0] == str(d / "vgg16.pth")
    assert not cfg.vae.perceptual_weights[1].startswith("~")
