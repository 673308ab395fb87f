#!/usr/bin/env bash
# The miniature paper on the CPU: install (idempotent), train the GRPose adapter on the pretrained tiny base,
# evaluate it and the base alone with the trained pose evaluator, then write the comparison table and figure.
# The demo starts from scratch every time: it replaces its own earlier experiments/demo and outputs/demo*.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
rm -rf experiments/demo outputs/demo outputs/demo_base
PY=.venv/bin/python
$PY train.py --config configs/demo.yaml "$@"
$PY eval_pose.py --config configs/demo.yaml --ckpt experiments/demo/adapter
$PY eval_pose.py --config configs/demo.yaml model.adapter=none eval.run_name=demo_base
$PY scripts/compare_runs.py outputs/demo outputs/demo_base --out outputs/demo/comparison.md
$PY scripts/compare_figure.py outputs/demo outputs/demo_base --labels "GRPose (pose overlaid)" \
    "base alone (pose overlaid)" --out outputs/demo/comparison.png
cat outputs/demo/comparison.md
echo "figure: outputs/demo/comparison.png; per-image alignment: outputs/demo/alignment/index.html"
