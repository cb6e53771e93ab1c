"""Training: the run loop (loop.py) and the tasks it runs, diffusion (trainer.py) and autoencoders
(vae_trainer.py); ``train.task`` names a run's task."""
from __future__ import annotations


def trainer_for(cfg) -> type:
    """The trainer class (the run loop with its task) of a run's ``train.task``."""
    if cfg.train.task == "autoencoder":
        from moviola.training.vae_trainer import VAETrainer

        return VAETrainer
    from moviola.training.trainer import Trainer

    return Trainer
