"""SD1.5's CLIP tokenizer rebuilt offline from the BPE vocabulary that open_clip_torch ships (same ids as
openai/clip-vit-large-patch14's), or read from a diffusers tokenizer/ folder. SD2.x uses the same vocabulary and
merges and only pads differently ("!", id 0, like open_clip's zero padding)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import tempfile
from pathlib import Path

from transformers import CLIPTokenizer

from ..errors import MissingExtraError, MissingFileError, WeightsError

CLIP_CONTEXT_LENGTH = 77
CLIP_VOCAB_SIZE = 49408
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
# The CLIP BPE file holds a header line, then merges; CLIP uses the first 49152 - 256 - 2 of them so that
# 256 bytes + 256 end-of-word bytes + merges + 2 specials = 49408 tokens.
CLIP_NUM_MERGES = 49152 - 256 - 2


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
        raise MissingExtraError(
            "make_tokenizer() without a tokenizer folder builds the CLIP tokenizer from the BPE vocabulary that "
            "open_clip_torch ships: pip install open_clip_torch, or pass a diffusers tokenizer/ folder."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise MissingFileError(f"open_clip_torch is installed but {path} is missing; reinstall open_clip_torch.")
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


def make_tokenizer(path: str | None = None, pad_token: str = CLIP_EOS) -> CLIPTokenizer:
    """SD1.5's CLIP tokenizer, offline: from a diffusers tokenizer folder, else from open_clip's BPE vocabulary.

    Pads with `pad_token` to 77 tokens: "<|endoftext|>" like SD1.5's tokenizer (openai/clip-vit-large-patch14), "!"
    for SD2.x. A folder whose own pad token differs is refused: the text encoder was trained with one of them.
    """
    if path is not None:
        folder = Path(path).expanduser()
        if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
            raise MissingFileError(
                f"{folder} is not a CLIP tokenizer folder (needs vocab.json and merges.txt, like the tokenizer/ "
                "folder of runwayml/stable-diffusion-v1-5); pass None to build it from open_clip's vocabulary."
            )
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        if tokenizer.pad_token != pad_token:
            raise WeightsError(
                f"The tokenizer in {folder} pads with {tokenizer.pad_token!r}, but this arch pads with {pad_token!r} "
                "(SD1.5: '<|endoftext|>', SD2.x: '!'); pass the arch the folder was made for.")
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
            pad_token=pad_token,
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

