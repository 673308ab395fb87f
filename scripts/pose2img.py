"""Generate images from a prompt and a pose with a trained GRPose adapter on a frozen SD1.5 (SPEC section 6).

Single pose:  python scripts/pose2img.py --sd15 SD15 --adapter ADAPTER --prompt TEXT --pose FILE [--num-images N]
Batch mode:   python scripts/pose2img.py --sd15 SD15 --adapter ADAPTER --mapping MAPPING.json --root DATASET_DIR
Writes <name>_<seed>.png, the rendered condition <name>_pose.png, an overlay <name>_<seed>_overlay.png and a line
per image in manifest.jsonl (see docs/inference.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from grpose.data.humanart import load_mapping, resolve_mapping_path  # noqa: E402
from grpose.data.skeleton import overlay_pose  # noqa: E402
from grpose.pipeline import DEFAULT_NEGATIVE_PROMPT, GRPosePipeline, images_to_uint8  # noqa: E402
from grpose.pose_inputs import ACCEPTED_FORMATS, PoseCondition, load_pose  # noqa: E402

log = logging.getLogger("pose2img")


@dataclass
class Job:
    """One output image: its file stem, prompt, pose input (file), the pose's source image size and its seed."""

    name: str
    prompt: str
    pose: str
    image_size: Optional[tuple[int, int]]
    seed: int
    image_id: Optional[str] = None


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the usage lines of the module docstring; show the defaults that are values (not None / off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
        if shown and "%(default)" not in text:
            text = f"{text} (default: %(default)s)".strip()
        return text


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=_HelpFormatter,
        epilog="Pose inputs: " + "; ".join(ACCEPTED_FORMATS) + ".")
    weights = parser.add_argument_group("weights")
    weights.add_argument("--sd15", required=True,
                         help="SD1.5 diffusers folder or single .safetensors/.ckpt file; 'random' = the "
                              "reproducible random base of --arch (what configs/demo.yaml trains on)")
    weights.add_argument("--adapter", required=True,
                         help="trained adapter: a save_pretrained / exported folder, a Lightning .ckpt or a "
                              ".safetensors written by grpose")
    weights.add_argument("--base-unet", help="another SD1.5-compatible UNet (single file, diffusers UNet file or "
                                             "folder) replacing SD1.5's UNet (paper Fig. 5)")
    weights.add_argument("--trust-pickle", action="store_true",
                         help="allow an adapter .ckpt holding more than tensors (runs its pickle: trusted files only)")
    weights.add_argument("--arch", default="sd15", choices=("sd15", "tiny", "mini"), help="architecture of the weights")

    single = parser.add_argument_group("single pose")
    single.add_argument("--prompt", help="text prompt")
    single.add_argument("--pose", help="pose file (keypoint .json / .npz / .npy, or a rendered skeleton image)")
    single.add_argument("--name", help="file name stem of the outputs (default: the pose file's stem)")
    single.add_argument("--num-images", type=int, default=1, help="images for the pose, seeds seed, seed+1, ...")

    batch = parser.add_argument_group("batch mode (HumanSD mapping, one image per entry, seed = --seed + index)")
    batch.add_argument("--mapping", help="mapping JSON {id: {img_path, prompt, pose_path}} (or a folder of them)")
    batch.add_argument("--root", help="dataset folder the mapping's paths are relative to")
    batch.add_argument("--limit", type=int, help="only the first N entries")

    pose = parser.add_argument_group("pose mapping")
    pose.add_argument("--pose-size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"),
                      help="size of the image the keypoints were annotated on (default: a COCO file's own size, the "
                           "mapping's image in batch mode, else keypoints are in output pixels)")
    pose.add_argument("--image-id", help="which image of a COCO annotations file (id or file name)")
    pose.add_argument("--skeleton-width", type=int,
                      help="limb width in pixels (default: 10 px at 512, scaled with --resolution, at least 2; "
                           "match the training config's data.skeleton_width)")

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--steps", type=int, default=50, help="sampling steps")
    sampling.add_argument("--guidance", type=float, default=9.0, help="classifier-free guidance scale")
    sampling.add_argument("--seed", type=int, default=42, help="seed of the first image")
    sampling.add_argument("--scheduler", default="ddim", help="ddim or a diffusers scheduler class name")
    sampling.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    sampling.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT,
                          help="text of the unconditional branch of classifier-free guidance")
    sampling.add_argument("--conditioning-scale", type=float, default=1.0, help="multiplies the adapter's residuals")
    sampling.add_argument("--resolution", type=int, default=512, help="output side in pixels (square)")
    sampling.add_argument("--batch-size", type=int, default=4, help="images per forward pass; the images do not depend on it")
    sampling.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    sampling.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="weights' precision")

    output = parser.add_argument_group("output")
    output.add_argument("--out", default="outputs/pose2img", help="output folder")
    output.add_argument("--skip-existing", action="store_true", help="skip images already in --out")

    args = parser.parse_args(argv)
    if args.mapping is not None:
        if args.root is None:
            parser.error("--mapping needs --root, the folder its img_path/pose_path entries are relative to")
        if args.prompt is not None or args.pose is not None or args.name is not None:
            parser.error("--prompt, --pose and --name are for a single pose; --mapping reads prompts and poses "
                         "from the mapping")
        if args.num_images != 1:
            parser.error("--mapping makes one image per entry; --num-images is for a single pose")
    else:
        if args.prompt is None or args.pose is None:
            parser.error("give --prompt and --pose, or --mapping and --root for batch mode")
        if args.root is not None or args.limit is not None:
            parser.error("--root and --limit belong to batch mode (--mapping)")
    for flag in ("num_images", "steps", "batch_size", "resolution"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


def safe_name(text: str) -> str:
    """A file-name stem: characters other than letters, digits, '.', '_' and '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).strip(".") or "pose"


def single_jobs(args: argparse.Namespace) -> list[Job]:
    name = safe_name(args.name or Path(args.pose).stem)
    size = tuple(args.pose_size) if args.pose_size else None
    return [Job(name, args.prompt, args.pose, size, args.seed + k, args.image_id) for k in range(args.num_images)]


def mapping_jobs(args: argparse.Namespace) -> list[Job]:
    """One job per mapping entry; the keypoints' frame is the entry's image, whose header gives its size."""
    root = Path(args.root)
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a folder")
    entries = load_mapping(resolve_mapping_path(root, args.mapping))
    if not entries:
        raise ValueError(f"mapping {args.mapping} has no entries")
    jobs = []
    for index, entry in enumerate(entries[: args.limit]):
        pose_path = root / entry.pose_path
        if not pose_path.is_file():
            raise FileNotFoundError(f"mapping entry {entry.id!r}: pose file {pose_path} does not exist")
        jobs.append(Job(safe_name(entry.id), entry.prompt, str(pose_path), _source_size(root, entry, args),
                        args.seed + index))
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"mapping {args.mapping}: ids collide once made file names safe; rename the entries")
    return jobs


def _source_size(root: Path, entry, args: argparse.Namespace) -> tuple[int, int]:
    if args.pose_size:
        return tuple(args.pose_size)
    image_path = root / entry.img_path
    try:
        with Image.open(image_path) as img:  # reads the header only
            return img.size
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"mapping entry {entry.id!r}: cannot read the size of {image_path} ({err}), which the pose's keypoints "
            "refer to; restore the image or pass --pose-size WIDTH HEIGHT"
        ) from err


def output_paths(out: Path, job: Job) -> dict[str, Path]:
    return {"image": out / f"{job.name}_{job.seed}.png", "pose": out / f"{job.name}_pose.png",
            "overlay": out / f"{job.name}_{job.seed}_overlay.png"}


def run(args: argparse.Namespace) -> list[Path]:
    """Generate every job; returns the written image paths."""
    jobs = mapping_jobs(args) if args.mapping else single_jobs(args)
    out = Path(args.out)
    if args.skip_existing:
        before = len(jobs)
        jobs = [j for j in jobs if not output_paths(out, j)["image"].is_file()]
        if before != len(jobs):
            log.info("skipping %d of %d images already in %s", before - len(jobs), before, out)
    if not jobs:
        return []
    pose_kwargs = dict(resolution=args.resolution, skeleton_width=args.skeleton_width)

    def pose_of(job: Job) -> PoseCondition:
        return load_pose(job.pose, image_size=job.image_size, image_id=job.image_id, **pose_kwargs)

    # A single pose is read (and so checked) once, before the minutes spent loading the model; batch-mode poses
    # are read batch by batch so that thousands of conditions never sit in memory together.
    single_pose = None if args.mapping else pose_of(jobs[0])

    sd15 = None if args.sd15 == "random" else args.sd15
    pipe = GRPosePipeline.from_pretrained(sd15, args.adapter, arch=args.arch, base_unet=args.base_unet,
                                          scheduler=args.scheduler, device=args.device, dtype=args.dtype,
                                          trust_pickle=args.trust_pickle)
    if args.resolution % pipe.size_multiple:
        raise ValueError(f"--resolution must be a multiple of {pipe.size_multiple}, got {args.resolution}")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"steps": args.steps, "guidance": args.guidance, "eta": args.eta, "scheduler": args.scheduler,
                "negative_prompt": args.negative_prompt, "conditioning_scale": args.conditioning_scale,
                "resolution": args.resolution, "sd15": args.sd15, "adapter": args.adapter,
                "base_unet": args.base_unet}
    batches = [jobs[i: i + args.batch_size] for i in range(0, len(jobs), args.batch_size)]
    written = []
    with tqdm(total=len(jobs), desc="pose2img", unit="img") as bar, \
            open(out / "manifest.jsonl", "a", encoding="utf-8") as manifest:
        for batch in batches:
            poses = [single_pose if single_pose is not None else pose_of(job) for job in batch]
            images = pipe([j.prompt for j in batch], torch.stack([p.image for p in poses]), [j.seed for j in batch],
                          negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                          guidance_scale=args.guidance, eta=args.eta, conditioning_scale=args.conditioning_scale,
                          progress=len(batches) == 1)
            for job, pose, image in zip(batch, poses, images_to_uint8(images).numpy()):
                paths = output_paths(out, job)
                pose_uint8 = pose.to_uint8()
                Image.fromarray(image).save(paths["image"])
                Image.fromarray(pose_uint8).save(paths["pose"])
                Image.fromarray(overlay_pose(np.ascontiguousarray(image), pose_uint8)).save(paths["overlay"])
                record = {"image": paths["image"].name, "pose_image": paths["pose"].name,
                          "overlay": paths["overlay"].name, "prompt": job.prompt, "pose": job.pose,
                          "seed": job.seed, **settings}
                manifest.write(json.dumps(record) + "\n")
                written.append(paths["image"])
            bar.update(len(batch))
    return written


def main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        written = run(args)
    except (OSError, ValueError) as err:
        # Missing files and unusable inputs: the message names the file and the fix, a traceback adds nothing.
        sys.exit(f"pose2img: error: {err}")
    print(f"wrote {len(written)} image(s) to {args.out}")


if __name__ == "__main__":
    main()
