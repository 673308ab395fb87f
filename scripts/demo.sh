#!/usr/bin/env bash
# Install (idempotent), train the tiny demo GRPose on synthetic poses on the CPU, then generate and score samples.
# The demo starts from scratch every time: it replaces its own earlier experiments/demo and outputs/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
rm -rf experiments/demo outputs/demo
.venv/bin/python train.py --config configs/demo.yaml "$@"
.venv/bin/python eval_pose.py --config configs/demo.yaml --ckpt experiments/demo/checkpoints/last.ckpt
