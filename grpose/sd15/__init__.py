"""The frozen Stable Diffusion 1.5 base: shipped architectures, offline loading (diffusers folder or original
single file), the CLIP tokenizer, prompt encoding and SD1.5's noise schedules. One concern per module:

- `configs`: the shipped architectures (`sd15`, `tiny`, `mini`) and their sizes;
- `single_file`: original LDM checkpoints through diffusers' conversion functions;
- `diffusers_folder`: diffusers folders, checked against the arch;
- `tokenizer`: the CLIP tokenizer, rebuilt offline;
- `schedulers`: SD1.5's schedule for any diffusers scheduler;
- `build`: `build_sd15`, `load_unet`, `encode_prompts`.
"""

from .build import RANDOM_INIT_SEED, StableDiffusionParts, build_sd15, encode_prompts, load_unet
from .configs import (ARCHS, CONFIG_DIR, PARTS, WEIGHTS_HINT, sd15_config, size_multiple, vae_downsampling,
                      weights_hint)
from .schedulers import SD15_SAMPLING, SD15_SCHEDULE, make_scheduler
from .tokenizer import CLIP_CONTEXT_LENGTH, CLIP_VOCAB_SIZE, make_tokenizer

__all__ = [
    "ARCHS", "CLIP_CONTEXT_LENGTH", "CLIP_VOCAB_SIZE", "CONFIG_DIR", "PARTS", "RANDOM_INIT_SEED", "SD15_SAMPLING",
    "SD15_SCHEDULE", "WEIGHTS_HINT", "StableDiffusionParts", "build_sd15", "encode_prompts", "load_unet",
    "make_scheduler", "make_tokenizer", "sd15_config", "size_multiple", "vae_downsampling", "weights_hint",
]
