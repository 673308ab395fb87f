"""The frozen Stable Diffusion 1.5 base (SPEC section 1): shipped configs, offline loading of a diffusers folder or an
original single-file checkpoint, the CLIP tokenizer, prompt encoding and the SD1.5 noise schedules.
"""

from __future__ import annotations

import gzip
import importlib.util
import inspect
import json
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import diffusers
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

CONFIG_DIR = Path(__file__).resolve().parent / "sd15_configs"
ARCHS = ("sd15", "tiny", "mini")
PARTS = ("unet", "vae", "text_encoder")

# Key prefixes of the original LDM single-file layout (v1-5-pruned.ckpt / .safetensors and its fine-tunes).
LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_TEXT_PREFIX = "cond_stage_model.transformer."

WEIGHTS_HINT = (
    "download v1-5-pruned.safetensors (or v1-5-pruned.ckpt) from the Hugging Face repo "
    "runwayml/stable-diffusion-v1-5 (mirror: stable-diffusion-v1-5/stable-diffusion-v1-5) to "
    "models/v1-5-pruned.safetensors, or point to a diffusers folder of that repo; see docs/weights.md"
)

CLIP_CONTEXT_LENGTH = 77
CLIP_VOCAB_SIZE = 49408
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
# The CLIP BPE file holds a header line, then merges; CLIP uses the first 49152 - 256 - 2 of them so that
# 256 bytes + 256 end-of-word bytes + merges + 2 specials = 49408 tokens.
CLIP_NUM_MERGES = 49152 - 256 - 2

# SD1.5's training schedule (the `scheduler/` config of runwayml/stable-diffusion-v1-5).
SD15_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
# Sampling settings of the original LDM DDIM sampler (reference-notes section 6): timesteps 981, 961, ..., 1
# and alpha_prev = alpha_bar_0 at the last step. Applied to every scheduler class that accepts them.
SD15_SAMPLING = {
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "skip_prk_steps": True,
}


@dataclass
class StableDiffusionParts:
    """The four frozen SD1.5 components plus the VAE latent scale."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    vae_scale_factor: float = 0.18215


def sd15_config(arch: str, part: str) -> dict:
    """Return a fresh copy of the shipped config dict of `part` ("unet" | "vae" | "text_encoder") for `arch`."""
    if arch not in ARCHS:
        raise ValueError(f"Unknown SD1.5 arch {arch!r}: use one of {ARCHS} (configs in {CONFIG_DIR}).")
    if part not in PARTS:
        raise ValueError(f"Unknown SD1.5 part {part!r}: use one of {PARTS}.")
    path = CONFIG_DIR / arch / f"{part}.json"
    if not path.is_file():
        raise FileNotFoundError(f"Shipped config {path} is missing: reinstall the grpose package.")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _unet_factory(arch: str) -> Callable[[], UNet2DConditionModel]:
    config = sd15_config(arch, "unet")
    return lambda: UNet2DConditionModel.from_config(config)


def _vae_factory(arch: str) -> Callable[[], AutoencoderKL]:
    config = sd15_config(arch, "vae")
    return lambda: AutoencoderKL.from_config(config)


def _text_encoder_factory(arch: str) -> Callable[[], CLIPTextModel]:
    config = sd15_config(arch, "text_encoder")
    return lambda: CLIPTextModel(CLIPTextConfig(**config))


# ----------------------------------------------------------------------------------------------------------------
# Reading checkpoints
# ----------------------------------------------------------------------------------------------------------------


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors or pickled torch checkpoint on the CPU, unwrapping a top-level "state_dict"."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            checkpoint = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise ValueError(f"Cannot read {path} as safetensors ({e}); {WEIGHTS_HINT}.") from e
    elif suffix in (".ckpt", ".pt", ".pth", ".bin"):
        try:
            # weights_only: never execute code from a downloaded pickle; SD1.5 checkpoints need nothing else.
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
            raise ValueError(
                f"Cannot read {path} as a torch checkpoint of tensors ({str(e).splitlines()[0]}); convert it to "
                f"safetensors or {WEIGHTS_HINT}."
            ) from e
    else:
        raise ValueError(
            f"Unsupported weights file {path}: expected a diffusers folder, a .safetensors or a .ckpt file; "
            f"{WEIGHTS_HINT}."
        )
    while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(checkpoint).__name__}); {WEIGHTS_HINT}.")
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def _require_prefixes(state_dict: dict, prefixes: tuple[str, ...], path: Path) -> None:
    missing = [p for p in prefixes if not any(k.startswith(p) for k in state_dict)]
    if missing:
        raise ValueError(
            f"{path} is not an SD1.5 single-file checkpoint: no keys start with {', '.join(missing)} (expected the "
            f"original LDM layout {LDM_UNET_PREFIX}*, {LDM_VAE_PREFIX}*, {LDM_TEXT_PREFIX}*); {WEIGHTS_HINT}."
        )


def _instantiate(factory: Callable[[], torch.nn.Module], state_dict: dict, what: str, source: Path, arch: str):
    """Build a module from `factory` holding exactly `state_dict`, without paying for a random init.

    The module is created on the meta device, the converted keys and shapes are checked against it (a clear error
    for a checkpoint of another architecture), and the tensors are assigned in place.
    """
    with torch.device("meta"):
        model = factory()
    expected = model.state_dict()
    missing, unexpected, wrong = compare_state_dicts(expected, state_dict)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            details.append(
                f"{len(wrong)} with other shapes (e.g. {k}: {tuple(state_dict[k].shape)} in the file, "
                f"{tuple(expected[k].shape)} for arch {arch!r})"
            )
        raise ValueError(
            f"The {what} weights in {source} do not fit the shipped {arch!r} config "
            f"({CONFIG_DIR / arch}): {'; '.join(details)}. Pass the arch the checkpoint was made for "
            f"(an SD1.5-derived checkpoint needs arch='sd15')."
        )
    model.load_state_dict({k: v.contiguous() for k, v in state_dict.items()}, strict=True, assign=True)
    _materialise_nonpersistent_buffers(model, what)
    return model


def compare_state_dicts(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]
                        ) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, differently shaped) keys of `given` against `expected`, each sorted."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if tuple(expected[k].shape) != tuple(given[k].shape))
    return missing, unexpected, wrong


def _materialise_nonpersistent_buffers(model: torch.nn.Module, what: str) -> None:
    """Fill buffers that state dicts never carry (CLIP's position_ids) and are therefore still on the meta device."""
    for name, buf in list(model.named_buffers()):
        if not buf.is_meta:
            continue
        if name.endswith("position_ids"):
            value = torch.arange(buf.shape[-1], dtype=buf.dtype).expand(buf.shape).clone()
        else:
            raise RuntimeError(
                f"The {what} has a buffer {name!r} that its state dict does not carry; grpose.sd15 does not know "
                "how to fill it (a newer diffusers/transformers?)."
            )
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        owner.register_buffer(attr, value, persistent=False)


def _text_encoder_state_dict(checkpoint: dict, model_has_text_model: bool) -> dict:
    """Convert the LDM CLIP keys and match them to the installed transformers' CLIPTextModel key names."""
    converted = convert_ldm_clip_checkpoint(checkpoint)
    out = {}
    for key, value in converted.items():
        # position_ids is a non-persistent buffer in current transformers; old checkpoints still carry it.
        if key.endswith("position_ids"):
            continue
        # Some LDM checkpoints were saved by transformers versions without the `text_model.` wrapper, and
        # transformers 5 removed that wrapper from CLIPTextModel again.
        key = key.removeprefix("text_model.")
        out[f"text_model.{key}" if model_has_text_model else key] = value
    return out


def _has_text_model_wrapper(arch: str) -> bool:
    with torch.device("meta"):
        return hasattr(_text_encoder_factory(arch)(), "text_model")


def _unet_from_checkpoint(checkpoint: dict, arch: str, source: Path) -> UNet2DConditionModel:
    if any(k.startswith(LDM_UNET_PREFIX) for k in checkpoint):
        # v1-5-pruned holds EMA weights under model_ema.*; like the authors' prepare_weights.py (and ControlNet)
        # we take the non-EMA model.diffusion_model.* weights. Dropping the EMA copy keeps diffusers from warning.
        ldm = {k: v for k, v in checkpoint.items() if k.startswith(LDM_UNET_PREFIX)}
        state_dict = convert_ldm_unet_checkpoint(ldm, sd15_config(arch, "unet"))
    elif "conv_in.weight" in checkpoint and any(k.startswith("down_blocks.") for k in checkpoint):
        state_dict = checkpoint  # a diffusers-format UNet file (diffusion_pytorch_model.safetensors)
    else:
        raise ValueError(
            f"{source} holds no SD1.5 UNet: expected keys {LDM_UNET_PREFIX}* (original layout) or diffusers UNet "
            f"keys (conv_in.*, down_blocks.*); {WEIGHTS_HINT}."
        )
    return _instantiate(_unet_factory(arch), state_dict, "UNet", source, arch)


def _parts_from_single_file(path: Path, arch: str) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    return _parts_from_ldm_state_dict(_read_state_dict(path), arch, path)


def _parts_from_ldm_state_dict(
    checkpoint: dict, arch: str, path: Path
) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    _require_prefixes(checkpoint, (LDM_UNET_PREFIX, LDM_VAE_PREFIX, LDM_TEXT_PREFIX), path)
    unet = _unet_from_checkpoint(checkpoint, arch, path)
    vae_ldm = {k: v for k, v in checkpoint.items() if k.startswith(LDM_VAE_PREFIX)}
    vae = _instantiate(
        _vae_factory(arch), convert_ldm_vae_checkpoint(vae_ldm, sd15_config(arch, "vae")), "VAE", path, arch
    )
    text_ldm = {k: v for k, v in checkpoint.items() if k.startswith(LDM_TEXT_PREFIX)}
    text_sd = _text_encoder_state_dict(text_ldm, _has_text_model_wrapper(arch))
    text_encoder = _instantiate(_text_encoder_factory(arch), text_sd, "text encoder", path, arch)
    return unet, vae, text_encoder


# ----------------------------------------------------------------------------------------------------------------
# Diffusers folders
# ----------------------------------------------------------------------------------------------------------------

# Fields that decide whether a stored model is the architecture the rest of grpose was configured for.
_STRUCTURE_KEYS = {
    "unet": ("block_out_channels", "layers_per_block", "cross_attention_dim", "down_block_types", "in_channels"),
    "vae": ("block_out_channels", "latent_channels", "down_block_types"),
    "text_encoder": ("hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings"),
}


def _check_structure(part: str, stored: dict, arch: str, source: Path) -> None:
    shipped = sd15_config(arch, part)
    for key in _STRUCTURE_KEYS[part]:
        have, want = stored.get(key), shipped[key]
        if isinstance(have, (list, tuple)):
            have = list(have)
        if have != want:
            raise ValueError(
                f"The {part} in {source} has {key}={have}, but arch {arch!r} expects {want}; pass the arch the "
                "weights were made for (an SD1.5-derived model needs arch='sd15')."
            )


def _require_subfolders(folder: Path, names: tuple[str, ...]) -> None:
    missing = [f"{n}/config.json" for n in names if not (folder / n / "config.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a complete diffusers SD1.5 folder: missing {', '.join(missing)} "
            f"(expected unet/, vae/, text_encoder/, tokenizer/); {WEIGHTS_HINT}."
        )


def _load_diffusers_unet(folder: Path, arch: str) -> UNet2DConditionModel:
    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"Cannot load a diffusers UNet from {folder}: {str(e).splitlines()[0]}") from e
    _check_structure("unet", dict(unet.config), arch, folder)
    return unet


def _parts_from_diffusers_folder(folder: Path, arch: str):
    _require_subfolders(folder, ("unet", "vae", "text_encoder"))
    unet = _load_diffusers_unet(folder / "unet", arch)
    try:
        vae = AutoencoderKL.from_pretrained(str(folder / "vae"), local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"Cannot load the SD1.5 parts in {folder}: {str(e).splitlines()[0]}") from e
    _check_structure("vae", dict(vae.config), arch, folder / "vae")
    _check_structure("text_encoder", text_encoder.config.to_dict(), arch, folder / "text_encoder")
    return unet, vae, text_encoder


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    if all(p.dtype == dtype for p in module.parameters()):
        return module
    if getattr(module, "_keep_in_fp32_modules", None):
        return module.to(dtype)
    # diffusers 0.39's ModelMixin.to warns on every dtype cast, even when no module must stay in float32.
    return torch.nn.Module.to(module, dtype=dtype)


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module


def _existing_path(weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"SD1.5 weights not found at {path}: {WEIGHTS_HINT}.")
    return path


RANDOM_INIT_SEED = 0


def build_sd15(arch: str = "sd15", weights: str | None = None, torch_dtype=torch.float32) -> StableDiffusionParts:
    """Build the frozen SD1.5 parts (SPEC section 1), fully offline.

    `weights` None gives random init (benchmarks, tests, the demo), always the same for a given `arch` (seed
    RANDOM_INIT_SEED, the global RNG untouched), so a run trained on a random base can be evaluated and sampled
    later on the identical base; otherwise a diffusers folder (unet/, vae/, text_encoder/,
    tokenizer/) or an original single-file checkpoint (.safetensors / .ckpt, keys model.diffusion_model.*,
    first_stage_model.*, cond_stage_model.transformer.*), converted against the shipped `arch` configs.
    """
    sd15_config(arch, "unet")  # validates arch before any heavy work
    tokenizer_dir = None
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            unet = _unet_factory(arch)()
            vae = _vae_factory(arch)()
            text_encoder = _text_encoder_factory(arch)()
    else:
        path = _existing_path(weights)
        if path.is_dir():
            unet, vae, text_encoder = _parts_from_diffusers_folder(path, arch)
            if (path / "tokenizer").is_dir():
                tokenizer_dir = str(path / "tokenizer")
        else:
            unet, vae, text_encoder = _parts_from_single_file(path, arch)
    parts = StableDiffusionParts(
        unet=_freeze(_cast(unet, torch_dtype)),
        vae=_freeze(_cast(vae, torch_dtype)),
        text_encoder=_freeze(_cast(text_encoder, torch_dtype)),
        tokenizer=make_tokenizer(tokenizer_dir),
        vae_scale_factor=float(vae.config.scaling_factor),
    )
    return parts


def load_unet(weights: str, arch: str = "sd15") -> UNet2DConditionModel:
    """Load (frozen) any SD1.5-compatible UNet, e.g. a community fine-tune for paper Fig. 5.

    Accepts an original single file (only model.diffusion_model.* is needed), a diffusers UNet file
    (diffusion_pytorch_model.safetensors), a diffusers UNet folder, or a diffusers pipeline folder with unet/.
    Returned in float32 whatever the file stores; cast it with `.to()` next to the other parts.
    """
    path = _existing_path(weights)
    if path.is_dir():
        if (path / "unet" / "config.json").is_file():
            path = path / "unet"
        elif not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is neither a diffusers pipeline folder (unet/config.json) nor a UNet folder (config.json); "
                f"{WEIGHTS_HINT}."
            )
        unet = _load_diffusers_unet(path, arch)
    else:
        unet = _unet_from_checkpoint(_read_state_dict(path), arch, path)
    return _freeze(_cast(unet, torch.float32))


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte-level BPE alphabet: printable bytes map to themselves, the rest to code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _open_clip_bpe_path() -> Path:
    # find_spec locates the package without importing it (open_clip's import pulls in timm and more).
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "make_tokenizer() without a tokenizer folder builds the CLIP tokenizer from the BPE vocabulary that "
            "open_clip_torch ships: pip install open_clip_torch, or pass a diffusers tokenizer/ folder."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"open_clip_torch is installed but {path} is missing; reinstall open_clip_torch.")
    return path


def _cache_root() -> Path:
    return Path(os.environ.get("GRPOSE_CACHE", Path.home() / ".cache" / "grpose")).expanduser()


def _atomic_write(path: Path, text: str) -> None:
    # Several DDP ranks may build the tokenizer at once; a rename never leaves a half-written file behind.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_clip_vocab(cache: Path) -> None:
    """Write vocab.json + merges.txt in the Hugging Face CLIP format from open_clip's BPE merges."""
    with gzip.open(_open_clip_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : 1 + CLIP_NUM_MERGES]
    if len(merges) != CLIP_NUM_MERGES:
        raise ValueError(f"{_open_clip_bpe_path()} holds {len(merges)} merges, expected {CLIP_NUM_MERGES}.")
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges] + [CLIP_BOS, CLIP_EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"Built a CLIP vocabulary of {len(vocab)} tokens instead of {CLIP_VOCAB_SIZE}.")
    cache.mkdir(parents=True, exist_ok=True)
    _atomic_write(cache / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    _atomic_write(cache / "vocab.json", json.dumps(vocab, ensure_ascii=False))


def make_tokenizer(path: str | None = None) -> CLIPTokenizer:
    """SD1.5's CLIP tokenizer, offline: from a diffusers tokenizer folder, else from open_clip's BPE vocabulary.

    Pads with "<|endoftext|>" to 77 tokens like SD1.5's tokenizer (openai/clip-vit-large-patch14).
    """
    if path is not None:
        folder = Path(path).expanduser()
        if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
            raise FileNotFoundError(
                f"{folder} is not a CLIP tokenizer folder (needs vocab.json and merges.txt, like the tokenizer/ "
                "folder of runwayml/stable-diffusion-v1-5); pass None to build it from open_clip's vocabulary."
            )
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    else:
        cache = _cache_root() / "clip_tokenizer"
        if not ((cache / "vocab.json").is_file() and (cache / "merges.txt").is_file()):
            _write_clip_vocab(cache)
        tokenizer = CLIPTokenizer(
            vocab_file=str(cache / "vocab.json"),
            merges_file=str(cache / "merges.txt"),
            bos_token=CLIP_BOS,
            eos_token=CLIP_EOS,
            unk_token=CLIP_EOS,
            pad_token=CLIP_EOS,
            model_max_length=CLIP_CONTEXT_LENGTH,
        )
        if len(tokenizer) != CLIP_VOCAB_SIZE:
            raise ValueError(
                f"The cached CLIP tokenizer in {cache} has {len(tokenizer)} tokens, expected {CLIP_VOCAB_SIZE}; "
                "delete that folder so it is rebuilt."
            )
    if tokenizer.model_max_length > CLIP_CONTEXT_LENGTH:  # folders without tokenizer_config.json
        tokenizer.model_max_length = CLIP_CONTEXT_LENGTH
    return tokenizer


def encode_prompts(parts: StableDiffusionParts, prompts: list[str]) -> torch.Tensor:
    """Text conditioning [B, 77, D]: the CLIP text encoder's last hidden state over 77 padded tokens."""
    if isinstance(prompts, str):
        raise TypeError("encode_prompts() takes a list of prompts, not a single string.")
    ids = parts.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=parts.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    device = next(parts.text_encoder.parameters()).device
    # No attention mask: SD1.5 was trained with padding tokens visible to the encoder (LDM FrozenCLIPEmbedder).
    with torch.no_grad():
        return parts.text_encoder(ids.to(device)).last_hidden_state


def make_scheduler(kind: str = "ddpm") -> SchedulerMixin:
    """A diffusers scheduler on SD1.5's schedule: "ddpm" (training noise), "ddim", or any scheduler class name."""
    aliases = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler"}
    name = aliases.get(kind.lower(), kind)
    cls = getattr(diffusers, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, SchedulerMixin)):
        raise ValueError(
            f"Unknown scheduler {kind!r}: use 'ddpm', 'ddim' or a diffusers scheduler class name such as "
            "'DPMSolverMultistepScheduler' or 'EulerDiscreteScheduler'."
        )
    accepted = inspect.signature(cls.__init__).parameters
    settings = {k: v for k, v in {**SD15_SCHEDULE, **SD15_SAMPLING}.items() if k in accepted}
    missing = [k for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule") if k not in settings]
    if missing:
        raise ValueError(f"Scheduler {name} does not take SD1.5's beta schedule (no {', '.join(missing)}).")
    return cls(**settings)
