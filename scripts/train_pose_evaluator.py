"""Train the miniature world's MMPose 0.x bottom-up pose networks on real renders of the synthetic dataset.

    python scripts/train_pose_evaluator.py --network evaluator    # -> assets/mini/evaluator/  (stands in for HigherHRNet-W48)
    python scripts/train_pose_evaluator.py --network pose_loss    # -> assets/mini/pose_loss/  (the pose perception loss net)

Steps: render `--num-train` images of `SyntheticPoseDataset(seed=0)` and `--num-val` held-out images (seed=1) at
`--resolution` px into COCO keypoint format (`<work-dir>/data`), write an mmpose config from the network's template,
train it with MMPose's own training API (`mmpose.apis.train_model`, the mmcv runner, on the CPU), export a
tensors-only checkpoint plus the self-contained config, and score the held-out split the way `eval_pose.py` does
(`BottomUpPoseEstimator` + `pose_metrics`, protocol `standard`). `--evaluate-only` re-scores a shipped network.
Training never sees seed 1.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Optional
from pathlib import Path

import numpy as np
import torch

from grpose.data.skeleton import tensor_to_uint8
from grpose.data.synthetic import SyntheticPoseDataset
from grpose.eval.pose_metrics import build_coco_gt, pose_metrics

TRAIN_SEED, HELD_OUT_SEED, VALIDATION_SEED = 0, 1, 2
# Associative-embedding grouping: a joint joins a person when their tags differ by less than this. mmpose's COCO
# value is 1; a small network's tags are less spread, so the value is chosen on the validation split (seed 2).
TAG_THRESHOLDS = (1.0, 1.5, 2.0, 3.0)

# mmpose config templates ({...} fields are filled in by `write_config`). The dataset description (keypoint
# names, flip pairs, sigmas) is mmpose's own COCO one, merged in so the written config is self-contained.
_COMMON = """
_base_ = [{coco_dataset_info!r}]
channel_cfg = dict(dataset_joints=17, dataset_channel=[list(range(17))], inference_channel=list(range(17)))
data_cfg = dict(image_size={input_size}, base_size={base_size}, base_sigma=2, heatmap_size={heatmap_sizes},
                num_joints=17, dataset_channel=channel_cfg['dataset_channel'],
                inference_channel=channel_cfg['inference_channel'], num_scales={num_scales},
                scale_aware_sigma=False)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='BottomUpRandomAffine', rot_factor={rot_factor}, scale_factor=[{scale_min}, {scale_max}],
         scale_type='short', trans_factor={trans_factor}, use_udp={use_udp}),
    dict(type='BottomUpRandomFlip', flip_prob=0.5),
{degradation}    dict(type='ToTensor'),
    dict(type='NormalizeTensor', mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    dict(type='BottomUpGenerateTarget', sigma={sigma}, max_num_people=30, use_udp={use_udp}),
    dict(type='Collect', keys=['img', 'joints', 'targets', 'masks'], meta_keys=[]),
]
val_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='BottomUpGetImgSize', test_scale_factor=[1], use_udp={use_udp}),
    dict(type='BottomUpResizeAlign', use_udp={use_udp}, transforms=[
        dict(type='ToTensor'),
        dict(type='NormalizeTensor', mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])]),
    dict(type='Collect', keys=['img'],
         meta_keys=['image_file', 'aug_data', 'test_scale_factor', 'base_size', 'center', 'scale', 'flip_index']),
]
test_pipeline = val_pipeline
data_root = {data_root!r}
data = dict(
    samples_per_gpu={batch_size}, workers_per_gpu=0, shuffle=True,
    train=dict(type='BottomUpCocoDataset', ann_file=data_root + '/annotations/train.json',
               img_prefix=data_root + '/images/train/', data_cfg=data_cfg, pipeline=train_pipeline),
    val=dict(type='BottomUpCocoDataset', ann_file=data_root + '/annotations/held_out.json',
             img_prefix=data_root + '/images/held_out/', data_cfg=data_cfg, pipeline=val_pipeline),
    test=dict(type='BottomUpCocoDataset', ann_file=data_root + '/annotations/held_out.json',
              img_prefix=data_root + '/images/held_out/', data_cfg=data_cfg, pipeline=test_pipeline),
)
optimizer = dict(type='Adam', lr={lr})
optimizer_config = dict(grad_clip=None)
lr_config = dict(policy='CosineAnnealing', min_lr_ratio=0.01, warmup='linear', warmup_iters={warmup_iters},
                 warmup_ratio=0.01, by_epoch=False)
total_epochs = {epochs}
checkpoint_config = dict(interval=1, max_keep_ckpts=2)
log_config = dict(interval={log_interval}, hooks=[dict(type='TextLoggerHook')])
log_level = 'INFO'
load_from = None
resume_from = None
workflow = [('train', 1)]
"""

# Associative-embedding decoding, shared by both networks (mmpose's COCO values but the tag threshold).
AE_TEST_CFG = ("num_joints=17, max_num_people=30, scale_factor=[1], nms_kernel=5, nms_padding=2, tag_per_joint=True, "
               "detection_threshold=0.1, tag_threshold={tag_threshold}, use_detection_val=True, "
               "ignore_too_much=False, adjust=True, refine=True, flip_test=True")

# The evaluator: a miniature HigherHRNet (the paper's evaluator family): an HRNet backbone with 4 stages at 1/4 ..
# 1/32, the higher-resolution head (1/4 heatmaps + tags, a deconvolution to 1/2 heatmaps), UDP, flip test.
EVALUATOR_MODEL = """
model = dict(
    type='AssociativeEmbedding', pretrained=None,
    backbone=dict(type='HRNet', in_channels=3, extra=dict(
        stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1,), num_channels=(16,)),
        stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=({blocks}, {blocks}),
                    num_channels=({width}, {width2})),
        stage3=dict(num_modules=1, num_branches=3, block='BASIC', num_blocks=({blocks}, {blocks}, {blocks}),
                    num_channels=({width}, {width2}, {width4})),
        stage4=dict(num_modules=1, num_branches=4, block='BASIC', num_blocks=({blocks}, {blocks}, {blocks}, {blocks}),
                    num_channels=({width}, {width2}, {width4}, {width8})))),
    keypoint_head=dict(
        type='AEHigherResolutionHead', in_channels={width}, num_joints=17, tag_per_joint=True,
        extra=dict(final_conv_kernel=1), num_deconv_layers=1, num_deconv_filters=[{width}],
        num_deconv_kernels=[4], num_basic_blocks=1, cat_output=[True], with_ae_loss=[True, False],
        loss_keypoint=dict(type='MultiLossFactory', num_joints=17, num_stages=2, ae_loss_type='exp',
                           with_ae_loss=[True, False], push_loss_factor=[0.001, 0.001],
                           pull_loss_factor=[0.001, 0.001], with_heatmaps_loss=[True, True],
                           heatmaps_loss_factor=[1.0, 1.0])),
    train_cfg=dict(),
    test_cfg=dict({ae_test_cfg}, with_heatmaps=[True, True], with_ae=[True, False], project2image=False,
                  align_corners=True, use_udp=True))
"""

# The pose-loss network: a slim MobileNetV2 with the simple associative-embedding head, like the paper's loss
# network (MobileNetV2 bottom-up, features = the backbone's last stage, 1/32 of the input).
POSE_LOSS_MODEL = """
model = dict(
    type='AssociativeEmbedding', pretrained=None,
    backbone=dict(type='MobileNetV2', widen_factor={widen_factor}, out_indices=(7,)),
    keypoint_head=dict(
        type='AESimpleHead', in_channels=1280, num_joints=17, tag_per_joint=True, with_ae_loss=[True],
        num_deconv_layers=3, num_deconv_filters=({deconv}, {deconv}, {deconv}), num_deconv_kernels=(4, 4, 4),
        loss_keypoint=dict(type='MultiLossFactory', num_joints=17, num_stages=1, ae_loss_type='exp',
                           with_ae_loss=[True], push_loss_factor=[0.001], pull_loss_factor=[0.001],
                           with_heatmaps_loss=[True], heatmaps_loss_factor=[1.0])),
    train_cfg=dict(),
    test_cfg=dict({ae_test_cfg}, with_heatmaps=[True], with_ae=[True], project2image=True, align_corners=False))
"""

NETWORKS = {
    "evaluator": dict(model=EVALUATOR_MODEL, use_udp=True, higher_resolution=True, width=16, blocks=2,
                      input_size=128, sigma=2, epochs=5, lr=2e-3, config_name="higherhrnet_mini_synthetic.py",
                      checkpoint_name="higherhrnet_mini_synthetic.pth"),
    "pose_loss": dict(model=POSE_LOSS_MODEL, use_udp=False, higher_resolution=False, widen_factor=0.5, deconv=64,
                      input_size=128, sigma=2, epochs=2, lr=2e-3, config_name="mobilenetv2_mini_synthetic.py",
                      checkpoint_name="mobilenetv2_mini_synthetic.pth"),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", choices=sorted(NETWORKS), default="evaluator")
    p.add_argument("--work-dir", default=None, help="renders, config, logs, checkpoints "
                   "(default: experiments/pose_<network>)")
    p.add_argument("--ship-dir", default=None, help="where the config + checkpoint go (default: assets/mini/<network>)")
    p.add_argument("--data-dir", default="experiments/pose_synthetic_data",
                   help="rendered images + COCO annotations, shared by both networks")
    p.add_argument("--num-train", type=int, default=12000, help="training renders (seed 0)")
    p.add_argument("--num-val", type=int, default=200, help="held-out renders (seed 1)")
    p.add_argument("--resolution", type=int, default=128, help="render size (the generated images' size)")
    p.add_argument("--input-size", type=int, default=None, help="network input size (default: the network's)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--sigma", type=float, default=None, help="heatmap Gaussian sigma in heatmap cells")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="training seed (augmentation, init)")
    p.add_argument("--evaluate-only", action="store_true", help="only score the shipped network on the held-out set")
    p.add_argument("--from-checkpoint", default=None, help="skip training: ship this runner checkpoint of the "
                   "network (e.g. <work-dir>/latest.pth), then tune and score it")
    p.add_argument("--degrade", action="store_true",
                   help="augment the real renders with blur, noise and contrast jitter (RenderDegradation), so the "
                        "network also finds people in the blurrier images a tiny generator draws")
    p.add_argument("--init-from", default=None, help="start training from this checkpoint (fine-tuning)")
    p.add_argument("--num-tune", type=int, default=100, help="validation renders (seed 2) for the tag threshold")
    p.add_argument("--no-flip-test", action="store_true", help="score without flip test")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------------- data
def render_split(data_dir: Path, split: str, seed: int, num: int, resolution: int) -> Path:
    """Render `num` synthetic samples as PNGs plus a COCO keypoint json; reused when already there."""
    ann_path = data_dir / "annotations" / f"{split}.json"
    if ann_path.is_file():
        info = json.loads(ann_path.read_text()).get("info", {})
        if info == {"seed": seed, "num_samples": num, "resolution": resolution}:
            return ann_path
    image_dir = data_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    ds = SyntheticPoseDataset(num, resolution=resolution, seed=seed)
    poses, names = [], []
    from PIL import Image

    for index in range(num):
        sample = ds[index]
        name = f"{index:06d}.png"
        Image.fromarray(tensor_to_uint8(sample["image"])).save(image_dir / name)
        poses.append(sample["keypoints"][: sample["num_persons"]].numpy())
        names.append(name)
    # The metric's own GT builder: visibility, bbox and area exactly as `pose_metrics` scores them.
    coco = build_coco_gt(poses, list(range(1, num + 1)), resolution, protocol="standard")
    for image, name in zip(coco["images"], names):
        image["file_name"] = name
    coco["info"] = {"seed": seed, "num_samples": num, "resolution": resolution}
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    ann_path.write_text(json.dumps(coco))
    return ann_path


def _poses(num: int, resolution: int, seed: int) -> list[torch.Tensor]:
    ds = SyntheticPoseDataset(num, resolution=resolution, seed=seed)
    return [ds[i]["keypoints"] for i in range(num)]


def held_out_poses(num: int, resolution: int) -> list[np.ndarray]:
    return [p.numpy() for p in _poses(num, resolution, HELD_OUT_SEED)]


# ------------------------------------------------------------------------------------------------- config
def write_config(args: argparse.Namespace, spec: dict, data_dir: Path, path: Path, tag_threshold: float = 1.0):
    """Fill the network's template, merge mmpose's COCO dataset description and write a self-contained config."""
    from grpose.eval.pose_estimator import mmpose_config_root, require_mmpose

    require_mmpose()
    import mmcv

    input_size = args.input_size or spec["input_size"]
    heatmaps = [input_size // 4, input_size // 2] if spec["higher_resolution"] else [input_size // 4]
    iters_per_epoch = -(-args.num_train // args.batch_size)
    fields = dict(spec, input_size=input_size, base_size=input_size // 2, heatmap_sizes=heatmaps,
                  num_scales=len(heatmaps), sigma=args.sigma or spec["sigma"], lr=args.lr or spec["lr"],
                  epochs=args.epochs or spec["epochs"], batch_size=args.batch_size,
                  warmup_iters=min(50 if args.init_from else 300, iters_per_epoch),
                  log_interval=min(50, iters_per_epoch),
                  rot_factor=15, scale_min=0.8, scale_max=1.25, trans_factor=20,
                  data_root=data_dir.as_posix(),
                  ae_test_cfg=AE_TEST_CFG.format(tag_threshold=tag_threshold),
                  coco_dataset_info=str(mmpose_config_root() / "_base_" / "datasets" / "coco.py"),
                  degradation="    dict(type='RenderDegradation', prob=0.8),\n" if args.degrade else "")
    if "width" in spec:
        fields.update(width2=2 * spec["width"], width4=4 * spec["width"], width8=8 * spec["width"])
    text = (_COMMON + spec["model"]).format(**fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_suffix(".template.py")
    draft.write_text(text)
    cfg = mmcv.Config.fromfile(str(draft))
    draft.unlink()
    cfg.dump(str(path))  # flattened: no `_base_` left, loads from anywhere
    return mmcv.Config.fromfile(str(path))


# ------------------------------------------------------------------------------------------------ training
class RenderDegradation:
    """Training augmentation of a real render (never a generated image): with probability `prob` each, a Gaussian
    blur (sigma 0.5-2.5 px), Gaussian noise (sigma 2-15 grey levels) and a contrast / brightness jitter, so that
    the evaluator still finds the people a tiny, blurry generator draws."""

    def __init__(self, prob: float = 0.8):
        self.prob = prob

    def __call__(self, results: dict) -> dict:
        import cv2

        img = results["img"].astype(np.float32)
        if np.random.rand() < self.prob:
            img = cv2.GaussianBlur(img, (0, 0), np.random.uniform(0.5, 2.5))
        if np.random.rand() < self.prob:
            img = img + np.random.normal(0.0, np.random.uniform(2.0, 15.0), img.shape)
        if np.random.rand() < self.prob:
            img = (img - 128.0) * np.random.uniform(0.6, 1.1) + 128.0 + np.random.uniform(-20.0, 20.0)
        results["img"] = np.clip(img, 0, 255).astype(np.uint8)
        return results


def train(cfg, work_dir: Path, seed: int, init_from: Optional[str] = None) -> tuple[Path, int]:
    """MMPose's own training loop (`train_model`: EpochBasedRunner, MMDataParallel, which runs on the CPU)."""
    from mmpose.apis import train_model
    from mmpose.datasets import build_dataset
    from mmpose.datasets.builder import PIPELINES

    if "RenderDegradation" not in PIPELINES.module_dict:
        PIPELINES.register_module(module=RenderDegradation)
    from mmpose.models import build_posenet
    from mmpose.utils import get_root_logger

    # train_model calls get_root_logger(cfg.log_level), i.e. with 'INFO' as the log *file*; setting the logger up
    # first keeps that stray file out of the working directory (the logger is initialised only once).
    work_dir.mkdir(parents=True, exist_ok=True)
    get_root_logger(log_file=str(work_dir / "train.log"), log_level=cfg.log_level)

    cfg.work_dir = str(work_dir)
    cfg.gpu_ids = [0]  # only sizes the loader; without CUDA, MMDataParallel keeps the model on the CPU
    cfg.seed = seed
    cfg.load_from = init_from
    for split in ("train", "val", "test"):  # kept out of the written file, which holds it once at the top
        cfg.data[split].dataset_info = cfg.dataset_info
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = build_posenet(cfg.model)
    dataset = build_dataset(cfg.data.train)
    train_model(model, dataset, cfg, distributed=False, validate=False,
                timestamp=time.strftime("%Y%m%d_%H%M%S"), meta=dict(seed=seed))
    return work_dir / "latest.pth", sum(p.numel() for p in model.parameters())


def export_checkpoint(trained: Path, out: Path, half: bool = True) -> dict:
    """Tensors and plain types only, so `read_pose_checkpoint` loads it without trusting pickles; floating tensors
    in fp16 with `half` (half the file; `load_state_dict` casts them back into the float32 model)."""
    raw = torch.load(trained, map_location="cpu", weights_only=False)  # our own runner's file
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().clone()
             for k, v in raw["state_dict"].items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    meta = {"epoch": int(raw["meta"].get("epoch", -1)), "iter": int(raw["meta"].get("iter", -1)),
            "trained_on": f"SyntheticPoseDataset(seed={TRAIN_SEED}) renders", "stored_dtype": "float16" if half else
            "float32"}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "meta": meta}, out)
    return meta


def loss_curve(work_dir: Path) -> list[dict]:
    """(epoch, iter, loss terms) rows from the runner's json log, for the docs."""
    logs = sorted(work_dir.glob("*.log.json"), key=os.path.getmtime)
    rows = []
    if logs:
        for line in logs[-1].read_text().splitlines():
            entry = json.loads(line)
            if entry.get("mode") == "train":
                rows.append({k: v for k, v in entry.items() if k in ("epoch", "iter", "lr", "loss", "time")
                             or k.endswith("loss")})
    return rows


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate(config: Path, checkpoint: Path, data_dir: Path, num: int, resolution: int, flip_test: bool) -> dict:
    """What `eval_pose.py` does for generated images, on the held-out real renders: the configured estimator
    on each PNG, then `pose_metrics(protocol='standard')` against the dataset's keypoints."""
    from grpose.eval.pose_estimator import BottomUpPoseEstimator
    from grpose.eval.quality import load_image

    estimator = BottomUpPoseEstimator(str(config), str(checkpoint), flip_test=flip_test, pose_nms_thr=1.0)
    image_dir = data_dir / "images" / "held_out"
    start = time.time()
    detections = []
    for index in range(num):
        detections.extend(estimator.predict([load_image(image_dir / f"{index:06d}.png")]))
    seconds = time.time() - start
    metrics = pose_metrics(held_out_poses(num, resolution), detections, protocol="standard", image_size=resolution)
    metrics["seconds_per_image"] = seconds / num
    metrics["flip_test"] = flip_test
    return metrics


def choose_tag_threshold(args, spec: dict, data_dir: Path, checkpoint: Path, work_dir: Path) -> tuple[float, list]:
    """The grouping tag threshold with the best AP - PCE on the validation split (seed 2: neither trained on nor
    the held-out split that is reported)."""
    from grpose.eval.pose_estimator import BottomUpPoseEstimator
    from grpose.eval.quality import load_image

    render_split(data_dir, "validation", VALIDATION_SEED, args.num_tune, args.resolution)
    images = [load_image(data_dir / "images" / "validation" / f"{i:06d}.png") for i in range(args.num_tune)]
    poses = [p.numpy() for p in _poses(args.num_tune, args.resolution, VALIDATION_SEED)]
    rows = []
    for tag in TAG_THRESHOLDS:
        config = write_config(args, spec, data_dir, work_dir / f"tune_tag{tag:g}.py", tag_threshold=tag)
        estimator = BottomUpPoseEstimator(config, str(checkpoint), flip_test=not args.no_flip_test, pose_nms_thr=1.0)
        m = pose_metrics(poses, estimator.predict(images), protocol="standard", image_size=args.resolution)
        rows.append({"tag_threshold": tag, "AP": m["AP"], "SAP": m["SAP"], "PCE": m["PCE"]})
        print(f"validation (seed {VALIDATION_SEED}) tag_threshold={tag:g}: AP {m['AP']:.4f} PCE {m['PCE']:.3f}")
    best = max(rows, key=lambda r: r["AP"] - r["PCE"])
    return best["tag_threshold"], rows


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(0)
    spec = NETWORKS[args.network]
    work_dir = Path(args.work_dir or f"experiments/pose_{args.network}")
    ship_dir = Path(args.ship_dir or f"assets/mini/{args.network}")
    data_dir = Path(args.data_dir)
    config_path, checkpoint_path = ship_dir / spec["config_name"], ship_dir / spec["checkpoint_name"]

    render_split(data_dir, "held_out", HELD_OUT_SEED, args.num_val, args.resolution)
    if not args.evaluate_only:
        summary_path = work_dir / "train_summary.json"
        if args.from_checkpoint is None:
            render_split(data_dir, "train", TRAIN_SEED, args.num_train, args.resolution)
            cfg = write_config(args, spec, data_dir, work_dir / spec["config_name"])
            start = time.time()
            trained, num_params = train(cfg, work_dir, args.seed, args.init_from)
            summary = {"network": args.network, "train_wall_s": time.time() - start, "threads": args.threads,
                       "num_train": args.num_train, "num_params": num_params, "degrade": args.degrade,
                       "init_from": args.init_from}
        else:
            trained = Path(args.from_checkpoint)
            summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"network": args.network}
        meta = export_checkpoint(trained, checkpoint_path)
        tag, tuning = choose_tag_threshold(args, spec, data_dir, checkpoint_path, work_dir)
        write_config(args, spec, data_dir, config_path, tag_threshold=tag)
        summary.update(meta, tag_threshold=tag, tag_tuning=tuning, loss_curve=loss_curve(work_dir))
        summary_path.write_text(json.dumps(summary, indent=1))
        print(f"shipped {config_path} (tag_threshold {tag:g}) and {checkpoint_path}")
    metrics = evaluate(config_path, checkpoint_path, data_dir, args.num_val, args.resolution,
                       flip_test=not args.no_flip_test)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "held_out_metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}))


if __name__ == "__main__":
    main()
