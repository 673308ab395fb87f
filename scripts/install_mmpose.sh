#!/usr/bin/env bash
# Installs the MMPose 0.x extra (pose perception loss, pose evaluation) into the current Python environment.
# Run after `pip install -r requirements.txt`; safe to run again. PYTHON=/path/to/python selects another env.
set -euo pipefail

PYTHON="${PYTHON:-python}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PIP=("$PYTHON" -m pip install --disable-pip-version-check)

if ! "$PYTHON" -c "import numpy, torch" 2>/dev/null; then
    echo "install_mmpose.sh: numpy and torch must be installed first (pip install -r requirements.txt)" >&2
    exit 1
fi

# mmcv's setup.py imports pkg_resources (gone from setuptools >= 81) and chumpy's imports pip, so everything
# below builds without isolation, against these tools and the numpy already installed.
"${PIP[@]}" "setuptools>=77.0.3,<81" wheel cython

# An xtcocotools wheel from PyPI is compiled against numpy 1.x and fails to import under numpy 2
# ("numpy.dtype size changed"); replace any such install by a build from the sdist.
if "$PYTHON" -m pip show xtcocotools >/dev/null 2>&1 && ! "$PYTHON" -c "import xtcocotools._mask" 2>/dev/null; then
    echo "install_mmpose.sh: the installed xtcocotools does not import with this numpy; rebuilding it from source"
    "${PIP[@]}" --no-build-isolation --no-binary xtcocotools --no-deps --force-reinstall --no-cache-dir \
        "xtcocotools>=1.12"
fi

"${PIP[@]}" --no-build-isolation --no-binary xtcocotools -r "$ROOT/requirements-mmpose.txt"

# The same check as grpose/eval/pose_estimator.py: mmpose 0.29 still uses the alias np.int removed in numpy 2.
"$PYTHON" - <<'PY'
import numpy as np
if not hasattr(np, "int"):
    np.int = int
import mmcv
import mmpose
import xtcocotools._mask  # noqa: F401
from mmpose.apis import inference_bottom_up_pose_model, init_pose_model  # noqa: F401
print(f"install_mmpose.sh: mmpose {mmpose.__version__} + mmcv {mmcv.__version__} ready (numpy {np.__version__})")
PY
