"""The training loops: diffusion (trainer.py) and autoencoders (vae_trainer.py), chosen by ``train.task``."""
from __future__ import annotations


def trainer_for(cfg) -> type:
    """The trainer class of a run's ``train.task``."""
    if cfg.train.task == "autoencoder":
        from moviola.training.vae_trainer import VAETrainer

        return VAETrainer
    from moviola.training.trainer import Trainer

    return Trainer
