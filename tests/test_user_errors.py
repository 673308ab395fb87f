"""Every user mistake we know of, at every entry point: `error: <one line>` on stderr, exit status 1, no traceback.

Each row is a bad input someone tried; the expected fragment is what the one-line message must say. A new case
goes here so that none regresses.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from grpose.cli import run
from grpose.config import load_config
from grpose.weights import build_adapter_from_config

from .conftest import TINY_OVERRIDES, load_entry_point

DEMO = "configs/demo.yaml"
# Runs go to a temporary folder, and these errors come before any scoring.
TINY = ["--config", DEMO, *TINY_OVERRIDES, "eval.metrics=[]", "output_dir={root}/experiments"]


class _WritesAFile:
    """A pickle payload that would create a file when unpickled (it must never be)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad (and one good) input files, made once."""
    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    (root / "corrupt.ckpt").write_bytes(b"PK\x03\x04 this is no zip archive")
    torch.save({"state_dict": _WritesAFile(root / "pwned.txt")}, root / "malicious.ckpt")
    adapter = build_adapter_from_config(load_config(DEMO, TINY_OVERRIDES).model)
    adapter.save_pretrained(root / "adapter_k4")
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, root / "not_an_adapter.ckpt")
    (root / "mapping.json").write_text(json.dumps({"a": {"img_path": "a.jpg", "prompt": "p", "pose_path": "a.npz"}}))
    (root / "exists.safetensors").write_bytes(b"")
    (root / "pose.json").write_text(json.dumps([[[10 + 2 * i, 20 + i, 1.0] for i in range(17)]]))
    return root


CASES = [
    # (id, entry point, argv (with {root} for the files fixture), fragment of the message)
    ("resolution-not-multiple-of-64", "train.py", [*TINY, "data.resolution=60"],
     "data.resolution=60 must be a positive multiple of 64"),
    ("knn_k-not-an-int", "train.py", [*TINY, "model.knn_k=abc"], "invalid value for 'model.knn_k'"),
    ("unknown-key", "train.py", [*TINY, "model.knn=4"], "unknown config key 'model.knn'"),
    ("override-without-equals", "train.py", [*TINY, "model.knn_k"], "is not of the form key=value"),
    ("bad-choice", "train.py", [*TINY, "model.adapter=t2i"], "model.adapter='t2i' is not one of"),
    ("unknown-arch", "train.py", [*TINY, "model.base=sd21"], "model.base='sd21' is not one of"),
    ("missing-config", "train.py", ["--config", "configs/nope.yaml"], "configs/nope.yaml does not exist"),
    ("resume-without-checkpoint", "train.py", [*TINY, "--resume", "last"],
     "no checkpoint at"),
    ("frozen-dtype-needs-mixed", "train.py", [*TINY, "model.frozen_dtype=bf16"], "needs a mixed trainer.precision"),
    ("missing-sd15-weights", "train.py", [*TINY, "model.pretrained={root}/nothing"], "SD1.5 weights not found"),
    ("train-the-base-alone", "train.py", [*TINY, "model.adapter=none"], "there is nothing to train"),
    ("eval-without-ckpt", "eval_pose.py", [*TINY], "--ckpt is required"),
    ("eval-base-alone-with-ckpt", "eval_pose.py", [*TINY, "model.adapter=none", "--ckpt", "{root}/adapter_k4"],
     "model.adapter=none samples the base alone"),
    ("eval-corrupt-safetensors", "eval_pose.py", [*TINY, "--ckpt", "{root}/corrupt.safetensors"],
     "cannot read {root}/corrupt.safetensors as safetensors"),
    ("eval-corrupt-ckpt", "eval_pose.py", [*TINY, "--ckpt", "{root}/corrupt.ckpt"], "cannot read {root}/corrupt.ckpt"),
    ("eval-malicious-ckpt", "eval_pose.py", [*TINY, "--ckpt", "{root}/malicious.ckpt"], "would run code"),
    ("eval-missing-ckpt", "eval_pose.py", [*TINY, "--ckpt", "{root}/none.ckpt"], "does not exist"),
    ("eval-architecture-mismatch", "eval_pose.py", [*TINY, "model.knn_k=5", "--ckpt", "{root}/adapter_k4"],
     "knn_k: file 4 vs config 5"),
    ("eval-release-ckpt-not-converted", "eval_pose.py", [*TINY, "--ckpt", "{root}/not_an_adapter.ckpt"],
     "expected only 'adapter.*' keys"),
    ("eval-bad-protocol", "eval_pose.py", [*TINY, "eval.protocol=cvpr", "--ckpt", "{root}/adapter_k4"],
     "eval.protocol='cvpr' is not one of"),
    ("eval-images-not-a-folder", "eval_pose.py", [*TINY, "--score-only", "--images", "{root}/none"],
     "is not a folder"),
    ("prepare-missing-sd15", "prepare_weights.py", ["{root}/none.safetensors", DEMO, "{root}/out.safetensors",
                                                    *TINY_OVERRIDES], "SD1.5 weights not found"),
    ("prepare-output-exists", "prepare_weights.py", ["{root}/none", DEMO, "{root}/exists.safetensors",
                                                     *TINY_OVERRIDES], "already exists; pass --force"),
    ("export-corrupt-ckpt", "scripts/export_adapter.py", ["{root}/corrupt.ckpt", "{root}/export"],
     "cannot read {root}/corrupt.ckpt"),
    ("export-malicious-ckpt", "scripts/export_adapter.py", ["{root}/malicious.ckpt", "{root}/export"],
     "would run code"),
    ("convert-not-a-release-ckpt", "scripts/convert_release_ckpt.py",
     ["{root}/not_an_adapter.ckpt", "{root}/conv", "--config", DEMO, *TINY_OVERRIDES], "not a GRPose release"),
    ("pose2img-missing-pose", "scripts/pose2img.py",
     ["--sd15", "random", "--arch", "tiny", "--adapter", "{root}/adapter_k4", "--prompt", "x", "--pose",
      "{root}/none.json", "--resolution", "64"], "none.json"),
    ("pose2img-corrupt-adapter", "scripts/pose2img.py",
     ["--sd15", "random", "--arch", "tiny", "--adapter", "{root}/corrupt.safetensors", "--prompt", "x", "--pose",
      "{root}/pose.json", "--resolution", "64"], "corrupt.safetensors"),
    ("check-dataset-missing-root", "scripts/check_dataset.py", ["{root}/no_dataset", "mapping.json"],
     "does not exist"),
    ("check-dataset-missing-mapping", "scripts/check_dataset.py", ["{root}", "missing.json"],
     "mapping file missing.json not found"),
    ("laion-split-too-few-entries", "scripts/make_laion_split.py", ["{root}/mapping.json", "{root}/split",
                                                                    "--train", "5", "--test", "5"], "fewer than"),
    ("benchmark-bad-override", "scripts/benchmark.py", ["--config", DEMO, "model.knn_k=abc"],
     "invalid value for 'model.knn_k'"),
]


@pytest.mark.parametrize("entry, argv, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_mistake_prints_one_error_line(entry, argv, fragment, files, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(load_entry_point.__globals__["REPO"])
    argv = [a.format(root=files) for a in argv]
    status = run(load_entry_point(entry).main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    message = [line for line in err if line.startswith("error:")]
    assert status == 1, err
    assert len(message) == 1 and "Traceback" not in "\n".join(err), err
    assert fragment.format(root=files) in message[0], message[0]
    assert not (files / "pwned.txt").exists(), "a pickle ran code"


def test_malicious_pickle_payload_is_real(files, tmp_path):
    """The payload above does write its file when unpickled without protection (so the check above can fail)."""
    target = tmp_path / "written.txt"
    pickle.loads(pickle.dumps(_WritesAFile(target)))
    assert target.exists()
