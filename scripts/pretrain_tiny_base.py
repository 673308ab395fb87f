"""Pretrain the `mini` SD1.5-shaped base (VAE, then text-conditional UNet + CLIP text encoder) on the synthetic world.

The result is a diffusers folder (unet/, vae/, text_encoder/, fp16 safetensors) that loads through
`grpose.sd15.build_sd15("mini", <folder>)`, i.e. the same `model.pretrained` path as real SD1.5. Runs on a CPU
in about 40 minutes on one thread; see docs/mini_world.md for the recorded run.

    python scripts/pretrain_tiny_base.py --out assets/mini/base
    python scripts/pretrain_tiny_base.py --out assets/mini/base --finetune-decoder 1200   # stage 3, in place
    python scripts/pretrain_tiny_base.py --from-base assets/mini/base --out NEW --unet-steps N  # continue the UNet
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image, ImageDraw
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from grpose.data.synthetic import SyntheticPoseDataset
from grpose.pipeline import GRPosePipeline, images_to_uint8
from grpose.sd15 import build_sd15, make_scheduler, make_tokenizer, sd15_config

ARCH = "mini"
RESOLUTION = 128
TRAIN_SEED = 0  # the synthetic world's training split; seed 1 is the evaluation split and is never trained on
EVAL_SEED = 1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="assets/mini/base", help="diffusers folder to write")
    p.add_argument("--cache-dir", default=".cache/mini_base", help="rendered dataset, VAE stage, latents")
    p.add_argument("--log-dir", default="docs", help="where the loss CSVs go")
    p.add_argument("--grid", default="docs/images/mini_base_samples.png", help="sample grid PNG")
    p.add_argument("--loss-plot", default="docs/images/mini_base_loss.png", help="loss-curve PNG")
    p.add_argument("--num-images", type=int, default=12000, help="training images (synthetic seed 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches, noise and timesteps")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    # VAE stage
    p.add_argument("--vae-steps", type=int, default=1300, help="VAE steps on random crops")
    p.add_argument("--vae-crop", type=int, default=64, help="crop size of the VAE's main phase (fully convolutional)")
    p.add_argument("--vae-full-steps", type=int, default=120, help="final VAE steps on full 128 px images")
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-full-batch", type=int, default=8)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=1e-5, help="weight of the per-pixel KL term")
    p.add_argument("--reuse-vae", action="store_true", help="load the VAE stage from --cache-dir instead of training")
    p.add_argument("--from-base", metavar="DIR",
                   help="continue from the base in DIR: its VAE is kept (no VAE stage) and its UNet and text encoder "
                        "are the starting point of the UNet stage")
    p.add_argument("--finetune-decoder", type=int, default=0, metavar="STEPS",
                   help="only fine-tune the VAE decoder of --out for STEPS full-resolution steps (encoder frozen, "
                        "so latents and the UNet stay valid) and write it back")
    p.add_argument("--decoder-lr", type=float, default=3e-4)
    # UNet stage
    p.add_argument("--unet-steps", type=int, default=1800)
    p.add_argument("--unet-batch", type=int, default=32)
    p.add_argument("--unet-lr", type=float, default=6e-4)
    p.add_argument("--text-lr", type=float, default=2e-4, help="LR of the jointly trained text encoder (0: frozen)")
    p.add_argument("--prompt-dropout", type=float, default=0.1, help="empty-prompt rate (classifier-free guidance)")
    p.add_argument("--ema-decay", type=float, default=0.998)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--stop-after", type=int, default=0, metavar="STEPS",
                   help="end the UNet stage after its first STEPS steps (the learning rate follows the --unet-steps "
                        "schedule and never reaches its end)")
    p.add_argument("--save-every", type=int, default=0, metavar="STEPS",
                   help="also write the EMA base to --out every STEPS UNet steps, so a stopped run keeps its progress")
    # Sample check
    p.add_argument("--sample-only", action="store_true", help="only draw the sample grid from --out")
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--grid-captions", type=int, default=8)
    p.add_argument("--grid-seeds", type=int, default=3)
    args = p.parse_args()
    if not 0 <= args.stop_after <= args.unet_steps:
        p.error(f"--stop-after {args.stop_after} must lie between 0 and --unet-steps {args.unet_steps}")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Data: rendered once into uint8 so training never pays for PIL drawing
# ----------------------------------------------------------------------------------------------------------------


def render_dataset(num: int, seed: int, cache: Path) -> tuple[torch.Tensor, list[str]]:
    path = cache / f"synthetic_s{seed}_n{num}_r{RESOLUTION}.pt"
    if path.is_file():
        data = torch.load(path, weights_only=True)
        return data["images"], list(data["prompts"])
    ds = SyntheticPoseDataset(num_samples=num, resolution=RESOLUTION, seed=seed)
    images = torch.empty(num, 3, RESOLUTION, RESOLUTION, dtype=torch.uint8)
    prompts = []
    for i in tqdm(range(num), desc=f"render seed {seed}"):
        sample = ds[i]
        images[i] = ((sample["image"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        prompts.append(sample["prompt"])
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"images": images, "prompts": prompts}, path)
    return images, prompts


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float() / 127.5 - 1.0


def lr_at(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class CurveLog:
    """Loss curves to CSV, one row every `every` steps holding the mean since the last row."""

    def __init__(self, path: Path, fields: list[str], every: int = 10):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.writer.writerow(["step", *fields, "lr", "elapsed_s"])
        self.fields, self.every, self.sums, self.count, self.start = fields, every, [0.0] * len(fields), 0, time.time()
        self.rows: list[list[float]] = []

    def add(self, step: int, values: list[float], lr: float) -> None:
        self.sums = [s + v for s, v in zip(self.sums, values)]
        self.count += 1
        if (step + 1) % self.every == 0:
            row = [step + 1, *[s / self.count for s in self.sums], lr, round(time.time() - self.start, 1)]
            self.writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
            self.file.flush()
            self.rows.append(row)
            self.sums, self.count = [0.0] * len(self.fields), 0

    def close(self) -> None:
        self.file.close()


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: VAE
# ----------------------------------------------------------------------------------------------------------------


def train_vae(args, images: torch.Tensor, gen: torch.Generator) -> tuple[AutoencoderKL, CurveLog]:
    vae = AutoencoderKL.from_config(sd15_config(ARCH, "vae"))
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    total = args.vae_steps + args.vae_full_steps
    log = CurveLog(Path(args.log_dir) / "mini_base_vae_loss.csv", ["l1", "mse", "kl"])
    n = images.shape[0]
    for step in tqdm(range(total), desc="VAE"):
        full = step >= args.vae_steps
        batch, crop = (args.vae_full_batch, RESOLUTION) if full else (args.vae_batch, args.vae_crop)
        idx = torch.randint(0, n, (batch,), generator=gen)
        x = images[idx]
        if crop < RESOLUTION:
            # One offset per batch, on the 8-pixel latent grid, so crops line up with latent cells.
            oy, ox = (int(v) * 8 for v in torch.randint(0, (RESOLUTION - crop) // 8 + 1, (2,), generator=gen))
            x = x[:, :, oy:oy + crop, ox:ox + crop]
        x = to_float(x)
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        lr = args.vae_lr * lr_at(step, total, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        l1 = (recon - x).abs().mean()
        mse = (recon - x).square().mean()
        kl = posterior.kl().sum() / x.numel()  # KL per pixel value
        loss = l1 + mse + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        log.add(step, [l1.item(), mse.item(), kl.item()], lr)
    log.close()
    vae.eval().requires_grad_(False)
    return vae, log


def finetune_decoder(args, vae: AutoencoderKL, images: torch.Tensor, gen: torch.Generator) -> CurveLog:
    """Sharpen the decoder on full 128 px images with the encoder frozen (SD's "ft-MSE" VAE recipe): the latent
    space, and so the UNet trained on it, is unchanged; only what the decoder draws from a latent improves."""
    vae.requires_grad_(False)
    decoder = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    for p in decoder:
        p.requires_grad_(True)
    vae.decoder.train()
    opt = torch.optim.AdamW(decoder, lr=args.decoder_lr, weight_decay=0.0)
    log = CurveLog(Path(args.log_dir) / "mini_base_decoder_loss.csv", ["l1", "mse"])
    n = images.shape[0]
    for step in tqdm(range(args.finetune_decoder), desc="VAE decoder"):
        idx = torch.randint(0, n, (args.vae_full_batch,), generator=gen)
        x = to_float(images[idx])
        flip = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        lr = args.decoder_lr * lr_at(step, args.finetune_decoder, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        l1 = (recon - x).abs().mean()
        mse = (recon - x).square().mean()
        opt.zero_grad(set_to_none=True)
        (l1 + mse).backward()
        torch.nn.utils.clip_grad_norm_(decoder, 1.0)
        opt.step()
        log.add(step, [l1.item(), mse.item()], lr)
    log.close()
    vae.eval().requires_grad_(False)
    return log


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    torch.nn.Module.to(vae, memory_format=torch.channels_last)  # ~30% faster convolutions on the CPU
    for start in tqdm(range(0, images.shape[0], batch), desc="encode latents"):
        x = to_float(images[start:start + batch]).contiguous(memory_format=torch.channels_last)
        posterior = vae.encode(x).latent_dist
        means.append(posterior.mean.contiguous())
        stds.append(posterior.std.contiguous())
    torch.nn.Module.to(vae, memory_format=torch.contiguous_format)
    return torch.cat(means), torch.cat(stds)


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: text-conditional UNet (+ text encoder)
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    torch._foreach_lerp_(ema, params, 1.0 - decay)


def train_unet(args, means, stds, scale, prompts, gen, save=None):
    torch.manual_seed(args.seed + 1)
    if args.from_base:
        start = build_sd15(ARCH, args.from_base)
        unet, text_encoder = start.unet.requires_grad_(True), start.text_encoder
    else:
        unet = UNet2DConditionModel.from_config(sd15_config(ARCH, "unet"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**sd15_config(ARCH, "text_encoder")))
    tokenizer = make_tokenizer()
    tokenize = lambda texts: tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                                       truncation=True, return_tensors="pt").input_ids
    ids = tokenize(prompts)
    empty_ids = tokenize([""])[0]
    scheduler = make_scheduler("ddpm")
    alphas = scheduler.alphas_cumprod

    train_text = args.text_lr > 0
    unet.train()
    text_encoder.train(train_text).requires_grad_(train_text)
    groups = [{"params": list(unet.parameters()), "base_lr": args.unet_lr}]
    if train_text:
        groups.append({"params": list(text_encoder.parameters()), "base_lr": args.text_lr})
    opt = torch.optim.AdamW(groups, lr=args.unet_lr, weight_decay=0.01)
    trained = [p for g in groups for p in g["params"]]
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    ema_params = list(ema_unet.parameters()) + (list(ema_text.parameters()) if train_text else [])

    log = CurveLog(Path(args.log_dir) / "mini_base_unet_loss.csv", ["mse"])
    n = means.shape[0]
    steps = args.stop_after or args.unet_steps
    for step in tqdm(range(steps), desc="UNet"):
        idx = torch.randint(0, n, (args.unet_batch,), generator=gen)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.unet_batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * z0 + (1 - a).sqrt() * noise
        batch_ids = ids[idx].clone()
        drop = torch.rand(args.unet_batch, generator=gen) < args.prompt_dropout
        batch_ids[drop] = empty_ids
        factor = lr_at(step, args.unet_steps, args.warmup)
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * factor
        with torch.set_grad_enabled(train_text):
            text = text_encoder(batch_ids).last_hidden_state
        pred = unet(noisy, t, encoder_hidden_states=text).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        # EMA warm-up: early steps average over fewer updates.
        ema_update(ema_params, trained, min(args.ema_decay, (1 + step) / (10 + step)))
        log.add(step, [loss.item()], args.unet_lr * factor)
        if save is not None and args.save_every and (step + 1) % args.save_every == 0 and step + 1 < steps:
            save(ema_unet, ema_text if train_text else text_encoder)
    log.close()
    if not train_text:
        ema_text = text_encoder
    return ema_unet, ema_text, log


# ----------------------------------------------------------------------------------------------------------------
# Saving, sampling, plotting
# ----------------------------------------------------------------------------------------------------------------


def save_base(out: Path, unet, vae, text_encoder) -> None:
    """fp16 safetensors keep the folder small; build_sd15 casts every part back to float32 on load."""
    out.mkdir(parents=True, exist_ok=True)
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        save_half(module, out / name)


def save_half(module: torch.nn.Module, folder: Path) -> None:
    """An fp16 copy of `module` as a diffusers / transformers folder. diffusers writes the folder a model was loaded
    from (`_name_or_path`) into its config; it is dropped, so a shipped base carries no path of this machine."""
    half = copy.deepcopy(module)
    torch.nn.Module.to(half, dtype=torch.float16)
    half.save_pretrained(str(folder), safe_serialization=True)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    if config.pop("_name_or_path", None) is not None:
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _caption_tile(text: str, width: int, lines: int = 4) -> Image.Image:
    tile = Image.new("RGB", (width, 12 * lines + 4), (255, 255, 255))
    draw = ImageDraw.Draw(tile)
    for i, line in enumerate(textwrap.wrap(text, width=width // 6)[:lines]):
        draw.text((2, 2 + 12 * i), line, fill=(0, 0, 0))
    return tile


def sample_grid(args) -> None:
    """Columns: evaluation-split captions; rows: the real image (seed 1) then one generated image per seed."""
    parts = build_sd15(ARCH, args.out)
    pipe = GRPosePipeline(parts, None)  # the base alone: no adapter, pose ignored
    real, prompts = render_dataset(args.grid_captions, EVAL_SEED, Path(args.cache_dir))
    blank_pose = torch.zeros(args.grid_captions, 3, RESOLUTION, RESOLUTION)
    rows = []
    for s in range(args.grid_seeds):
        seeds = [1000 * s + i for i in range(args.grid_captions)]
        # The base learnt the empty prompt as its unconditional branch (prompt dropout), so that is the negative.
        out = pipe(prompts, blank_pose, seeds, negative_prompt="", num_inference_steps=args.sample_steps,
                   guidance_scale=args.guidance, progress=False)
        rows.append(images_to_uint8(out).numpy())
    cap_h = _caption_tile("", RESOLUTION).height
    label_w, pad = 70, 2
    width = label_w + args.grid_captions * (RESOLUTION + pad)
    height = cap_h + (1 + args.grid_seeds) * (RESOLUTION + pad)
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    real_np = real.permute(0, 2, 3, 1).numpy()
    for i, prompt in enumerate(prompts):
        x = label_w + i * (RESOLUTION + pad)
        grid.paste(_caption_tile(prompt, RESOLUTION), (x, 0))
        grid.paste(Image.fromarray(real_np[i]), (x, cap_h))
        for r, row in enumerate(rows):
            grid.paste(Image.fromarray(row[i]), (x, cap_h + (r + 1) * (RESOLUTION + pad)))
    draw.text((2, cap_h + RESOLUTION // 2), "real (seed 1)", fill=(0, 0, 0))
    for r in range(args.grid_seeds):
        draw.text((2, cap_h + (r + 1) * (RESOLUTION + pad) + RESOLUTION // 2), f"generated\nseed {r}",
                  fill=(0, 0, 0))
    Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.grid)
    print(f"sample grid -> {args.grid}")


def plot_losses(path: Path, panels: list[tuple[str, list[float], list[float]]]) -> None:
    """A dependency-free log-scale line plot per loss (matplotlib is not a project dependency)."""
    w, h, m = 300, 180, 34
    img = Image.new("RGB", (w * len(panels), h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for k, (title, xs, ys) in enumerate(panels):
        x0 = k * w
        ly = np.log10(np.maximum(np.asarray(ys, dtype=float), 1e-8))
        lo, hi = math.floor(ly.min() * 4) / 4, math.ceil(ly.max() * 4) / 4
        hi = hi if hi > lo else lo + 0.25
        px = lambda x: x0 + m + (x / max(xs)) * (w - m - 10)
        py = lambda y: 16 + (hi - y) / (hi - lo) * (h - 16 - 24)
        draw.rectangle([x0 + m, 16, x0 + w - 10, h - 24], outline=(0, 0, 0))
        draw.line([(px(x), py(y)) for x, y in zip(xs, ly)], fill=(200, 40, 40), width=1)
        draw.text((x0 + m, 2), title, fill=(0, 0, 0))
        for y in (lo, hi):
            draw.text((x0 + 1, py(y) - 6), f"{10 ** y:.3g}", fill=(0, 0, 0))
        draw.text((x0 + m, h - 20), "0", fill=(0, 0, 0))
        draw.text((x0 + w - 44, h - 20), f"{int(max(xs))}", fill=(0, 0, 0))
        draw.text((x0 + w // 2 - 10, h - 20), "step", fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.sample_only:
        sample_grid(args)
        return
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    cache = Path(args.cache_dir)
    if args.finetune_decoder:
        images, _ = render_dataset(args.num_images, TRAIN_SEED, cache)
        vae = AutoencoderKL.from_pretrained(str(Path(args.out) / "vae"), torch_dtype=torch.float32)
        start = time.time()
        log = finetune_decoder(args, vae, images, gen)
        print(json.dumps({"decoder_s": round(time.time() - start, 1), "final": log.rows[-1]}))
        save_half(vae, Path(args.out) / "vae")
        sample_grid(args)
        return
    timings = {}

    start = time.time()
    images, prompts = render_dataset(args.num_images, TRAIN_SEED, cache)
    timings["render_s"] = time.time() - start

    start = time.time()
    vae_path = cache / "vae"
    if args.from_base or args.reuse_vae:
        source = str(Path(args.from_base) / "vae") if args.from_base else str(vae_path)
        vae = AutoencoderKL.from_pretrained(source, torch_dtype=torch.float32).eval().requires_grad_(False)
        vae_log = None
    else:
        vae, vae_log = train_vae(args, images, gen)
        vae.save_pretrained(str(vae_path), safe_serialization=True)
    timings["vae_s"] = time.time() - start

    start = time.time()
    means, stds = encode_latents(vae, images)
    del images
    # Like SD1.5's 0.18215: scale latents to unit variance so the noise schedule sees the signal it was made for.
    # A continued base keeps the scale its UNet was trained with.
    scale = float(vae.config.scaling_factor) if args.from_base else float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scale)
    timings["encode_s"] = time.time() - start

    start = time.time()
    save = lambda unet_now, text_now: save_base(Path(args.out), unet_now, vae, text_now)
    unet, text_encoder, unet_log = train_unet(args, means, stds, scale, prompts, gen, save)
    timings["unet_s"] = time.time() - start

    save_base(Path(args.out), unet, vae, text_encoder)
    panels = []
    if vae_log is not None:
        panels.append(("VAE L1 (per pixel)", [r[0] for r in vae_log.rows], [r[1] for r in vae_log.rows]))
    panels.append(("UNet epsilon MSE", [r[0] for r in unet_log.rows], [r[1] for r in unet_log.rows]))
    plot_losses(Path(args.loss_plot), panels)
    summary = {
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "latent_scaling_factor": scale,
        "params": {name: sum(p.numel() for p in m.parameters())
                   for name, m in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))},
        "final_vae": vae_log.rows[-1] if vae_log else None,
        "final_unet_mse_last100": float(np.mean([r[1] for r in unet_log.rows[-10:]])),
    }
    print(json.dumps(summary, indent=2))
    with open(cache / "summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    sample_grid(args)


if __name__ == "__main__":
    main()
