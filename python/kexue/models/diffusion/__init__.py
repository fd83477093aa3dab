"""Diffusion models (MODELS.md D1-D3): DDPM training with ε-prediction, and the DDPM, DDIM and
probability-flow ODE samplers, all on the fused step ops of kexue.ops.diffusion."""
from kexue.models.diffusion.ddpm import DDPM, build_ddpm
from kexue.models.diffusion.denoisers import MLPDenoiser, UNet, timestep_embedding
from kexue.models.diffusion.samplers import SAMPLERS, GraphCache, SamplerConfig, sample_loop
from kexue.models.diffusion.schedules import (
    Respaced,
    Schedule,
    cosine_schedule,
    get_schedule,
    linear_schedule,
    respaced_timesteps,
)
from kexue.train.registry import register

register("ddpm", build_ddpm, default_data="moons", steps=10000, batch_size=256,
         description="DDPM: ε-prediction (MLP for 2-D, UNet for images); samplers ddpm, ddim, ode_euler, ode_heun")

__all__ = ["DDPM", "build_ddpm", "MLPDenoiser", "UNet", "timestep_embedding", "SAMPLERS", "GraphCache",
           "SamplerConfig", "sample_loop", "Respaced", "Schedule", "cosine_schedule", "get_schedule",
           "linear_schedule", "respaced_timesteps"]
