"""Autoencoder training (`moviola train-vae`): a frame VAE or a causal 3-D VAE, from scratch.

``train.task: autoencoder``. The run mechanics are the run loop's (``loop.py``: run directory,
resume that continues exactly, SIGINT/SIGTERM checkpoints, the non-finite-step and disk-full
rules, metrics.jsonl); :class:`AutoencoderTask` is what is trained and how (the losses are in
``vae_losses.py``):

    loss_G = rec' + kl_weight · KL/pixels + [step ≥ adv_start] · adv_weight · λ · (−mean D(x̂)),
    rec' = rec + perceptual_weight · LPIPS (optional, ``perceptual.py``; λ balances against rec')
    loss_D = [step ≥ adv_start] · (hinge(D(x), D(x̂)) + lecam_weight · LeCam)

One AdamW holds two parameter groups (autoencoder; discriminator at ``lr × disc_lr_mult``): the
generator's loss is back-propagated with the discriminator frozen, the discriminator's on the
detached reconstruction, each group's gradient is clipped on its own, and one ``step()``
updates both — the same updates as two optimizers, kept in one checkpoint file. The
discriminator and the LeCam averages travel in the checkpoint's ``extra.safetensors``.

Checkpoints hold the autoencoder (``model``) and its EMA (``ema``). ``moviola export`` of a VAE
run measures the latent normalization on training data and writes a directory that
``autoencoder.path`` and ``moviola.load_autoencoder`` take (see ``export_autoencoder``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from moviola.autoencoders import build_autoencoder
from moviola.config import ConfigError, RunConfig
from moviola.config.autoencoder import trains_autoencoder
from moviola.data import build_dataset
from moviola.io.checkpoint import check_state_dict, load_weights
from moviola.training.data import BatchPlan
from moviola.training.ema import EMA
from moviola.training.loop import RunLoop
from moviola.training.perceptual import LPIPS, MIN_SIZE, video_lpips
from moviola.training.task import Task, lr_at
from moviola.training.vae_losses import (LeCam, PatchDiscriminator3D, adaptive_weight, generator_adv_loss,
                                         hinge_d_loss, kl_per_pixel, last_layer_weight, reconstruction_loss)
from moviola.utils import autocast


class AutoencoderTask(Task):
    """A frame or causal VAE (or the temporal layers of one), its EMA, a 3-D patch discriminator and LeCam."""

    def check(self) -> None:
        cfg = self.cfg
        if cfg.autoencoder.kind == "identity":
            raise ConfigError("train-vae trains an autoencoder: set autoencoder.kind to frame_vae, causal_vae or "
                              "temporal_decoder")
        if cfg.train.task != "autoencoder" or not trains_autoencoder(cfg.autoencoder):
            raise ConfigError("train-vae trains a new autoencoder (autoencoder.path null) or adds temporal layers to a "
                              "trained frame VAE (kind temporal_decoder, path = that VAE); to continue a run, use "
                              "--resume")
        if cfg.data.use_image_num:
            raise ConfigError("train-vae does not use data.use_image_num (images are one-frame videos already)")
        v = cfg.vae
        if v.perceptual_weight > 0:
            if not v.perceptual_weights:
                raise ConfigError("vae.perceptual_weight > 0 needs vae.perceptual_weights: local VGG16 weights "
                                  "(torchvision's vgg16 state dict, e.g. vgg16-397923af.pth) and optionally LPIPS's "
                                  "linear layers (the lpips package's weights/v0.1/vgg.pth); nothing is downloaded")
            for p in v.perceptual_weights:
                if not Path(p).is_file():
                    raise ConfigError(f"vae.perceptual_weights: {p} is not a file")
            if cfg.data.size < MIN_SIZE:
                raise ConfigError(f"the perceptual loss (VGG16) needs frames of at least {MIN_SIZE} pixels, "
                                  f"data.size is {cfg.data.size}: raise it or set vae.perceptual_weight=0")

    def build(self, dataset, plan: BatchPlan, init_from: Optional[str]) -> None:
        cfg, v = self.cfg, self.cfg.vae
        if init_from:
            raise ConfigError("train-vae has no --init-from; a run continues with --resume")
        self.dataset, self.plan = dataset, plan
        model = self.autoencoder = build_autoencoder(cfg.autoencoder).to(self.device).train()
        if hasattr(model, "trainable_parameters"):  # the temporal decoder: its encoder (and base) stay frozen
            trainable = list(model.trainable_parameters())
        else:
            model.requires_grad_(True)
            trainable = list(model.parameters())
        self.ema = EMA(model, cfg.train.ema_decay)
        self.disc = PatchDiscriminator3D(v.disc_channels, v.disc_layers).to(self.device) if v.adv_weight > 0 else None
        self.lecam = LeCam(v.lecam_decay).to(self.device)
        self.perceptual = None
        if v.perceptual_weight > 0:
            self.perceptual = LPIPS.from_files(v.perceptual_weights).to(self.device)
            self.log(f"perceptual loss: LPIPS on VGG16 from {list(v.perceptual_weights)}"
                     f"{' with its linear layers' if self.perceptual.lin is not None else ' (unweighted channels)'}, "
                     f"weight {v.perceptual_weight}")
        t = cfg.train
        groups = [{"params": trainable, "lr": t.lr, "name": "autoencoder"}]
        if self.disc is not None:
            groups.append({"params": list(self.disc.parameters()), "lr": t.lr * v.disc_lr_mult, "name": "disc"})
        self.optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
        self.last_layer = last_layer_weight(model)
        if self.disc is not None and v.adaptive_weight and self.last_layer is None:
            raise ConfigError("vae.adaptive_weight needs the decoder's last layer, which this autoencoder does not expose")
        self.model = self.wrap(model)

    # ---------------------------------------------------------------- checkpoints
    def extra_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"lecam.{k}": v for k, v in self.lecam.state_dict().items()}
        if self.disc is not None:
            out.update({f"disc.{k}": v for k, v in self.disc.state_dict().items()})
        return out

    def load_extra(self, path: Path) -> None:
        extra = load_weights(path, "extra")
        lecam = {k[len("lecam."):]: v for k, v in extra.items() if k.startswith("lecam.")}
        self.lecam.load_state_dict(lecam)
        if self.disc is not None:
            disc = {k[len("disc."):]: v for k, v in extra.items() if k.startswith("disc.")}
            check_state_dict(self.disc, disc, f"{path}/extra.safetensors (discriminator)")
            self.disc.load_state_dict(disc)

    # ---------------------------------------------------------------- one step
    def make_batch(self, step: int, batch: Optional[dict] = None) -> tuple[torch.Tensor, torch.Generator]:
        """Step ``step``'s videos (read here when ``batch`` is None) and the generator of its draws."""
        if batch is None:
            batch = self.read_batch(step)
        g = torch.Generator(device="cpu").manual_seed(self.cfg.train.seed * 1_000_003 + step)
        return batch["video"].to(self.device), g

    def step(self, step: int, batch: Optional[dict] = None) -> Optional[dict]:
        cfg, v = self.cfg, self.cfg.vae
        video, g = self.make_batch(step, batch)
        for group in self.optimizer.param_groups:
            mult = v.disc_lr_mult if group.get("name") == "disc" else 1.0
            group["lr"] = lr_at(step, cfg) * mult
        self.model.train()
        adversarial = self.disc is not None and step >= v.adv_start
        pixels = video[0].numel() // video.shape[1]  # T·H·W of one sample
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            out = self.model(video, sample=v.sample_posterior, generator=g)
            recon = out.reconstruction.float()
            rec = reconstruction_loss(recon, video, v.recon)
            kl = kl_per_pixel(out.mean.float(), out.logvar.float(), pixels)
            loss = rec + v.kl_weight * kl
            metrics = {"rec": rec.item(), "kl": kl.item()}
            if self.perceptual is not None:
                p_loss = video_lpips(self.perceptual, recon, video, v.perceptual_frames, g)
                rec = rec + v.perceptual_weight * p_loss  # the adaptive weight balances against both, as in VQGAN
                loss = loss + v.perceptual_weight * p_loss
                metrics["lpips"] = p_loss.item()
            if adversarial:
                self.disc.requires_grad_(False)  # the generator's loss must not train D
                g_adv = generator_adv_loss(self.disc(recon).float())
                lam = (adaptive_weight(rec, g_adv, self.last_layer) if v.adaptive_weight
                       else torch.tensor(1.0, device=rec.device))
                loss = loss + v.adv_weight * lam * g_adv
                metrics.update(g_adv=g_adv.item(), adv_lambda=lam.item())
        if not torch.isfinite(loss):
            return None
        loss.backward()
        grad_norm = float(self.clip(self.optimizer.param_groups[0]["params"]))  # the autoencoder's group
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        if adversarial:
            self.disc.requires_grad_(True)
            with autocast(self.device, self.precision):
                real, fake = self.disc(video).float(), self.disc(recon.detach()).float()
                d_loss = hinge_d_loss(real, fake)
                if v.lecam_weight > 0:
                    d_loss = d_loss + v.lecam_weight * self.lecam(real, fake)
            if not torch.isfinite(d_loss):
                self.optimizer.zero_grad(set_to_none=True)
                return None
            d_loss.backward()
            self.lecam.update(real, fake)
            metrics.update(d_loss=d_loss.item(), d_real=real.mean().item(), d_fake=fake.mean().item(),
                           d_grad_norm=float(self.clip(list(self.disc.parameters()))))
        self.optimizer.step()
        self.ema.update(self.raw_model)
        return {"loss": loss.item(), "grad_norm": grad_norm, "lr": self.optimizer.param_groups[0]["lr"], **metrics}

    @torch.no_grad()
    def judge(self, n: int = 4) -> dict:
        """PSNR / SSIM / flicker of the EMA autoencoder on a few clips the run does not train on."""
        from moviola.eval.vae_metrics import reconstruction_metrics, summarize

        clips = held_out_clips(self.cfg, n)
        if clips is None:
            return {}
        recon = self.ema.model.eval()(clips.to(self.device), sample=False).reconstruction
        return {f"judge_{k}": val for k, val in summarize(reconstruction_metrics(recon.float().cpu(), clips)).items()}


def held_out_clips(cfg: RunConfig, n: int) -> Optional[torch.Tensor]:
    """``n`` Moving Shapes test-split clips in the run's shape, or None for other datasets."""
    if cfg.data.dataset != "shapes":
        return None
    from moviola.data.shapes import MovingShapes

    d = cfg.data
    test = MovingShapes(split="test", count=n, size=d.size, frames=d.frames, seed=d.seed, bounce=d.bounce, cache=False)
    return torch.stack([test[i]["video"] for i in range(n)])


class VAETrainer(RunLoop):
    """Autoencoder training: the run loop (``loop.py``) with :class:`AutoencoderTask`."""

    task_class = AutoencoderTask

    @property
    def disc(self):
        """The 3-D patch discriminator (None without an adversarial loss)."""
        return self.task.disc

    @property
    def lecam(self):
        return self.task.lecam


@torch.no_grad()
def export_autoencoder(run: "str | Path", out: "str | Path", weights: str = "ema") -> Path:
    """Write a train-vae run's autoencoder as a directory ``autoencoder.path`` takes.

    The latent normalization is measured first, on ``vae.latent_stats_batches`` training batches
    (the batches of steps 0, 1, ...): per channel for the causal VAE (its ``latent_shift`` /
    ``latent_scale`` buffers), one shift and scale for the frame VAE (its diffusers config's
    ``shift_factor`` / ``scaling_factor``). The frame VAE is written in diffusers' format, so
    diffusers loads it too; the causal VAE as ``CausalVAE.save_pretrained``.
    """
    from moviola.config import config_from_json
    from moviola.io.checkpoint import resolve_checkpoint, weights_name, write_new_directory

    ckpt = resolve_checkpoint(run)
    cfg = config_from_json(ckpt / "config.json")
    if cfg.train.task != "autoencoder":
        raise ConfigError(f"{run} is not a train-vae run (train.task={cfg.train.task})")
    ae = build_autoencoder(cfg.autoencoder)
    name = weights_name(ckpt, weights)
    sd = load_weights(ckpt, name)
    check_state_dict(ae, sd, f"{ckpt}/{name}.safetensors")
    ae.load_state_dict(sd)
    ae.eval()
    if cfg.autoencoder.kind != "temporal_decoder":  # the temporal decoder keeps its base's latents unchanged
        dataset = build_dataset(cfg.data)
        plan = BatchPlan(cfg.train.batch_size, cfg.train.seed)
        batches = (plan.read(dataset, s)["video"] for s in range(cfg.vae.latent_stats_batches))
        ae.measure_latent_stats(batches)
    return write_new_directory(out, ae.save_pretrained)
