"""CLIP-Score through torchmetrics with a tiny random CLIP saved locally, against a direct transformers computation."""


import numpy as np
import pytest
import torch
from transformers import CLIPModel, CLIPProcessor

from grpose.eval.clip_score import PAPER_PROMPT_CHARS, clip_score

PROMPTS = [
    "a realistic photo of a person dancing",
    "two people, oil painting",
    "a cartoon of a man jumping over a fence in a park on a sunny day, highly detailed, digital art, trending",
    "x",
    "watercolor of a woman " * 6,  # longer than the 77-token text tower: exercises truncation
]


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8) for i in range(n)]


@torch.no_grad()
def direct_cosines(folder, imgs, prompts):
    """100 * cos(image, text) per pair with transformers alone (HWC numpy input, tokenizer-side truncation)."""
    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPProcessor.from_pretrained(folder)
    out = []
    for im, prompt in zip(imgs, prompts):
        pixels = processor(images=[im], return_tensors="pt")["pixel_values"]
        text = processor(text=[prompt], return_tensors="pt", padding=True, truncation=True, max_length=77)
        e_i = model.get_image_features(pixel_values=pixels)
        e_t = model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        out.append(100 * torch.nn.functional.cosine_similarity(e_i, e_t).item())
    return np.asarray(out)


def test_standard_equals_direct_computation(tiny_clip):
    imgs = images(5)
    cos = direct_cosines(tiny_clip, imgs, PROMPTS)
    assert cos.mean() > 0  # the oracle is not sitting on the clamp
    assert len(set(np.round(cos, 4))) == 5
    score = clip_score(imgs, PROMPTS, tiny_clip, batch_size=2, progress=False)
    assert score == pytest.approx(max(cos.mean(), 0.0), abs=1e-3)


def test_paper_truncates_prompts_and_averages_batches(tiny_clip):
    imgs = images(5, seed=1)
    cut = [p[:PAPER_PROMPT_CHARS] for p in PROMPTS]
    cos = direct_cosines(tiny_clip, imgs, cut)
    batches = [cos[0:2], cos[2:4], cos[4:5]]
    expected = np.mean([max(b.mean(), 0.0) for b in batches])
    score = clip_score(imgs, PROMPTS, tiny_clip, batch_size=2, protocol="paper", progress=False)
    assert score == pytest.approx(expected, abs=1e-3)
    # The cut matters for this prompt set (prompt 3 and 5 are longer than 77 characters).
    uncut = clip_score(imgs, PROMPTS, tiny_clip, batch_size=2, protocol="standard", progress=False)
    assert abs(uncut - expected) > 1e-3


def test_file_paths_and_count_mismatch(tiny_clip, tmp_path):
    from PIL import Image

    imgs = images(3, seed=2)
    paths = []
    for i, im in enumerate(imgs):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(paths[-1])
    a = clip_score(imgs, PROMPTS[:3], tiny_clip, batch_size=3, progress=False)
    b = clip_score(paths, PROMPTS[:3], tiny_clip, batch_size=3, progress=False)
    assert a == pytest.approx(b, abs=1e-5)
    with pytest.raises(ValueError, match="images"):
        clip_score(imgs[:2], PROMPTS[:3], tiny_clip, progress=False)
    with pytest.raises(ValueError, match="more images"):
        clip_score(imgs, PROMPTS[:2], tiny_clip, progress=False)


def test_missing_model_folder_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="openai/clip-vit-base-patch16"):
        clip_score(images(1), PROMPTS[:1], tmp_path / "clip", progress=False)
