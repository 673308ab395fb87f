"""SD1.5's noise schedule and the original LDM DDIM sampler's settings, for any diffusers scheduler class."""

from __future__ import annotations

import inspect

import diffusers
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..errors import ConfigError
# SD1.5's training schedule (the `scheduler/` config of runwayml/stable-diffusion-v1-5).
SD15_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
# Sampling settings of the original LDM DDIM sampler (see docs/release_differences.md): timesteps 981, 961, ..., 1
# and alpha_prev = alpha_bar_0 at the last step. Applied to every scheduler class that accepts them.
SD15_SAMPLING = {
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "skip_prk_steps": True,
}



def make_scheduler(kind: str = "ddpm") -> SchedulerMixin:
    """A diffusers scheduler on SD1.5's schedule: "ddpm" (training noise), "ddim", or any scheduler class name."""
    aliases = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler"}
    name = aliases.get(kind.lower(), kind)
    cls = getattr(diffusers, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, SchedulerMixin)):
        raise ConfigError(
            f"Unknown scheduler {kind!r}: use 'ddpm', 'ddim' or a diffusers scheduler class name such as "
            "'DPMSolverMultistepScheduler' or 'EulerDiscreteScheduler'."
        )
    accepted = inspect.signature(cls.__init__).parameters
    settings = {k: v for k, v in {**SD15_SCHEDULE, **SD15_SAMPLING}.items() if k in accepted}
    missing = [k for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule") if k not in settings]
    if missing:
        raise ValueError(f"Scheduler {name} does not take SD1.5's beta schedule (no {', '.join(missing)}).")
    return cls(**settings)
