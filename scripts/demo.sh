#!/usr/bin/env bash
# Install (idempotent), train the tiny demo GRPose on synthetic poses on the CPU, then generate and score samples.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python train.py --config configs/demo.yaml "$@"
.venv/bin/python eval_pose.py --config configs/demo.yaml --ckpt experiments/demo/checkpoints/last.ckpt
