"""Image-quality metrics: FID and KID (torchmetrics) per scenario against that scenario's real images, then the
unweighted mean over scenarios (HumanSD paper section 5.1), with the ``paper`` and ``standard`` protocols.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm
from ..errors import MissingExtraError, MissingFileError

from grpose.safe_pickle import require_weights_only

# torchmetrics/torch-fidelity download this file into $TORCH_HOME/hub/checkpoints; pytorch-fid distributes the
# same 2015-12-05 TF Inception weights (same hash suffix) as PYTORCH_FID_WEIGHTS_FILENAME.
INCEPTION_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
PYTORCH_FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageItem = Union[str, os.PathLike, np.ndarray, Image.Image]


@dataclass(frozen=True)
class QualityProtocol:
    """Every choice that changes FID/KID numbers, as named switches.

    fid_feature / kid_feature: Inception pool width used for FID / KID (64, 192, 768 or 2048).
    kid_subset_size: KID subset size; None means min(1000, n_real, n_fake). KID is None when a set is smaller than
        a fixed subset size (torchmetrics would raise).
    kid_subsets: number of random KID subsets (their mean is reported).
    image_size: short side resize then center crop to this square (torchvision ``Resize`` + ``CenterCrop`` on PIL,
        bilinear), which is what the release does to real images and what makes a batch stackable.
    imagenet_normalize_byte_cast: release quirk: ImageNet-normalise the [0, 1] image, then ``(x * 255).byte()``
        as torchmetrics' ``normalize=True`` does; out-of-range values wrap modulo 256 (CPU semantics, made explicit
        here), so Inception sees garbled images of both sets.
    swap_fake_channels: release quirk: generated images get an extra RGB<->BGR swap before preprocessing.
    """

    name: str
    fid_feature: int
    kid_feature: int
    kid_subset_size: int | None
    kid_subsets: int = 100
    image_size: int = 299
    imagenet_normalize_byte_cast: bool = False
    swap_fake_channels: bool = False


PAPER = QualityProtocol(
    name="paper",
    fid_feature=64,
    kid_feature=2048,
    kid_subset_size=200,
    imagenet_normalize_byte_cast=True,
    swap_fake_channels=True,
)
STANDARD = QualityProtocol(name="standard", fid_feature=2048, kid_feature=2048, kid_subset_size=None)
_PROTOCOLS = {"paper": PAPER, "standard": STANDARD}
_INCEPTION_WIDTHS = (64, 192, 768, 2048)


def get_quality_protocol(protocol: str | QualityProtocol = "standard", **overrides: Any) -> QualityProtocol:
    """The named protocol (``paper`` / ``standard``) or a given one, with field overrides applied."""
    if isinstance(protocol, str):
        if protocol not in _PROTOCOLS:
            raise ValueError(f"quality: protocol must be one of {sorted(_PROTOCOLS)}, got {protocol!r}.")
        protocol = _PROTOCOLS[protocol]
    return replace(protocol, **overrides) if overrides else protocol


# --------------------------------------------------------------------------------------------------------------
# Inception weights (offline)
# --------------------------------------------------------------------------------------------------------------


def _weights_help() -> str:
    return (
        f"FID/KID use the TF-ported InceptionV3 weights `{INCEPTION_WEIGHTS_FILENAME}` (torchmetrics/torch-fidelity; "
        f"pytorch-fid ships the same weights as `{PYTORCH_FID_WEIGHTS_FILENAME}`). Download {INCEPTION_WEIGHTS_URL} "
        "on a machine with internet and pass its path, or place it in $TORCH_HOME/hub/checkpoints/."
    )


def resolve_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The local Inception weights file: ``path`` if given, else the torch hub cache. Never downloads."""
    if path is not None:
        candidate = Path(path).expanduser()
        if not candidate.is_file():
            raise MissingFileError(f"Inception weights file {candidate} does not exist. {_weights_help()}")
        return candidate
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name in (INCEPTION_WEIGHTS_FILENAME, PYTORCH_FID_WEIGHTS_FILENAME):
        if (hub / name).is_file():
            return hub / name
    raise MissingFileError(
        f"No Inception weights in {hub} (looked for {INCEPTION_WEIGHTS_FILENAME}). {_weights_help()}"
    )


def inception_feature_extractor(width: int, weights_path: str | os.PathLike) -> nn.Module:
    """torchmetrics' InceptionV3 (``NoTrainInceptionV3``) returning the ``width``-d pool features of uint8 images."""
    if width not in _INCEPTION_WIDTHS:
        raise ValueError(f"quality: Inception feature width must be one of {_INCEPTION_WIDTHS}, got {width}.")
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        raise MissingExtraError(
            "quality: the Inception feature extractor of torchmetrics needs torch-fidelity; "
            "`pip install torch-fidelity` (or `torchmetrics[image]`), or pass an nn.Module as `feature`."
        )
    from torchmetrics.image.fid import NoTrainInceptionV3

    # torch-fidelity reads the file with torch.load(weights_only=False): check it holds only tensors first.
    require_weights_only(weights_path, "Inception weights file")
    return NoTrainInceptionV3(
        name="inception-v3-compat", features_list=[str(width)], feature_extractor_weights_path=str(weights_path)
    )


# --------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------


def load_image(item: ImageItem) -> np.ndarray:
    """uint8 HxWx3 RGB array from a file path, a PIL image or an array (uint8 HxWx3)."""
    if isinstance(item, (str, os.PathLike)):
        try:
            with Image.open(item) as img:
                return np.array(img.convert("RGB"))
        except (OSError, ValueError) as err:
            raise OSError(f"quality: cannot read image file {os.fspath(item)}: {err}") from err
    if isinstance(item, Image.Image):
        return np.array(item.convert("RGB"))
    arr = np.asarray(item)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"quality: images must be uint8 HxWx3 arrays or file paths, got {arr.dtype} {arr.shape}.")
    return arr


def imagenet_normalize_byte_cast(images: torch.Tensor) -> torch.Tensor:
    """The release's garbling: uint8 [..., 3, H, W] -> ToTensor -> ImageNet Normalize ->
    ``(x * 255).byte()``. Float -> uint8 truncates toward zero and wraps modulo 256 (what CPU torch does; written
    out so the result does not depend on the device)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    x = (images.to(torch.float32).div(255) - mean) / std
    return torch.remainder(torch.trunc(x * 255).to(torch.int64), 256).to(torch.uint8)


def preprocess(image: np.ndarray, protocol: QualityProtocol, fake: bool) -> torch.Tensor:
    """uint8 HxWx3 -> uint8 [3, S, S] as the feature extractor sees it under ``protocol``."""
    import torchvision.transforms.functional as tvf

    if fake and protocol.swap_fake_channels:
        image = np.ascontiguousarray(image[..., ::-1])
    pil = Image.fromarray(image)
    pil = tvf.center_crop(tvf.resize(pil, protocol.image_size), protocol.image_size)
    tensor = tvf.pil_to_tensor(pil)
    if protocol.imagenet_normalize_byte_cast:
        tensor = imagenet_normalize_byte_cast(tensor)
    return tensor


def _batches(images: Iterable[ImageItem], batch_size: int) -> Iterator[list[ImageItem]]:
    batch: list[ImageItem] = []
    for item in images:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# --------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------


class _PrecomputedFeatures(nn.Module):
    """Identity "feature extractor" handed to torchmetrics.

    torchmetrics 1.x runs a custom ``feature`` module on whatever ``update`` receives and reads its width from
    ``num_features`` (else probes it with a random image). We extract features once ourselves (one pass shared by
    FID and KID when they use the same network) and let torchmetrics do the statistics.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class QualityMetrics:
    """FID and KID per scenario and their unweighted mean over scenarios.

    ``feature``: an ``nn.Module`` mapping uint8 [B, 3, S, S] to [B, D] features (used for both FID and KID; the
    tests inject a tiny one), or a path to the local Inception weights file, or None to use the torch hub cache
    ($TORCH_HOME/hub/checkpoints). Nothing is downloaded. ``kid_scale``: KID is multiplied by it (GRPose paper
    section 4.2: 100 for Human-Art, 1000 for LAION-Human). ``seed`` fixes KID's random subsets.
    """

    def __init__(
        self,
        protocol: str | QualityProtocol = "standard",
        feature: nn.Module | str | os.PathLike | None = None,
        kid_scale: float = 100.0,
        batch_size: int = 50,
        device: str | torch.device = "cpu",
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.protocol = get_quality_protocol(protocol)
        self.kid_scale = float(kid_scale)
        if batch_size < 1:
            raise ValueError(f"QualityMetrics: batch_size must be >= 1, got {batch_size}.")
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.seed = seed
        self.progress = progress
        # scenario -> (real FID, generated FID, real KID, generated KID) features, kept for the bootstrap intervals
        self.features: dict[str, tuple[torch.Tensor, ...]] = {}
        if isinstance(feature, nn.Module):
            self.fid_extractor = self.kid_extractor = feature
        else:
            weights = resolve_inception_weights(feature)
            self.fid_extractor = inception_feature_extractor(self.protocol.fid_feature, weights)
            self.kid_extractor = (
                self.fid_extractor
                if self.protocol.kid_feature == self.protocol.fid_feature
                else inception_feature_extractor(self.protocol.kid_feature, weights)
            )
        for extractor in {id(m): m for m in (self.fid_extractor, self.kid_extractor)}.values():
            extractor.eval().requires_grad_(False).to(self.device)

    @torch.no_grad()
    def _extract(self, extractor: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        features = extractor(batch.to(self.device))
        if features.ndim != 2 or features.shape[0] != batch.shape[0]:
            raise ValueError(
                f"QualityMetrics: the feature extractor must return [B, D] features, got {tuple(features.shape)} "
                f"for a batch of {batch.shape[0]} images."
            )
        return features.cpu()

    def _features(self, images: Iterable[ImageItem], fake: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(FID features, KID features) of a set of images, streamed in batches."""
        fid_parts, kid_parts = [], []
        total = len(images) if hasattr(images, "__len__") else None
        with tqdm(total=total, desc=desc, unit="img", disable=not self.progress) as bar:
            for items in _batches(images, self.batch_size):
                batch = torch.stack([preprocess(load_image(item), self.protocol, fake) for item in items])
                fid_feats = self._extract(self.fid_extractor, batch)
                kid_feats = (
                    fid_feats if self.kid_extractor is self.fid_extractor else self._extract(self.kid_extractor, batch)
                )
                fid_parts.append(fid_feats)
                kid_parts.append(kid_feats)
                bar.update(len(items))
        if not fid_parts:
            raise ValueError(f"QualityMetrics: no images given for {desc}.")
        return torch.cat(fid_parts), torch.cat(kid_parts)

    def _kid_subset_size(self, n_real: int, n_fake: int) -> int | None:
        size = self.protocol.kid_subset_size
        if size is None:
            return min(1000, n_real, n_fake)
        return size if min(n_real, n_fake) >= size else None

    def scenario(
        self, real_images: Iterable[ImageItem], fake_images: Iterable[ImageItem], name: str = "images"
    ) -> dict[str, Any]:
        """FID, KID (x kid_scale, None when too few images for the subset size), KID_std and set sizes."""
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        real_fid, real_kid = self._features(real_images, fake=False, desc=f"{name} (real)")
        fake_fid, fake_kid = self._features(fake_images, fake=True, desc=f"{name} (generated)")
        n_real, n_fake = real_fid.shape[0], fake_fid.shape[0]
        self.features[name] = (real_fid, fake_fid, real_kid, fake_kid)
        if min(n_real, n_fake) < 2:
            raise ValueError(f"QualityMetrics: scenario {name!r} needs at least 2 real and 2 generated images for FID.")

        fid = FrechetInceptionDistance(feature=_PrecomputedFeatures(real_fid.shape[1]))
        fid.update(real_fid, real=True)
        fid.update(fake_fid, real=False)
        result: dict[str, Any] = {"FID": float(fid.compute()), "num_real": n_real, "num_fake": n_fake}

        subset = self._kid_subset_size(n_real, n_fake)
        if subset is None:
            result.update(KID=None, KID_std=None)
        else:
            with warnings.catch_warnings():
                # Its "saves all extracted features" warning is the point of handing it precomputed features.
                warnings.filterwarnings("ignore", message=".*Kernel Inception Distance.*")
                kid = KernelInceptionDistance(
                    feature=_PrecomputedFeatures(real_kid.shape[1]),
                    subsets=self.protocol.kid_subsets,
                    subset_size=subset,
                )
            kid.update(real_kid, real=True)
            kid.update(fake_kid, real=False)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                kid_mean, kid_std = kid.compute()
            result.update(KID=float(kid_mean) * self.kid_scale, KID_std=float(kid_std) * self.kid_scale)
        result["kid_subset_size"] = subset
        return result

    def evaluate(self, scenarios: Mapping[str, tuple[Iterable[ImageItem], Iterable[ImageItem]]]) -> dict[str, Any]:
        """``scenarios``: name -> (real images, generated images). Returns the means over scenarios (FID; KID over
        the scenarios where it is defined, None if nowhere) and the per-scenario results."""
        if not scenarios:
            raise ValueError("QualityMetrics.evaluate: no scenarios given.")
        per_scenario = {name: self.scenario(real, fake, name=name) for name, (real, fake) in scenarios.items()}
        kids = [r["KID"] for r in per_scenario.values() if r["KID"] is not None]
        return {
            "FID": float(np.mean([r["FID"] for r in per_scenario.values()])),
            "KID": float(np.mean(kids)) if kids else None,
            "kid_scale": self.kid_scale,
            "protocol": self.protocol.name,
            "num_scenarios": len(per_scenario),
            "num_scenarios_with_kid": len(kids),
            "scenarios": per_scenario,
        }


def fid_kid(
    scenarios: Mapping[str, tuple[Iterable[ImageItem], Iterable[ImageItem]]],
    protocol: str | QualityProtocol = "standard",
    feature: nn.Module | str | os.PathLike | None = None,
    kid_scale: float = 100.0,
    **kwargs: Any,
) -> dict[str, Any]:
    """One-call form of :class:`QualityMetrics` ``(...).evaluate(scenarios)``."""
    return QualityMetrics(protocol=protocol, feature=feature, kid_scale=kid_scale, **kwargs).evaluate(scenarios)
