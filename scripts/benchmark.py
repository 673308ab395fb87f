"""Speed and memory of GRPose against the plain ControlNet baseline (and any other trainable method of paper Table 1):
same data, same settings, one run.

Usage: python scripts/benchmark.py --config configs/demo.yaml [--steps N --warmup W --repeats R --batch-size B
       --resolution PX --sample-steps S --adapters grpose,controlnet|all --full-size --out FILE.md] [key=value ...]
`--adapters` takes any `model.adapter` that trains (grpose.config.trainable_adapters()), or `all` for every one.
Measured numbers and how to read them: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


import torch
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from grpose.cli import run
from grpose.config import ModelConfig, SamplingConfig, load_config, trainable_adapters
from grpose.errors import ConfigError
from grpose.data.synthetic import SyntheticPoseDataset
from grpose.lit_module import GRPoseLitModule
from grpose.models.knn_graph import KNN_PROFILER_RANGE
from grpose.models.pgi import ProgressiveGraphIntegrator
from grpose.precision import autocast_dtype

# The default run and the pair the ratios and targets compare (the PGI overhead over the plain ControlNet).
RATIO_PAIR = ("grpose", "controlnet")
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s. First match on the device name
# wins, so the PCIe H100 precedes the generic (SXM) H100 entry.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.05),
)
# The paper's (and our) GPU targets; see BENCHMARKS.md.
TARGET_PGI_OVERHEAD = 0.25  # GRPose step time at most 25 % above the ControlNet step
TARGET_SAMPLING_RATIO = 1.15
TARGET_MFU = 0.40


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML preset, e.g. configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per repeat")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps (and one sampling call) first")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the timed steps and of sampling (medians)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: data.batch_size)")
    parser.add_argument("--resolution", type=int, default=None, help="image side in pixels (default: data.resolution)")
    parser.add_argument("--sample-steps", type=int, default=None,
                        help="DDIM steps per sampling call (default: sampling.num_inference_steps)")
    parser.add_argument("--sample-batch-size", type=int, default=None,
                        help="images per sampling call (default: data.val_batch_size)")
    parser.add_argument("--adapters", default=",".join(RATIO_PAIR),
                        help=f"comma list among {','.join(trainable_adapters())}, or all")
    parser.add_argument("--full-size", action="store_true",
                        help="SD1.5-size random-weight model (model.base=sd15, pretrained=null, full-size pose "
                             "encoder, 512 px, batch 6, 50 DDIM steps, guidance 9) unless flags say otherwise")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto = cuda when available (trainer.accelerator is ignored)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak dense bf16 TFLOP/s for MFU when the GPU is not in the built-in table")
    parser.add_argument("--count-flops-only", action="store_true",
                        help="only count the FLOPs of one training step on the meta device (no weights, no compute: "
                             "works for --full-size on any machine) and the step time each GPU needs at the MFU "
                             "target")
    parser.add_argument("--out", default=None, help="also write the markdown report to this file")
    parser.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. model.knn_k=16")
    args = parser.parse_args(argv)
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    choices = trainable_adapters()
    adapters = [a.strip() for a in args.adapters.split(",") if a.strip()]
    if adapters == ["all"]:
        adapters = list(choices)
    unknown = [a for a in adapters if a not in choices]
    if unknown or not adapters or len(set(adapters)) != len(adapters):
        parser.error(f"--adapters takes a comma list (no repeats) among {','.join(choices)}, or all; "
                     f"got {args.adapters!r}")
    args.adapters = adapters
    if any(o.split("=", 1)[0].strip() == "model.adapter" for o in args.overrides):
        parser.error("model.adapter is set by --adapters; remove the model.adapter override")
    return args


def config_overrides(args: argparse.Namespace) -> list[str]:
    """Full-size defaults, then the user's key=value overrides, then the explicit flags (which win)."""
    overrides: list[str] = []
    if args.full_size:
        model, sampling = ModelConfig(), SamplingConfig()
        overrides += [
            "model.base=sd15", "model.pretrained=null", "model.adapter_weights=null",
            f"model.pose_stem_channels={list(model.pose_stem_channels)}",
            f"model.pose_level_channels={list(model.pose_level_channels)}",
            f"sampling.num_inference_steps={sampling.num_inference_steps}",
            f"sampling.guidance_scale={sampling.guidance_scale}",
            "data.resolution=512", "data.batch_size=6",
        ]
    overrides += list(args.overrides)
    if args.batch_size is not None:
        overrides.append(f"data.batch_size={args.batch_size}")
    if args.resolution is not None:
        overrides.append(f"data.resolution={args.resolution}")
    if args.sample_steps is not None:
        overrides.append(f"sampling.num_inference_steps={args.sample_steps}")
    if args.sample_batch_size is not None:
        overrides.append(f"data.val_batch_size={args.sample_batch_size}")
    return overrides


# ---- clocks and memory -------------------------------------------------------------------------------------


class Clock:
    """Wall time that waits for queued GPU work, so a reading covers the kernels launched before it."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def time(self, fn: Callable[[], object]) -> float:
        start = self.now()
        fn()
        return self.now() - start


class PeakMemory:
    """Peak memory of one training step.

    CUDA: torch.cuda.max_memory_allocated (all tensors: weights, optimizer state, activations). CPU: the process's
    peak resident set size during the step (VmHWM after resetting it through /proc/self/clear_refs), and its growth
    over the resident size before the step. tracemalloc cannot be used: torch's CPU allocator bypasses Python's.
    The growth underestimates activation memory, because the C allocator keeps freed pages of earlier steps.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.available = self.cuda or _proc_status_kib("VmHWM") is not None and _can_reset_hwm()
        self.method = ("torch.cuda.max_memory_allocated" if self.cuda else
                       "peak RSS of the process during the step (VmHWM)" if self.available else
                       "unavailable (needs Linux /proc/self/clear_refs)")
        self._before = 0.0

    def start(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        elif self.available:
            _reset_hwm()
            self._before = _proc_status_kib("VmRSS") / 1024

    def stop(self) -> tuple[float, float]:
        """(peak MiB, growth MiB over the start of the step)."""
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20, float("nan")
        if not self.available:
            return float("nan"), float("nan")
        peak = _proc_status_kib("VmHWM") / 1024
        return peak, peak - self._before


def _proc_status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> None:
    # "5" resets the peak resident set size of this process (Linux >= 4.0, Documentation/filesystems/proc.rst).
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")


def _can_reset_hwm() -> bool:
    try:
        _reset_hwm()
    except OSError:
        return False
    return True


# ---- where the time goes: PGI hooks and the KNN search ------------------------------------------------------


class ModuleTimer:
    """Accumulates the forward (and, optionally, backward) wall time of a set of modules through hooks.

    Forward time includes recomputation under gradient checkpointing. Backward time is taken between a module's
    full backward pre-hook and its full backward hook; autograd runs a module's backward nodes mostly back to
    back, so this is a close, not exact, attribution.
    """

    def __init__(self, modules: list[torch.nn.Module], clock: Clock, backward: bool):
        self.clock = clock
        self.forward_s = 0.0
        self.backward_s = 0.0
        self._starts: dict[int, float] = {}
        self._handles = []
        for module in modules:
            self._handles.append(module.register_forward_pre_hook(self._forward_start))
            self._handles.append(module.register_forward_hook(self._forward_end))
            if backward:
                self._handles.append(module.register_full_backward_pre_hook(self._backward_start))
                self._handles.append(module.register_full_backward_hook(self._backward_end))

    def _forward_start(self, module, args):
        self._starts[id(module)] = self.clock.now()

    def _forward_end(self, module, args, output):
        self.forward_s += self.clock.now() - self._starts.pop(id(module))

    def _backward_start(self, module, grad_output):
        self._starts[-id(module)] = self.clock.now()

    def _backward_end(self, module, grad_input, grad_output):
        self.backward_s += self.clock.now() - self._starts.pop(-id(module))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def knn_seconds(step: Callable[[], object], steps: int, device: torch.device) -> tuple[float, float]:
    """(seconds inside the model's KNN profiler range, total profiled seconds) over `steps` calls of `step`, read
    from torch.profiler; device time on CUDA, CPU time elsewhere."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total = time.perf_counter() - start
    knn_us = 0.0
    for event in prof.key_averages():
        if event.key == KNN_PROFILER_RANGE:
            knn_us = event.device_time_total if device.type == "cuda" else event.cpu_time_total
    return knn_us / 1e6, total


# ---- one adapter ------------------------------------------------------------------------------------------


@dataclass
class AdapterResult:
    adapter: str
    trainable_params: int
    step_s: float  # median over repeats of the mean step time
    best_step_s: float  # fastest repeat: the least disturbed by other processes on a shared machine
    throughput: float  # images / s, median over repeats
    peak_mib: float
    peak_growth_mib: float
    pgi_forward_share: Optional[float]
    pgi_backward_share: Optional[float]
    knn_share: Optional[float]
    sample_s_per_image: float
    flops_per_step: float
    achieved_tflops: float
    mfu: Optional[float]
    step_times_s: list[float] = field(default_factory=list)
    sample_times_s: list[float] = field(default_factory=list)


def synthetic_batch(batch_size: int, resolution: int, seed: int) -> dict:
    """A fixed batch of synthetic stick figures: step time does not depend on what the pixels show."""
    data = SyntheticPoseDataset(batch_size, resolution=resolution, seed=seed)
    samples = [data[i] for i in range(batch_size)]
    return {"image": torch.stack([s["image"] for s in samples]), "hint": torch.stack([s["hint"] for s in samples]),
            "prompt": [s["prompt"] for s in samples]}


def precision_context(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """What Lightning's precision plugin does around the training step: autocast for the mixed modes."""
    dtype = autocast_dtype(precision)
    if dtype is not None:
        return lambda: torch.autocast(device.type, dtype=dtype)
    if precision in ("32-true", "32"):
        return contextlib.nullcontext
    raise ConfigError(f"trainer.precision={precision} is not supported by the benchmark; use 32-true, bf16-mixed "
                      "or 16-mixed")


class StepRunner:
    """A bare training step: the lit module's own `training_step`, backward and its own optimizer (no Lightning
    loop, no data loading), so the numbers isolate the model."""

    def __init__(self, model: GRPoseLitModule, batch: dict, precision: str, device: torch.device, seed: int):
        self.model = model
        self.batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        self.autocast = precision_context(precision, device)
        self.optimizer = model.configure_optimizers()
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    def forward_backward(self) -> torch.Tensor:
        with self.autocast(), warnings.catch_warnings():
            # training_step logs its losses; without a Trainer Lightning only warns that nothing is recorded.
            warnings.filterwarnings("ignore", message=r".*self\.log\(\)")
            loss = self.model.training_step(self.batch, 0)
        if not torch.isfinite(loss):
            raise RuntimeError(f"the training loss is {loss.item()}: the benchmarked configuration diverges")
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return loss.detach()

    def step(self) -> None:
        self.forward_backward()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def device_peak_tflops(device: torch.device, override: Optional[float]) -> Optional[float]:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops
    return None


def benchmark_adapter(cfg: DictConfig, args: argparse.Namespace, device: torch.device, log) -> AdapterResult:
    clock = Clock(device)
    torch.manual_seed(cfg.trainer.seed)  # the same random frozen base for every adapter
    model = GRPoseLitModule.from_config(cfg).to(device)
    model.setup("fit")
    model.train()
    batch_size, resolution = cfg.data.batch_size, cfg.data.resolution
    runner = StepRunner(model, synthetic_batch(batch_size, resolution, cfg.trainer.seed), cfg.trainer.precision,
                        device, cfg.trainer.seed)
    name = cfg.model.adapter

    for i in range(args.warmup):
        log(f"[{name}] warm-up step {i + 1}/{args.warmup}")
        runner.step()

    memory = PeakMemory(device)
    step_means, peaks, growths = [], [], []
    for r in range(args.repeats):
        times = []
        for _ in range(args.steps):
            memory.start()
            times.append(clock.time(runner.step))
            peak, growth = memory.stop()
            peaks.append(peak)
            growths.append(growth)
        step_means.append(sum(times) / len(times))
        log(f"[{name}] repeat {r + 1}/{args.repeats}: {step_means[-1] * 1e3:.1f} ms/step")
    step_s = statistics.median(step_means)
    throughput = statistics.median(batch_size / t for t in step_means)

    # Separate pass with hooks: their synchronisation would otherwise slow the throughput measurement.
    pgi_fwd = pgi_bwd = knn = None
    pgis = [m for m in model.adapter.modules() if isinstance(m, ProgressiveGraphIntegrator)]
    if pgis and not cfg.model.compile:
        timer = ModuleTimer(pgis, clock, backward=not cfg.model.gradient_checkpointing)
        total = sum(clock.time(runner.step) for _ in range(args.steps))
        timer.remove()
        pgi_fwd = timer.forward_s / total
        pgi_bwd = None if cfg.model.gradient_checkpointing else timer.backward_s / total
        knn_s, profiled_s = knn_seconds(runner.step, args.steps, device)
        knn = knn_s / profiled_s

    # FlopCounterMode counts matmul / conv / attention FLOPs of the forward and backward (not the optimizer).
    counter = FlopCounterMode(display=False)
    with counter:
        runner.forward_backward()
    runner.optimizer.zero_grad(set_to_none=True)
    flops = float(counter.get_total_flops())
    achieved = flops / step_s / 1e12
    peak_tflops = device_peak_tflops(device, args.peak_tflops)

    sample_times = sample_seconds(model, cfg, args, clock, log)
    n_sample = cfg.data.val_batch_size
    result = AdapterResult(
        adapter=name, trainable_params=sum(p.numel() for p in model.adapter.parameters() if p.requires_grad),
        step_s=step_s, best_step_s=min(step_means), throughput=throughput, peak_mib=max(peaks),
        peak_growth_mib=max(growths),
        pgi_forward_share=pgi_fwd, pgi_backward_share=pgi_bwd, knn_share=knn,
        sample_s_per_image=statistics.median(sample_times) / n_sample, flops_per_step=flops,
        achieved_tflops=achieved, mfu=achieved / peak_tflops if peak_tflops else None,
        step_times_s=step_means, sample_times_s=sample_times,
    )
    del runner, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def sample_seconds(model: GRPoseLitModule, cfg: DictConfig, args: argparse.Namespace, clock: Clock,
                   log) -> list[float]:
    """Wall seconds of DDIM sampling calls (sampling.num_inference_steps, CFG at sampling.guidance_scale)."""
    n = cfg.data.val_batch_size
    batch = synthetic_batch(n, cfg.data.resolution, cfg.trainer.seed + 1)
    seeds = list(range(n))

    def run(**overrides):
        # The pipeline applies the precision policy itself (grpose.precision): frozen dtype, autocast.
        model.sample(batch["prompt"], batch["hint"], seeds, **overrides)

    if args.warmup:
        clock.time(lambda: run(num_inference_steps=1))
    times = []
    for r in range(args.repeats):
        times.append(clock.time(run))
        log(f"[{cfg.model.adapter}] sampling repeat {r + 1}/{args.repeats}: {times[-1]:.2f} s")
    model.train()
    return times


def meta_step_flops(cfg: DictConfig) -> float:
    """FLOPs of one training step's forward + backward, counted on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        model = GRPoseLitModule.from_config(cfg)
    model.to(torch.device("meta"))  # also moves the LightningModule's notion of its device
    model.train()
    n, res = cfg.data.batch_size, cfg.data.resolution
    batch = {"image": torch.zeros(n, 3, res, res, device="meta"), "hint": torch.zeros(n, 3, res, res, device="meta"),
             "prompt": synthetic_batch(n, 64, cfg.trainer.seed)["prompt"]}
    counter = FlopCounterMode(display=False)
    with counter:
        model.compute_loss(batch)["loss"].backward()
    return float(counter.get_total_flops())


def render_flops_markdown(flops: dict[str, float], header: dict[str, str]) -> str:
    # The H200 has the H100 SXM's compute peak; one column serves both.
    gpus = [("H100 SXM / H200" if name == "H100" else name, tflops) for name, tflops in PEAK_BF16_TFLOPS
            if name != "H200"]
    columns = ["adapter", "TFLOP per step", *[f"ms/step at {100 * TARGET_MFU:.0f} % MFU, {name}" for name, _ in gpus]]
    lines = [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for name, value in flops.items():
        times = [f"{value / (TARGET_MFU * tflops * 1e12) * 1e3:.0f}" for _, tflops in gpus]
        lines.append("| " + " | ".join([name, f"{value / 1e12:.2f}", *times]) + " |")
    if all(a in flops for a in RATIO_PAIR):
        lines += ["", f"FLOP ratio grpose / controlnet: {flops['grpose'] / flops['controlnet']:.3f}"]
    return "\n".join(lines) + "\n"


# ---- report ----------------------------------------------------------------------------------------------


@dataclass
class BenchmarkReport:
    results: dict[str, AdapterResult]
    markdown: str
    ratios: dict[str, float]


def _pct(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _num(value: Optional[float], fmt: str) -> str:
    if value is None or value != value:  # None or NaN
        return "—"
    return format(value, fmt)


def compute_ratios(results: dict[str, AdapterResult]) -> dict[str, float]:
    if not all(a in results for a in RATIO_PAIR):
        return {}
    g, c = results["grpose"], results["controlnet"]
    ratios = {
        "step_time": g.step_s / c.step_s,
        "best_step_time": g.best_step_s / c.best_step_s,
        "throughput": g.throughput / c.throughput,
        "sampling": g.sample_s_per_image / c.sample_s_per_image,
        "flops": g.flops_per_step / c.flops_per_step,
        "params": g.trainable_params / c.trainable_params,
    }
    if g.peak_mib == g.peak_mib and c.peak_mib == c.peak_mib:
        ratios["peak_memory"] = g.peak_mib / c.peak_mib
    return ratios


def render_markdown(results: dict[str, AdapterResult], ratios: dict[str, float], header: dict[str, str],
                    memory_method: str, cuda: bool) -> str:
    names = list(results)
    has_ratio = bool(ratios)
    columns = ["metric", *names] + (["grpose / controlnet"] if has_ratio else [])
    rows: list[list[str]] = []

    def row(label: str, values: list[str], ratio_key: Optional[str] = None):
        ratio = [_num(ratios.get(ratio_key), ".3f") if ratio_key else "—"] if has_ratio else []
        rows.append([label, *values, *ratio])

    get = lambda attr: [getattr(results[n], attr) for n in names]  # noqa: E731
    row("train step (ms, median)", [_num(v * 1e3, ".1f") for v in get("step_s")], "step_time")
    row("train step (ms, fastest repeat)", [_num(v * 1e3, ".1f") for v in get("best_step_s")], "best_step_time")
    row("train throughput (images/s, median)", [_num(v, ".2f") for v in get("throughput")], "throughput")
    row(f"peak memory per step (MiB; {memory_method})", [_num(v, ".0f") for v in get("peak_mib")], "peak_memory")
    if not cuda:
        row("RSS growth during the step (MiB; lower bound)", [_num(v, ".0f") for v in get("peak_growth_mib")])
    row("PGI forward share of the step", [_pct(v) for v in get("pgi_forward_share")])
    row("PGI backward share of the step", [_pct(v) for v in get("pgi_backward_share")])
    row("KNN search share of the step", [_pct(v) for v in get("knn_share")])
    row("sampling (s/image, DDIM + CFG, median)", [_num(v, ".3f") for v in get("sample_s_per_image")], "sampling")
    row("train FLOPs per step (GFLOP, fwd+bwd matmul/conv)", [_num(v / 1e9, ".1f") for v in get("flops_per_step")],
        "flops")
    row("achieved TFLOP/s", [_num(v, ".3f") for v in get("achieved_tflops")])
    row("MFU (vs peak dense bf16)", [_pct(v) for v in get("mfu")])
    row("trainable parameters (M)", [_num(v / 1e6, ".2f") for v in get("trainable_params")], "params")

    lines = [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if has_ratio:
        g = results["grpose"]
        scope = "" if cuda else " (CPU measurement; the targets are for a GPU)"
        lines += ["", f"Targets{scope}:",
                  f"- PGI overhead over the ControlNet step: {100 * (ratios['step_time'] - 1):+.1f} % "
                  f"(target <= {100 * TARGET_PGI_OVERHEAD:.0f} %)",
                  f"- sampling time ratio: {ratios['sampling']:.3f} (target <= {TARGET_SAMPLING_RATIO})",
                  f"- GRPose MFU: {_pct(g.mfu) if g.mfu is not None else 'unmeasured (no known peak)'} "
                  f"(target >= {100 * TARGET_MFU:.0f} %)"]
    return "\n".join(lines) + "\n"


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but torch.cuda.is_available() is False")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def main(argv: Optional[list[str]] = None, log: Callable[[str], None] = print) -> BenchmarkReport:
    args = parse_args(argv)
    device = resolve_device(args.device)
    overrides = config_overrides(args)
    configs = {name: load_config(args.config, overrides + [f"model.adapter={name}"]) for name in args.adapters}
    cfg = next(iter(configs.values()))
    if args.count_flops_only:
        flops = {name: meta_step_flops(adapter_cfg) for name, adapter_cfg in configs.items()}
        header = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
                  "command": "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "counted": (f"one training step (compute_loss forward + backward: VAE encode, text encoder, "
                              f"adapter, UNet), batch {cfg.data.batch_size}, {cfg.data.resolution} px, "
                              "matmul/conv/attention FLOPs (torch.utils.flop_counter), meta device")}
        markdown = render_flops_markdown(flops, header)
        log(markdown)
        _write(args.out, markdown, log)
        return BenchmarkReport(results={}, markdown=markdown, ratios={})

    results = {}
    for name, adapter_cfg in configs.items():
        started = time.perf_counter()
        results[name] = benchmark_adapter(adapter_cfg, args, device, log)
        log(f"[{name}] done in {time.perf_counter() - started:.0f} s")

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads), no GPU")
    m = cfg.model
    header = {
        "date": datetime.date.today().isoformat(),
        "device": device_name,
        "torch": torch.__version__,
        "command": "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": (f"base={m.base} (random weights{', full size' if args.full_size else ''}), "
                  f"pgi_levels={list(m.pgi_levels)}, graphs={list(m.graphs)}, graph_type={m.graph_type}, "
                  f"knn_k={m.knn_k}"),
        "data": f"synthetic, batch {cfg.data.batch_size}, {cfg.data.resolution} px",
        "switches": (f"precision={cfg.trainer.precision}, frozen_dtype={m.frozen_dtype}, "
                     f"channels_last={m.channels_last}, compile={m.compile}, "
                     f"gradient_checkpointing={m.gradient_checkpointing}, knn_chunk_mb={m.knn_chunk_mb}, "
                     f"tf32={cfg.trainer.tf32}"),
        "protocol": (f"{args.warmup} warm-up steps, {args.repeats} repeats x {args.steps} steps (medians); "
                     f"sampling {cfg.data.val_batch_size} images x {cfg.sampling.num_inference_steps} DDIM steps, "
                     f"guidance {cfg.sampling.guidance_scale}, {args.repeats} repeats; PGI/KNN shares from a "
                     f"separate hooked pass of {args.steps} steps"),
    }
    ratios = compute_ratios(results)
    markdown = render_markdown(results, ratios, header, PeakMemory(device).method, device.type == "cuda")
    log(markdown)
    _write(args.out, markdown, log)
    return BenchmarkReport(results=results, markdown=markdown, ratios=ratios)


def _write(path: Optional[str], markdown: str, log) -> None:
    if path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown, encoding="utf-8")
        log(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(run(main))
