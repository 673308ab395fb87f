"""FID / KID with an injected tiny feature extractor against direct numpy/scipy computations of the formulas."""

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from grpose.eval.quality import (
    INCEPTION_WEIGHTS_FILENAME,
    QualityMetrics,
    fid_kid,
    get_quality_protocol,
    imagenet_normalize_byte_cast,
    preprocess,
    resolve_inception_weights,
)

SIZE = 16  # images are made at the protocol's size, so resize + center crop is the identity


class TinyFeatures(torch.nn.Module):
    """Four hand-made features of uint8 [B, 3, H, W] images, in float64."""

    num_features = 4

    def forward(self, x):
        x = x.double() / 255
        top_energy = (x[:, :, : SIZE // 2] ** 2).mean((1, 2, 3))
        return torch.stack([x[:, 0].mean((1, 2)), x[:, 1].mean((1, 2)), x[:, 2].mean((1, 2)), top_energy], dim=1)


def numpy_features(images):
    """The same four features, written independently in numpy on HxWx3 arrays."""
    out = []
    for im in images:
        x = im.astype(np.float64) / 255
        out.append([x[..., 0].mean(), x[..., 1].mean(), x[..., 2].mean(), (x[: SIZE // 2] ** 2).mean()])
    return np.asarray(out)


def numpy_fid(f1, f2):
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def numpy_kid(f1, f2):
    """Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 on full sets of equal size m."""
    d = f1.shape[1]
    m = f1.shape[0]
    kxx = (f1 @ f1.T / d + 1) ** 3
    kyy = (f2 @ f2.T / d + 1) ** 3
    kxy = (f1 @ f2.T / d + 1) ** 3
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / m**2
    )


def image_set(seed, n, mean=128.0, spread=70.0):
    rng = np.random.default_rng(seed)
    return [
        np.clip(rng.normal(mean, spread, (SIZE, SIZE, 3)) + rng.normal(0, 30, 3), 0, 255).astype(np.uint8)
        for _ in range(n)
    ]


def metrics(protocol="standard", **overrides):
    return QualityMetrics(
        get_quality_protocol(protocol, image_size=SIZE, **overrides),
        feature=TinyFeatures(),
        batch_size=7,
        progress=False,
    )


def test_fid_and_kid_match_numpy():
    real, fake = image_set(0, 24), image_set(1, 24, mean=110, spread=50)
    out = metrics().scenario(real, fake, name="s")
    fr, ff = numpy_features(real), numpy_features(fake)
    assert out["FID"] == pytest.approx(numpy_fid(fr, ff), rel=1e-6)
    # Standard subset size = min(1000, n) = all 24 images, so every subset is the full set.
    assert out["kid_subset_size"] == 24
    assert out["KID"] == pytest.approx(100 * numpy_kid(fr, ff), rel=1e-6)
    assert out["KID_std"] == pytest.approx(0.0, abs=1e-9)
    assert out["num_real"] == 24 and out["num_fake"] == 24


def test_mean_over_scenarios_and_kid_scale():
    sets = {
        "oil_painting": (image_set(2, 20), image_set(3, 20, mean=90)),
        "cartoon": (image_set(4, 20, spread=40), image_set(5, 20, mean=160)),
        "sculpture": (image_set(6, 20), image_set(7, 20, mean=128, spread=60)),
    }
    protocol = get_quality_protocol("standard", image_size=SIZE)
    out = fid_kid(sets, protocol=protocol, feature=TinyFeatures(), kid_scale=1000.0, progress=False)
    fids = [numpy_fid(numpy_features(r), numpy_features(f)) for r, f in sets.values()]
    kids = [numpy_kid(numpy_features(r), numpy_features(f)) for r, f in sets.values()]
    assert out["FID"] == pytest.approx(np.mean(fids), rel=1e-6)
    assert out["KID"] == pytest.approx(1000 * np.mean(kids), rel=1e-6)
    assert out["num_scenarios"] == 3
    assert out["scenarios"]["cartoon"]["FID"] == pytest.approx(fids[1], rel=1e-6)
    assert len(set(round(f, 6) for f in fids)) == 3  # the scenarios really differ, so the mean is informative


def test_kid_subsets_are_seeded_and_sized():
    real, fake = image_set(8, 30), image_set(9, 30, mean=100)
    a = metrics(kid_subset_size=10, kid_subsets=20).scenario(real, fake)
    b = metrics(kid_subset_size=10, kid_subsets=20).scenario(real, fake)
    assert a["KID"] == b["KID"] and a["kid_subset_size"] == 10
    assert a["KID_std"] > 0  # different random subsets really were drawn


def test_paper_kid_is_none_with_too_few_images_and_skipped_in_mean():
    q = metrics("paper", swap_fake_channels=False, imagenet_normalize_byte_cast=False)
    assert q.protocol.kid_subset_size == 200 and q.protocol.fid_feature == 64
    sets = {"a": (image_set(10, 20), image_set(11, 20)), "b": (image_set(12, 20), image_set(13, 20, mean=90))}
    out = q.evaluate(sets)
    assert out["KID"] is None and out["num_scenarios_with_kid"] == 0
    assert all(s["KID"] is None for s in out["scenarios"].values())
    fids = [numpy_fid(numpy_features(r), numpy_features(f)) for r, f in sets.values()]
    assert out["FID"] == pytest.approx(np.mean(fids), rel=1e-6)


def test_paper_swaps_generated_channels_only():
    real, fake = image_set(14, 16), image_set(15, 16, mean=100)
    swapped = metrics("paper", imagenet_normalize_byte_cast=False).scenario(real, fake)
    by_hand = metrics().scenario(real, [f[..., ::-1] for f in fake])
    assert swapped["FID"] == pytest.approx(by_hand["FID"], rel=1e-9)
    assert swapped["FID"] != pytest.approx(metrics().scenario(real, fake)["FID"], rel=1e-3)


def test_imagenet_normalize_byte_cast_hand_values():
    img = np.zeros((1, 1, 3), dtype=np.uint8)
    img[0, 0] = (255, 0, 128)
    out = imagenet_normalize_byte_cast(torch.from_numpy(img).permute(2, 0, 1))
    # R: (1 - .485) / .229 * 255 = 573.47 -> 573 mod 256 = 61
    # G: (0 - .456) / .224 * 255 = -519.1 -> trunc -519 -> mod 256 = 249
    # B: (128/255 - .406) / .225 * 255 = 108.9 -> 108
    assert out.flatten().tolist() == [61, 249, 108]
    assert out.dtype == torch.uint8


def test_preprocess_resizes_short_side_and_center_crops():
    p = get_quality_protocol("standard", image_size=8)
    img = np.zeros((32, 16, 3), dtype=np.uint8)
    img[12:20] = 255  # a bright band in the middle rows survives the center crop
    out = preprocess(img, p, fake=False)
    assert out.shape == (3, 8, 8) and out.dtype == torch.uint8
    assert out[:, 2:6].float().mean() > 200 and out[:, 0].float().mean() < 60


def test_file_paths_equal_arrays(tmp_path):
    real, fake = image_set(16, 12), image_set(17, 12, mean=90)
    paths = []
    for i, im in enumerate(fake):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(paths[-1])
    a = metrics().scenario(real, fake)
    b = metrics().scenario(real, (p for p in paths))  # a generator: streamed, no len()
    assert a["FID"] == b["FID"] and a["KID"] == b["KID"]


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(OSError, match="broken.png"):
        metrics().scenario(image_set(18, 4), [bad] * 4)


def test_missing_weights_name_the_expected_file(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS_FILENAME):
        QualityMetrics("standard", feature=tmp_path / "nope.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(FileNotFoundError, match="torch_home"):
        resolve_inception_weights(None)
    ckpt = tmp_path / "torch_home" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / INCEPTION_WEIGHTS_FILENAME).write_bytes(b"")
    assert resolve_inception_weights(None) == ckpt / INCEPTION_WEIGHTS_FILENAME


def test_too_few_images_fail_clearly():
    with pytest.raises(ValueError, match="at least 2"):
        metrics().scenario(image_set(19, 5), image_set(20, 1))


@pytest.mark.slow
def test_real_inception_architecture_runs_offline(tmp_path, monkeypatch):
    """torchmetrics' InceptionV3 (random weights written to a local file) works through the offline path."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    with monkeypatch.context() as patch:
        # Build the architecture without any weights to write a local random-weights file.
        patch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        patch.setattr(fe.torch, "load", lambda *a, **k: {})
        net = fe.FeatureExtractorInceptionV3("tmp", ["2048"], feature_extractor_weights_path="unused")
    weights = tmp_path / INCEPTION_WEIGHTS_FILENAME
    torch.save(net.state_dict(), weights)
    real = [np.random.default_rng(i).integers(0, 256, (64, 48, 3), dtype=np.uint8) for i in range(3)]
    fake = [np.random.default_rng(9 + i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(3)]
    for protocol in ("standard", "paper"):
        out = QualityMetrics(protocol, feature=weights, progress=False).scenario(real, fake)
        assert np.isfinite(out["FID"])
