"""Shared fixtures: tiny configs and batches from the synthetic dataset."""

import json

import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
from transformers.models.clip.tokenization_clip import bytes_to_unicode


from grpose.config import load_config
from grpose.data.synthetic import SyntheticPoseDataset

TINY_OVERRIDES = [
    "model.base=tiny", "model.pretrained=null", "model.pose_stem_channels=[8,16,16]",
    "model.pose_level_channels=[16,16,32,32]", "model.knn_k=4", "data.dataset=synthetic", "data.resolution=64",
    "data.skeleton_width=3", "data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=1",
    "trainer.enable_progress_bar=false", "sampling.num_inference_steps=2", "sampling.num_images=2",
]


@pytest.fixture
def tiny_cfg():
    def make(*overrides, path=None):
        return load_config(path, TINY_OVERRIDES + list(overrides))
    return make


@pytest.fixture(scope="session")
def synthetic_batch():
    def make(batch_size=4, seed=0, resolution=64):
        data = SyntheticPoseDataset(batch_size, resolution=resolution, seed=seed, skeleton_width=3)
        samples = [data[i] for i in range(batch_size)]
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "hint": torch.stack([s["hint"] for s in samples]),
            "prompt": [s["prompt"] for s in samples],
        }
    return make


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A random CLIPModel with a character-level BPE vocabulary (no merges) and 32x32 images, saved to disk."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    end = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=end, pad_token_id=end,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config)
    with torch.no_grad():
        # A shared offset in both towers' final norms gives the embeddings a common direction, so cosines are
        # mostly positive and the score is not clamped to 0.
        model.text_model.final_layer_norm.bias[0] = 4.0
        model.vision_model.post_layernorm.bias[0] = 4.0
        model.text_projection.weight[:, 0] = 1.0
        model.visual_projection.weight[:, 0] = 1.0
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def load_entry_point(relative_path: str):
    """Import a command-line entry point (`train.py`, `scripts/pose2img.py`, ...) as a module, to call its `main`."""
    import importlib.util
    import sys

    path = REPO / relative_path
    name = "_entry_" + relative_path.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
