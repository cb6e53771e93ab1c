"""Noise schedules, training losses, timestep plans, samplers and classifier-free guidance."""
from moviola.diffusion.guidance import classifier_free_guidance, guided_model_fn
from moviola.diffusion.losses import (discretized_gaussian_log_likelihood, min_snr_weight, normal_kl,
                                      training_losses, variational_bound_terms)
from moviola.diffusion.plans import (CLEAN, diagonal_plan, frame_offsets_plan, plan_targets, uniform_plan,
                                     validate_plan, with_clean_frames)
from moviola.diffusion.samplers import (SAMPLERS, SamplerState, StepOutput, ddim_step, ddpm_step,
                                        dpm_solver_pp_2m_step, plan_step, posterior_step, sample)
from moviola.diffusion.schedule import (NoiseSchedule, broadcast_timesteps, build_schedule, convert_prediction, make_betas,
                                        make_x0_scale, randn, randn_like, spaced_timesteps)

__all__ = [
    "NoiseSchedule", "build_schedule", "make_betas", "make_x0_scale", "spaced_timesteps", "broadcast_timesteps", "convert_prediction",
    "randn", "randn_like",
    "training_losses", "variational_bound_terms", "normal_kl", "discretized_gaussian_log_likelihood",
    "min_snr_weight",
    "CLEAN", "uniform_plan", "frame_offsets_plan", "diagonal_plan", "with_clean_frames", "plan_targets",
    "validate_plan",
    "sample", "plan_step", "SAMPLERS", "SamplerState", "ddim_step", "ddpm_step", "posterior_step", "dpm_solver_pp_2m_step",
    "StepOutput",
    "classifier_free_guidance", "guided_model_fn",
]
