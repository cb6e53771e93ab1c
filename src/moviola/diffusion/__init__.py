"""Noise schedules, training losses, samplers and classifier-free guidance."""
from moviola.diffusion.guidance import classifier_free_guidance, guided_model_fn
from moviola.diffusion.losses import (discretized_gaussian_log_likelihood, min_snr_weight, normal_kl,
                                      training_losses, variational_bound_terms)
from moviola.diffusion.samplers import StepOutput, ddim_step, ddpm_step, sample
from moviola.diffusion.schedule import (NoiseSchedule, broadcast_timesteps, build_schedule, convert_prediction, make_betas,
                                        randn, randn_like, spaced_timesteps)

__all__ = [
    "NoiseSchedule", "build_schedule", "make_betas", "spaced_timesteps", "broadcast_timesteps", "convert_prediction",
    "randn", "randn_like",
    "training_losses", "variational_bound_terms", "normal_kl", "discretized_gaussian_log_likelihood",
    "min_snr_weight",
    "sample", "ddim_step", "ddpm_step", "StepOutput",
    "classifier_free_guidance", "guided_model_fn",
]
