"""Where a click fine-tuning step spends its time: step latency and a torch.profiler breakdown.

Runs the training loop's own step (``hrsam.train.trainer._train_step``: the objective under
autocast, backward, clipping, AdamW) on one fixed batch of synthetic scenes, so data loading is
left out. Reports the median step time (CUDA events on a GPU, wall clock on a CPU) after warm-up,
then profiles a few steps and prints the inclusive time of HRSAM's two operators, forward and
backward (what they launch, Triton kernels or the reference's ops replayed for a backward), and the
operators and kernels with the largest self time: what to optimise next.

    PYTHONPATH=. python benchmarks/train_step.py --model hrsam_tiny --size 512 --batch-size 8 --out step.md

Defaults are the bundled model's training run (docs/MODEL_CARD.md); on a CPU use small sizes,
e.g. ``--size 128 --batch-size 2 --steps 2``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import environment, markdown_table
from hrsam.data import TRAIN_SEED, SyntheticScenes
from hrsam.modeling.interactive import build_model
from hrsam.train.batches import SceneItems
from hrsam.train.finetune import FinetuneObjective
from hrsam.train.optim import make_optimizer, param_groups
from hrsam.train.runtime import Process
from hrsam.train.trainer import LoopSettings, _train_step

# Our two operators' profiler events, forward and autograd backward. Their inclusive time covers
# everything they launch (the Triton kernels, or the reference's ops replayed for a backward).
HRSAM_EVENTS = {
    "hrsam::selective_scan": "scan forward",
    "GeneratedBackwardFor_hrsam_selective_scan_defaultBackward": "scan backward",
    "hrsam::varlen_attention": "attention forward",
    "GeneratedBackwardFor_hrsam_varlen_attention_defaultBackward": "attention backward",
}


def fixed_batch(size: int, batch_size: int, instances: int, objects: int) -> dict[str, torch.Tensor]:
    """One collated batch of the training stream's first scenes."""
    items = SceneItems(SyntheticScenes(batch_size, size, size, objects, seed=TRAIN_SEED), size, instances, 0)
    samples = [items[(0, index)] for index in range(batch_size)]
    return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}


def step_times(run, device: torch.device, steps: int) -> list[float]:  # noqa: ANN001
    """Seconds of each of ``steps`` calls of ``run`` (CUDA events on a GPU)."""
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        else:
            began = time.perf_counter()
            run()
            times.append(time.perf_counter() - began)
    return times


def breakdown(prof: profile, device: torch.device, steps: int, step_ms: float
              ) -> tuple[list[list[object]], list[list[object]]]:
    """(our operators' inclusive time, top operators by self time) rows, in ms per step.

    Device time on a GPU, CPU time on a CPU. Shares are of the median step time.
    """
    prefix = "device" if device.type == "cuda" else "cpu"
    averages = prof.key_averages()
    ours = []
    for event in averages:
        if event.key in HRSAM_EVENTS:
            ms = getattr(event, f"{prefix}_time_total") / 1e3 / steps
            ours.append([HRSAM_EVENTS[event.key], event.count // steps, f"{ms:.2f}", f"{100 * ms / step_ms:.0f}%"])
    selfs = sorted(((e.key, getattr(e, f"self_{prefix}_time_total") / 1e3 / steps) for e in averages),
                   key=lambda item: -item[1])  # fmt: skip
    top = [[name[:100], f"{ms:.3f}", f"{100 * ms / step_ms:.1f}%"] for name, ms in selfs[:25] if ms > 0]
    return sorted(ours), top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrsam_tiny")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--objects", type=int, default=5)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (a quarter of them profiled)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, help="also write the tables here (Markdown)")
    args = parser.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = build_model(args.model).to(device).train()
    objective = FinetuneObjective(model, dice_weight=1.0).to(device)
    settings = LoopSettings("finetune", Path("."), steps=10**6, batch_size=args.batch_size, lr=1e-4,
                            layer_decay=1.0, precision=args.precision, device=str(device))  # fmt: skip
    optimizer = make_optimizer(param_groups(model, model, settings.lr, 1.0, settings.weight_decay),
                               settings.betas, device)  # fmt: skip
    process = Process(0, 1, device)
    batch = fixed_batch(args.size, args.batch_size, args.instances, args.objects)
    counter = iter(range(10**9))

    def run() -> None:
        _train_step(settings, process, model, objective, optimizer, None, batch, next(counter))

    step_times(run, device, args.warmup)
    seconds = step_times(run, device, args.steps)
    profiled = max(1, args.steps // 4)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step_times(run, device, profiled)
    median = statistics.median(seconds)
    ours, top = breakdown(prof, device, profiled, median * 1e3)

    lines = [
        f"# Click fine-tuning step: {args.model}, {args.batch_size} x {args.size}^2, {args.precision}",
        "",
        f"- {environment()}",
        f"- step: median {median * 1e3:.1f} ms of {args.steps} after {args.warmup} warm-up "
        f"({args.batch_size / median:.1f} images/s); simulated click rounds vary per step (seeded)",
        "",
        f"## HRSAM's operators, inclusive time per step (profiled steps: {profiled})",
        "",
        markdown_table(["operator", "calls per step", "ms per step", "share of the step"], ours),
        "",
        "## Top operators and kernels by self time",
        "",
        markdown_table(["operator / kernel", "ms per step", "share of the step"], top),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
