"""scripts/check_dataset.py and scripts/make_laion_split.py on small folders written in tmp_path."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grpose.cli import run
from grpose.data.humanart import save_pose_npz

REPO = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


check_dataset = load_script("check_dataset")
make_laion_split = load_script("make_laion_split")


def write_entry(root, folder, name, n_persons=1, size=(40, 30)):
    img_path, pose_path = f"images/{folder}/{name}.jpg", f"pose/{folder}/{name}.npz"
    (root / img_path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 100, dtype=np.uint8)).save(root / img_path)
    kps = np.zeros((n_persons, 17, 3))
    kps[:, :5] = (10.0, 10.0, 0.9)  # five keypoints per person
    save_pose_npz(root / pose_path, kps)
    return {"img_path": img_path, "prompt": f"{folder}, {name}", "pose_path": pose_path}


@pytest.fixture()
def humanart_like(tmp_path):
    """cartoon: 3 good samples (1, 2 and 0 persons); dance: 2 good + 1 missing image, 1 unreadable image,
    1 missing pose, 1 malformed pose."""
    m = {
        "c1": write_entry(tmp_path, "2D/cartoon", "c1", 1),
        "c2": write_entry(tmp_path, "2D/cartoon", "c2", 2),
        "c3": write_entry(tmp_path, "2D/cartoon", "c3", 0),
        "d1": write_entry(tmp_path, "real/dance", "d1", 1),
        "d2": write_entry(tmp_path, "real/dance", "d2", 1),
        "d3": write_entry(tmp_path, "real/dance", "d3", 1),
        "d4": write_entry(tmp_path, "real/dance", "d4", 1),
        "d5": write_entry(tmp_path, "real/dance", "d5", 1),
        "d6": write_entry(tmp_path, "real/dance", "d6", 1),
    }
    (tmp_path / m["d3"]["img_path"]).unlink()
    (tmp_path / m["d4"]["img_path"]).write_bytes(b"\xff\xd8 broken jpeg")
    (tmp_path / m["d5"]["pose_path"]).unlink()
    (tmp_path / m["d6"]["pose_path"]).write_bytes(b"not an npz")
    (tmp_path / "mapping.json").write_text(json.dumps(m))
    return tmp_path


def table_rows(output):
    rows = {}
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0] in ("cartoon", "dance", "TOTAL"):
            rows[cells[0]] = cells[1:]
    return rows


def test_check_dataset_counts_problems(humanart_like, capsys):
    assert run(check_dataset.main, [str(humanart_like), "mapping.json", "--workers", "2"]) == 1
    out = capsys.readouterr().out
    rows = table_rows(out)
    # samples, missing img, bad img, missing pose, bad pose, no person, persons/img, max persons, kpts/person
    assert rows["cartoon"] == ["3", "0", "0", "0", "0", "1", "1.00", "2", "5.0"]
    assert rows["dance"][:5] == ["6", "1", "1", "1", "1"]
    assert rows["TOTAL"][:6] == ["9", "1", "1", "1", "1", "1"]
    assert "4 broken samples" in out
    for name in ("d3.jpg", "d4.jpg", "d5.npz", "d6.npz"):
        assert name in out


def test_check_dataset_passes_a_clean_folder_and_limits_samples(humanart_like, capsys):
    mapping = json.loads((humanart_like / "mapping.json").read_text())
    clean = {k: v for k, v in mapping.items() if k in ("c1", "c2", "d1", "d2")}
    (humanart_like / "clean.json").write_text(json.dumps(clean))
    assert run(check_dataset.main, [str(humanart_like), "clean.json"]) == 0
    assert "all samples readable" in capsys.readouterr().out
    assert run(check_dataset.main, [str(humanart_like), "mapping.json", "--max-samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "checking 3 entries" in out and table_rows(out)["TOTAL"][0] == "3"
    assert run(check_dataset.main, [str(humanart_like), "missing.json"]) == 1


def test_check_dataset_runs_from_the_repo_root(humanart_like):
    result = subprocess.run([sys.executable, "scripts/check_dataset.py", str(humanart_like), "mapping.json"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert table_rows(result.stdout)["TOTAL"][0] == "9"


@pytest.fixture()
def laion_mapping(tmp_path):
    mapping = {f"00000_{i:09d}": {"img_path": f"images/00000/{i:09d}.jpg", "prompt": f"photo {i}",
                                  "pose_path": f"pose/00000/{i:09d}.npz"} for i in range(50)}
    path = tmp_path / "mapping_file_training.json"
    path.write_text(json.dumps(mapping))
    return path


def read_split(out_dir):
    return (json.loads((out_dir / "train.json").read_text()), json.loads((out_dir / "test.json").read_text()))


def test_split_counts_disjoint_and_reproducible(laion_mapping, tmp_path):
    args = [str(laion_mapping), "--train", "30", "--test", "10"]
    assert make_laion_split.main(args[:1] + [str(tmp_path / "s0")] + args[1:] + ["--seed", "0"]) == 0
    assert make_laion_split.main(args[:1] + [str(tmp_path / "s0b")] + args[1:] + ["--seed", "0"]) == 0
    assert make_laion_split.main(args[:1] + [str(tmp_path / "s1")] + args[1:] + ["--seed", "1"]) == 0
    train, test = read_split(tmp_path / "s0")
    assert len(train) == 30 and len(test) == 10 and not set(train) & set(test)
    full = json.loads(laion_mapping.read_text())
    assert all(full[k] == v for k, v in {**train, **test}.items())
    assert read_split(tmp_path / "s0b") == (train, test)
    assert read_split(tmp_path / "s1")[0].keys() != train.keys()


def test_split_ignores_entry_order(laion_mapping, tmp_path):
    full = json.loads(laion_mapping.read_text())
    reversed_path = tmp_path / "reversed.json"
    reversed_path.write_text(json.dumps(dict(reversed(list(full.items())))))
    for path, out in ((laion_mapping, "a"), (reversed_path, "b")):
        assert run(make_laion_split.main, [str(path), str(tmp_path / out), "--train", "5", "--test", "5"]) == 0
    assert read_split(tmp_path / "a") == read_split(tmp_path / "b")


def test_split_refuses_too_few_entries(laion_mapping, tmp_path, capsys):
    assert run(make_laion_split.main, [str(laion_mapping), str(tmp_path / "o"), "--train", "45", "--test", "10"]) == 1
    assert "50 usable entries" in capsys.readouterr().err
    assert not (tmp_path / "o" / "train.json").exists()


def test_split_with_root_keeps_only_downloaded_entries(laion_mapping, tmp_path):
    root = tmp_path / "LAION-Human"
    for i in range(8):
        for sub, ext in (("images", "jpg"), ("pose", "npz")):
            path = root / sub / "00000" / f"{i:09d}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    (root / "pose/00000/000000007.npz").unlink()  # image without pose: not usable
    assert run(make_laion_split.main, [str(laion_mapping), str(root), "--train", "5", "--test", "2",
                                  "--root", str(root)]) == 0
    train, test = read_split(root)
    assert set(train) | set(test) == {f"00000_{i:09d}" for i in range(7)}
    assert run(make_laion_split.main, [str(laion_mapping), str(root), "--train", "5", "--test", "3",
                                  "--root", str(root)]) == 1


def test_split_runs_from_the_repo_root(laion_mapping, tmp_path):
    result = subprocess.run([sys.executable, "scripts/make_laion_split.py", str(laion_mapping), str(tmp_path / "o"),
                             "--train", "20", "--test", "20", "--seed", "3"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    train, test = read_split(tmp_path / "o")
    assert len(train) == 20 and len(test) == 20
