"""The project's single door to MMPose 0.x: building/loading pose models, the frozen feature extractor of the
pose perception loss (paper eq. 9), and the bottom-up estimator used for AP / SAP / PCE evaluation.

No other module imports mmpose or mmcv; everything here imports them lazily through `require_mmpose()`.
"""

from __future__ import annotations

import copy
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingExtraError, MissingFileError, WeightsError
from ..files import first_line
from ..safe_pickle import unsafe_globals_in_torch_pickle

INSTALL_HINT = ("MMPose 0.x is not installed (needed for the pose perception loss and pose evaluation). "
                "Install it with `bash scripts/install_mmpose.sh` after `pip install -r requirements.txt`.")

# Configs that ship inside the mmpose 0.x package (mmpose/.mim/configs/...); a short name is resolved there.
_BOTTOM_UP_CONFIG_DIR = Path("body") / "2d_kpt_sview_rgb_img"
MODEL_ZOO_HINTS = {
    "mobilenetv2_coco_512x512.py": (
        "mobilenetv2_coco_512x512-4d96e309_20200816.pth from the MMPose 0.x model zoo: "
        "https://download.openmmlab.com/mmpose/bottom_up/mobilenetv2_coco_512x512-4d96e309_20200816.pth"),
    "higherhrnet_w48_coco_512x512_udp.py": (
        "higherhrnet_w48_humanart_512x512_udp.pth (the paper's evaluator, HigherHRNet-W48 trained on Human-Art) "
        "from the HumanSD release (https://github.com/IDEA-Research/HumanSD, 'Model Weights')"),
    "vitpose_huge.py": (
        "td-hm_ViTPose-huge_8xb64-210e_humanart-256x192-603bb573_20230612.pth (ViTPose-H trained on Human-Art + COCO, "
        "SP-Ctrl's evaluator; mmpose 1.x layout, converted on load): https://download.openmmlab.com/mmpose/v1/"
        "body_2d_keypoint/topdown_heatmap/human_art/"
        "td-hm_ViTPose-huge_8xb64-210e_humanart-256x192-603bb573_20230612.pth "
        "(ViTPose's own mmpose 0.x checkpoints load as they are)"),
}

PathLike = Union[str, os.PathLike]


class PoseCheckpointError(WeightsError, RuntimeError):
    """An MMPose checkpoint that cannot be read safely or does not fit its config (a RuntimeError too, as MMPose's
    own loading errors are)."""


def require_mmpose():
    """Import mmpose 0.x (and mmcv 1.x) or fail with the install command; returns the `mmpose` module."""
    # mmpose 0.29's bottom-up pipeline still uses the alias `np.int` that numpy 2 removed; `int` is exactly
    # what the alias used to mean. Done here, and only here, so the rest of the project never sees it.
    if not hasattr(np, "int"):
        np.int = int  # type: ignore[attr-defined]
    try:
        with warnings.catch_warnings():
            # import-time notices of mmcv 1.x / mmpose 0.x that concern nothing grpose uses
            warnings.filterwarnings("ignore", message=r"On January 1, 2023, MMCV will release v2\.0\.0")
            warnings.filterwarnings("ignore", message=r"Fail to import ``MultiScaleDeformableAttention``")
            warnings.filterwarnings("ignore", message=r"Please import `gaussian_filter1d`",
                                    category=DeprecationWarning)
            import mmcv  # noqa: F401
            import mmpose
            import mmpose.apis  # noqa: F401
            import xtcocotools._mask  # noqa: F401
    except ImportError as err:
        raise MissingExtraError(f"{INSTALL_HINT} (import failed: {err})") from err
    if not mmpose.__version__.startswith("0."):
        raise MissingExtraError(f"mmpose {mmpose.__version__} is installed but grpose needs mmpose 0.x (0.29.0): the "
                          f"HigherHRNet/UDP bottom-up models exist only there. {INSTALL_HINT}")
    return mmpose


def mmpose_config_root() -> Path:
    """The directory of configs shipped inside the installed mmpose package."""
    mmpose = require_mmpose()
    return Path(mmpose.__file__).parent / ".mim" / "configs"


def resolve_mmpose_config(name_or_path: PathLike) -> str:
    """An existing config path, or a path relative to mmpose's shipped configs (`.mim/configs/` or its
    `body/2d_kpt_sview_rgb_img/` subfolder, e.g. `associative_embedding/coco/mobilenetv2_coco_512x512.py`)."""
    direct = Path(name_or_path).expanduser()
    if direct.is_file():
        return str(direct)
    root = mmpose_config_root()
    candidates = [direct, root / _BOTTOM_UP_CONFIG_DIR / name_or_path, root / name_or_path]
    for candidate in candidates[1:]:
        if candidate.is_file():
            return str(candidate)
    looked = "\n  ".join(str(c) for c in candidates)
    raise MissingFileError(f"MMPose config {str(name_or_path)!r} not found. Looked at:\n  {looked}\n"
                            f"Give a path to an mmpose 0.x config file or a path relative to "
                            f"{root / _BOTTOM_UP_CONFIG_DIR}.")


def _load_config(config: Any):
    """An `mmcv.Config` from a config object, a path, or a name relative to the shipped configs (copied, so
    callers may edit the result without touching theirs)."""
    require_mmpose()
    import mmcv

    if isinstance(config, mmcv.Config):
        return copy.deepcopy(config)
    if isinstance(config, str) and config.startswith("vitpose_") and not Path(config).expanduser().is_file():
        from grpose.eval.vitpose import vitpose_config

        return mmcv.Config(vitpose_config(config))
    if isinstance(config, (str, os.PathLike)):
        return mmcv.Config.fromfile(resolve_mmpose_config(config))
    raise TypeError(f"pose model config must be a path, a config name or an mmcv.Config, got {type(config)}")


def checkpoint_hint(config: Any) -> str:
    """Where to get the checkpoint that belongs to a pose config (for error messages)."""
    name = Path(str(getattr(config, "filename", None) or config)).name
    return MODEL_ZOO_HINTS.get(name, "the checkpoint of this config from the MMPose 0.x model zoo")


def build_pose_model(config: Any, checkpoint: Optional[PathLike] = None, device: Union[str, torch.device] = "cpu"
                     ) -> nn.Module:
    """The MMPose model of `config` (random init when `checkpoint` is None), in eval mode, all parameters frozen.

    The model keeps its `mmcv.Config` in `model.cfg`, as `mmpose.apis` expects.
    """
    if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
        raise MissingFileError(f"pose model checkpoint {checkpoint} does not exist. Download "
                                f"{checkpoint_hint(config)} and point the config at it.")
    cfg = _load_config(config)
    from mmpose.models import build_posenet

    # Never fetch the ImageNet initialisation named in the config (`pretrained='mmcls://...'`): either the
    # checkpoint overwrites everything, or a random model is what was asked for.
    cfg.model.pretrained = None
    if cfg.model.get("backbone", {}).get("type") == "ViT":  # ViTPose: mmpose 0.x has no ViT of its own
        from grpose.eval.vitpose import register_vit_backbone

        register_vit_backbone()
    model = build_posenet(cfg.model)
    if checkpoint is not None:
        load_pose_checkpoint(model, checkpoint, strict=True)
    model.cfg = cfg
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def _numpy_safe_globals() -> list:
    """numpy objects that MMPose checkpoints carry in their `meta` (scores, arrays), allowed for
    `torch.load(weights_only=True)`; numpy 1.x pickles name them under `numpy.core`, numpy 2 under `numpy._core`."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list = [np.ndarray, np.dtype]
    for name in ("scalar", "_reconstruct"):
        fn = getattr(multiarray, name)
        allowed += [fn, (fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    # numpy 2 pickles a dtype through its class (numpy.dtypes.Float64DType, ...)
    allowed += sorted({type(np.dtype(code)) for code in "?bhilqBHILQefdgFDGUS"}, key=str)
    return allowed


def read_pose_checkpoint(path: PathLike, trust_pickle: bool = False) -> dict:
    """The state dict of an MMPose 0.x checkpoint (`{"state_dict": ..., "meta": ...}` or a bare state dict).

    Loads with `weights_only=True` plus an allow-list of the numpy types MMPose puts in `meta`. Only a caller
    that trusts the file (the user's own, named explicitly) may pass `trust_pickle=True` to unpickle anything.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"pose model checkpoint {path} does not exist")
    if trust_pickle:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    else:
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            unsafe = unsafe_globals_in_torch_pickle(path, err)
            if not unsafe:
                raise PoseCheckpointError(f"pose model checkpoint {path} is not a readable PyTorch checkpoint: "
                                   f"{str(err).splitlines()[0]}") from None
            raise PoseCheckpointError(
                f"pose model checkpoint {path} could not be loaded safely: it pickles objects outside the "
                f"allowed tensors/numpy types ({_few(unsafe)}). If it is not a PyTorch/MMPose checkpoint, point "
                f"the config at the right file; if you trust it, load it with trust_pickle=True.") from None
        except (RuntimeError, KeyError, EOFError, ValueError) as err:
            # what torch.load raises on files that are not checkpoints at all (text, truncated downloads)
            raise PoseCheckpointError(f"pose model checkpoint {path} is not a readable PyTorch checkpoint "
                               f"({type(err).__name__}: {first_line(err)}); download it again") from None
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PoseCheckpointError(f"pose model checkpoint {path} holds no state dict of tensors (neither under "
                           f"'state_dict' nor at the top level; top-level keys: {_few(raw)})")
    # checkpoints saved from a DataParallel/DDP-wrapped model prefix every key
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _few(keys: Any, n: int = 5) -> str:
    keys = list(keys) if isinstance(keys, (dict, list, tuple, set)) else [type(keys).__name__]
    shown = ", ".join(str(k) for k in keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_pose_checkpoint(model: nn.Module, path: PathLike, strict: bool = True, trust_pickle: bool = False
                         ) -> None:
    """Load an MMPose 0.x checkpoint into `model`; with `strict`, any missing or unexpected key is an error."""
    state = read_pose_checkpoint(path, trust_pickle=trust_pickle)
    own = model.state_dict()
    if "backbone.blocks.0.norm1.weight" in own:  # a ViTPose model: accept mmpose 1.x checkpoints too
        from grpose.eval.vitpose import from_mmpose1_layout, is_mmpose1_vitpose

        if is_mmpose1_vitpose(state):
            state, unmapped = from_mmpose1_layout(state, own["backbone.pos_embed"].shape[1])
            if unmapped and strict:
                raise RuntimeError(f"pose model checkpoint {path} (mmpose 1.x ViTPose layout): {len(unmapped)} keys "
                                   f"with no ViTPose counterpart ({_few(unmapped)})")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        raise PoseCheckpointError(
            f"pose model checkpoint {path} does not match the model built from its config: "
            f"{len(missing)} missing keys ({_few(missing)}), {len(unexpected)} unexpected keys "
            f"({_few(unexpected)}). Check that the checkpoint belongs to the configured pose config.")
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                   for k in own if k in state and state[k].shape != own[k].shape]
    if wrong_shape:
        raise PoseCheckpointError(f"pose model checkpoint {path}: tensor shapes differ from the model "
                           f"(checkpoint vs model): {_few(wrong_shape)}")
    model.load_state_dict(state, strict=strict)


def _find_transform(node: Any, type_name: str) -> Optional[dict]:
    """The first `dict(type=type_name, ...)` in a (nested) mmpose pipeline description."""
    if isinstance(node, dict):
        if node.get("type") == type_name:
            return node
        children: Iterable = node.values()
    elif isinstance(node, (list, tuple)):
        children = node
    else:
        return None
    for child in children:
        found = _find_transform(child, type_name)
        if found is not None:
            return found
    return None


def input_normalisation(cfg: Any) -> tuple[list[float], list[float], str]:
    """(mean, std, channel order) the network was trained with, read from its config's test pipeline.

    mmpose 0.x pipelines load RGB (`LoadImageFromFile(channel_order='rgb')` is the default), turn the image
    into [0, 1] (`ToTensor`) and apply `NormalizeTensor(mean, std)` given on that [0, 1] scale.
    """
    pipeline = cfg.get("test_pipeline") or cfg.get("val_pipeline")
    if pipeline is None:
        raise KeyError(f"pose config {cfg.filename} has no test_pipeline/val_pipeline to read the input "
                       f"normalisation from")
    norm = _find_transform(pipeline, "NormalizeTensor")
    if norm is None:
        raise KeyError(f"pose config {cfg.filename}: no NormalizeTensor step in its test pipeline, so the "
                       f"network's input normalisation is unknown")
    loader = _find_transform(pipeline, "LoadImageFromFile") or {}
    order = str(loader.get("channel_order", "rgb")).lower()
    return [float(m) for m in norm["mean"]], [float(s) for s in norm["std"]], order


class PoseBackbone(nn.Module):
    """The frozen backbone of an MMPose model as a differentiable feature extractor phi (paper eq. 9).

    Input: float B x 3 x H x W RGB in [-1, 1] (what the VAE decodes). Preprocessing mirrors mmpose's test
    pipeline with torch ops so gradients reach the image: [-1, 1] -> [0, 1] (clamped, as an 8-bit image would
    be), bilinear resize to `input_size` (antialias off), the config's mean/std, the config's channel order.

    The network is kept out of `_modules` on purpose: it is never trained, never in `parameters()` (so no
    optimizer or DDP sees it) and never in a parent's `state_dict()` (checkpoints stay adapter-only). Device and
    dtype moves (`.to()`, `.cuda()`, `.half()`) still reach it through `_apply`, and it always stays in eval mode.
    """

    def __init__(self, model_or_config: Any, checkpoint: Optional[PathLike] = None,
                 feature_indices: Sequence[int] = (-1,), input_size: int = 512):
        super().__init__()
        if isinstance(model_or_config, nn.Module):
            model = model_or_config
            if checkpoint is not None:
                load_pose_checkpoint(model, checkpoint, strict=True)
        else:
            model = build_pose_model(model_or_config, checkpoint)
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(model, "backbone"):
            raise TypeError("PoseBackbone needs an MMPose model built by build_pose_model (with `.backbone` and "
                            "`.cfg`), or a config path/name")
        if not feature_indices:
            raise ValueError("PoseBackbone: feature_indices must name at least one backbone output")
        mean, std, order = input_normalisation(cfg)
        net = model.backbone
        net.requires_grad_(False)
        net.eval()
        self.__dict__["_net"] = net  # not a registered submodule: see the class docstring
        self.feature_indices = tuple(int(i) for i in feature_indices)
        self.input_size = int(input_size)
        self.bgr_input = order == "bgr"
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        super().train(False)

    @property
    def net(self) -> nn.Module:
        return self._net

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._net._apply(fn)
        return self

    def train(self, mode: bool = True) -> "PoseBackbone":
        # a frozen estimator: BatchNorm must keep using its running statistics, whatever the parent does
        super().train(False)
        self._net.eval()
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"PoseBackbone expects B x 3 x H x W RGB images in [-1, 1], got {tuple(images.shape)}")
        x = ((images.to(self.mean.dtype) + 1.0) / 2.0).clamp(0.0, 1.0)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=False)
        if self.bgr_input:
            x = x.flip(1)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.preprocess(images)
        # the frozen estimator runs in its own precision, as the release did (autocast disabled)
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = self._net(x)
        outputs = [out] if isinstance(out, torch.Tensor) else list(out)
        try:
            return [outputs[i] for i in self.feature_indices]
        except IndexError:
            raise IndexError(f"PoseBackbone: feature_indices {self.feature_indices} out of range; the backbone "
                             f"returns {len(outputs)} feature map(s) (set more `out_indices` in the pose config "
                             f"to expose other stages)") from None

    def extra_repr(self) -> str:
        return (f"net={type(self._net).__name__}, feature_indices={self.feature_indices}, "
                f"input_size={self.input_size}")


class PoseHeatmaps(nn.Module):
    """The keypoint heatmaps of a frozen MMPose bottom-up (associative embedding) model, as HumanSD's
    heatmap-guided loss reads them: B x 3 x H x W images in [0, 1] go to backbone + keypoint head as they are (no
    mean/std, no resize, no flip test); the first `num_joints` channels of every output stage that carries heatmaps
    (`test_cfg.with_heatmaps`) are bilinearly resized to the last stage's size (align_corners as `test_cfg`) and
    averaged. -> B x K x h x w (h = H / 2 for HigherHRNet).

    Like PoseBackbone, the network is kept out of `_modules`: frozen, eval mode, in no parent's parameters or state
    dict, while device and dtype moves still reach it.
    """

    def __init__(self, model_or_config: Any, checkpoint: Optional[PathLike] = None):
        super().__init__()
        model = model_or_config if isinstance(model_or_config, nn.Module) else build_pose_model(model_or_config,
                                                                                                 checkpoint)
        test_cfg = getattr(model, "test_cfg", None) or {}
        if not hasattr(model, "keypoint_head") or "with_heatmaps" not in test_cfg:
            raise TypeError("PoseHeatmaps needs an MMPose bottom-up model (AssociativeEmbedding: backbone + "
                            "keypoint_head, test_cfg.with_heatmaps), e.g. a HigherHRNet config")
        model.requires_grad_(False)
        model.eval()
        self.__dict__["_net"] = model
        self.num_joints = int(test_cfg["num_joints"])
        self.with_heatmaps = tuple(bool(w) for w in test_cfg["with_heatmaps"])
        self.align_corners = bool(test_cfg.get("align_corners", False))
        super().train(False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._net._apply(fn)
        return self

    def train(self, mode: bool = True) -> "PoseHeatmaps":
        super().train(False)
        self._net.eval()
        return self

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        if images01.ndim != 4 or images01.shape[1] != 3:
            raise ValueError(f"PoseHeatmaps expects B x 3 x H x W images in [0, 1], got {tuple(images01.shape)}")
        param = next(self._net.parameters())
        with torch.autocast(device_type=images01.device.type, enabled=False):
            outputs = self._net.keypoint_head(self._net.backbone(images01.to(param.dtype)))
        outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        maps = [out[:, :self.num_joints] for out, has in zip(outputs, self.with_heatmaps) if has]
        if not maps:
            raise RuntimeError("PoseHeatmaps: no output stage of this model carries heatmaps (test_cfg.with_heatmaps)")
        size = maps[-1].shape[-2:]
        resized = [m if m.shape[-2:] == size else
                   F.interpolate(m, size=size, mode="bilinear", align_corners=self.align_corners) for m in maps]
        return torch.stack(resized).mean(dim=0)


class PooledPoseFeatures(nn.Module):
    """FID/KID features from a pose network's backbone, for a world without Inception weights (the miniature
    synthetic world): uint8 B x 3 x S x S -> B x C, the spatial mean of the backbone's last stage."""

    def __init__(self, config: Any, checkpoint: Optional[PathLike], input_size: int):
        super().__init__()
        self.backbone = PoseBackbone(config, checkpoint, feature_indices=(-1,), input_size=input_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images.float() / 127.5 - 1.0)[0].mean(dim=(2, 3))


class BottomUpPoseEstimator:
    """An MMPose 0.x bottom-up estimator (`inference_bottom_up_pose_model`) for pose metrics.

    `predict` takes RGB images. mmpose 0.x assumes an ndarray is BGR and converts it to RGB
    (`LoadImageFromFile._bgr2rgb`), so RGB is turned into BGR first and the network sees true RGB.
    `swap_rgb_bgr=True` passes the RGB array unchanged, reproducing the release's evaluator, whose
    HigherHRNet saw channel-swapped images; use it only for the `paper` protocol.
    """

    def __init__(self, config: Any, checkpoint: Optional[PathLike], device: Union[str, torch.device] = "cpu",
                 flip_test: bool = True, pose_nms_thr: float = 1.0, swap_rgb_bgr: bool = False):
        self.model = build_pose_model(config, checkpoint, device)
        self.model.test_cfg["flip_test"] = bool(flip_test)
        self.model.cfg.model.test_cfg["flip_test"] = bool(flip_test)
        self.pose_nms_thr = float(pose_nms_thr)
        self.swap_rgb_bgr = bool(swap_rgb_bgr)

    def predict(self, images: Sequence[np.ndarray]) -> list[list[tuple[np.ndarray, float]]]:
        """Per image, a list of (keypoints [K, 3] float32 (x, y, score) in pixels, person score)."""
        from mmpose.apis import inference_bottom_up_pose_model

        results = []
        for index, image in enumerate(images):
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"BottomUpPoseEstimator.predict: image {index} must be uint8 H x W x 3 RGB, got "
                                 f"{image.dtype} {image.shape}")
            fed = image if self.swap_rgb_bgr else image[..., ::-1]
            people, _ = inference_bottom_up_pose_model(self.model, np.ascontiguousarray(fed),
                                                       pose_nms_thr=self.pose_nms_thr)
            results.append([(np.asarray(p["keypoints"], dtype=np.float32), float(p["score"])) for p in people])
        return results


class TopDownPoseEstimator:
    """An MMPose 0.x top-down estimator (`inference_top_down_pose_model`) run on person boxes taken from the
    conditioning poses, as SP-Ctrl evaluates with ViTPose (GT boxes, `use_gt_bbox=True`).

    A box is the extent of a person's present keypoints, each side at least `min_box_fraction` of the image
    (a person with one or two keypoints has a degenerate extent); mmpose pads it by 1.25 and fits the model's
    aspect ratio. Person scores are rescored as mmpose's TopDownCocoDataset.evaluate does: the mean of the keypoint
    scores above `vis_thr` times the box score (1 for a GT box), then OKS-NMS at `oks_thr` per image.
    Images go in as RGB and are handed to mmpose as BGR, which its loader converts back (see BottomUpPoseEstimator).
    """

    needs_person_boxes = True

    def __init__(self, config: Any, checkpoint: Optional[PathLike], device: Union[str, torch.device] = "cpu",
                 flip_test: bool = True, vis_thr: float = 0.2, oks_thr: float = 0.9, min_box_fraction: float = 0.05):
        self.model = build_pose_model(config, checkpoint, device)
        self.model.test_cfg["flip_test"] = bool(flip_test)
        # Every box is a GT box with score 1, so the box score need not travel through the pipeline; mmpose 0.29's
        # heatmap decoding reads it with an array-to-scalar assignment that numpy 2 rejects.
        collect = _find_transform(self.model.cfg.test_pipeline, "Collect")
        if collect is not None and "bbox_score" in collect.get("meta_keys", ()):
            collect["meta_keys"] = [k for k in collect["meta_keys"] if k != "bbox_score"]
        self.vis_thr, self.oks_thr, self.min_box_fraction = float(vis_thr), float(oks_thr), float(min_box_fraction)

    def boxes(self, people: np.ndarray, width: int, height: int) -> list[np.ndarray]:
        """xyxy box (and score 1) per conditioning person with at least one present keypoint."""
        out = []
        min_w, min_h = self.min_box_fraction * width, self.min_box_fraction * height
        for person in np.asarray(people, dtype=np.float64).reshape(-1, 17, 3):
            present = person[:, 2] > 0
            if not present.any():
                continue
            (x0, y0), (x1, y1) = person[present, :2].min(0), person[present, :2].max(0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            w, h = max(x1 - x0, min_w), max(y1 - y0, min_h)
            out.append(np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, 1.0], dtype=np.float32))
        return out

    def predict(self, images: Sequence[np.ndarray], people: Sequence[np.ndarray]
                ) -> list[list[tuple[np.ndarray, float]]]:
        """Per image (uint8 H x W x 3 RGB) and its conditioning persons [P, 17, 3], a list of
        (keypoints [17, 3] (x, y, score) in pixels, person score)."""
        from mmpose.apis import inference_top_down_pose_model
        from mmpose.core.post_processing import oks_nms

        if len(images) != len(people):
            raise ValueError(f"TopDownPoseEstimator.predict: {len(images)} images but {len(people)} pose arrays")
        results = []
        for index, (image, persons) in enumerate(zip(images, people)):
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"TopDownPoseEstimator.predict: image {index} must be uint8 H x W x 3 RGB, got "
                                 f"{image.dtype} {image.shape}")
            boxes = self.boxes(persons, image.shape[1], image.shape[0])
            if not boxes:
                results.append([])
                continue
            with warnings.catch_warnings():
                # mmpose 0.x's notice that `dataset=` is deprecated in favour of dataset_info; COCO flip pairs
                warnings.filterwarnings("ignore", message=r"dataset is deprecated", category=DeprecationWarning)
                found, _ = inference_top_down_pose_model(
                    self.model, np.ascontiguousarray(image[..., ::-1]), [{"bbox": b} for b in boxes],
                    format="xyxy", dataset="TopDownCocoDataset")
            people_out = []
            for person in found:
                kpts = np.asarray(person["keypoints"], dtype=np.float32)
                visible = kpts[:, 2] > self.vis_thr
                kpt_score = float(kpts[visible, 2].mean()) if visible.any() else 0.0
                box = np.asarray(person["bbox"], dtype=np.float64)
                # mmpose's dataset takes the area of the padded box (scale x 200 includes the 1.25 padding)
                area = float((box[2] - box[0]) * (box[3] - box[1])) * 1.25**2
                people_out.append({"keypoints": kpts, "score": kpt_score * float(box[4]), "area": area})
            keep = oks_nms(people_out, self.oks_thr, sigmas=None) if len(people_out) > 1 else range(len(people_out))
            results.append([(people_out[k]["keypoints"], people_out[k]["score"]) for k in keep])
        return results
