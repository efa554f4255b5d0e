"""Eager vs compiled (torch.compile + CUDA graphs) vs AOTInductor, side by side with ratios, in one run.

Run on the GPU machine from the repository root:

    python benchmarks/compiled.py --out $OUT/compiled.md --aoti-dir /tmp/hrsam_aoti

Per case (``--cases``, "model:size"; precision ``--precision``, default bf16; random weights from
seed 0, the weights the GPU tests and the profile use, so Inductor's cache serves them all):

* encoder: ``EagerRunner`` (autocast), ``CompiledRunner`` (graph replay, input copy and output copy
  included: what the predictor gets) and, for ``--aoti-cases``, ``AOTIRunner``;
* decoder per click with ``--points`` prompt points (5 clicks + SAM's padding point): eager fp32,
  eager at the precision, compiled, AOTInductor, and the attention kernels each engine's click launches;
* first call, reported apart: building the compiled runner (compile + capture; cold or warm as the
  Inductor cache in ``TORCHINDUCTOR_CACHE_DIR`` is), packaging (or reusing) the AOTInductor files in
  ``--aoti-dir`` and loading them; ``--startup`` also builds the first case's runner in two fresh
  processes sharing a new cache directory: cold, then warm (the second process's start);
* parity over the 5-click session of ``tests/test_compiled.py``: max |logits - eager fp32| / max
  |eager fp32| over the clicks, and the smallest mask IoU against eager at the same precision.

SAM ViT-B at 1024 (segment_anything's encoder) runs in the same process, eager and compiled (same
Inductor options, CUDA graph), as the reference the acceptance targets name. Medians of
``--iters`` calls after warm-up, CUDA events (``benchmarks/common.py``). Order: SAM, every case's
eager and compiled runs, then the packages (the slowest to build); ``--out`` is rewritten after
each step, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import attention_kernels, cuda_median_ms, environment, markdown_table  # noqa: E402
from benchmarks.encoder import build_encoder  # noqa: E402
from export.aoti import export_aoti  # noqa: E402
from hrsam.checkpoint import load_model  # noqa: E402
from hrsam.compiled import CompiledRunner, CudaGraphCall, compile_part, decoder_example  # noqa: E402
from hrsam.contract import SIDECAR_FILE, Sidecar  # noqa: E402
from hrsam.modeling.configs import PATCH_SIZE  # noqa: E402
from hrsam.runner import EagerRunner, Runner, autocast_dtype_of  # noqa: E402
from tests.test_compiled import RELATIVE_TOLERANCE, click_session, mask_iou  # noqa: E402
from trt_runtime.aoti_runner import AOTIRunner  # noqa: E402

DEFAULT_CASES = ["hrsampp_vit_b:2048", "hrsam_vit_b:1024", "hrsam_vit_b:2048"]


class AutocastEncoder(nn.Module):
    """SAM's image encoder under autocast with float32 output, like ``hrsam.compiled.EncoderPart``."""

    def __init__(self, encoder: nn.Module, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.encoder, self.dtype = encoder, dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.dtype is None:
            return self.encoder(images).float()
        with torch.autocast("cuda", dtype=self.dtype):
            return self.encoder(images).float()


def parse_case(text: str) -> tuple[str, int]:
    name, size = text.split(":")
    return name, int(size)


def prompts(size: int, points: int) -> tuple[torch.Tensor, ...]:
    """Decoder prompts: ``points - 1`` clicks and SAM's padding point, no mask prompt."""
    _, coords, labels, mask, has_mask = decoder_example(size // PATCH_SIZE, points, torch.device("cuda"))
    generator = torch.Generator(device="cuda").manual_seed(0)
    coords[:, :-1].copy_(torch.rand(1, points - 1, 2, device="cuda", generator=generator) * size)
    labels[:, :-1] = 1.0
    return coords, labels, mask, has_mask


def session_parity(runner: Runner, size: int, reference: list, same: list) -> tuple[float, float]:
    """(max logits error relative to eager fp32, min mask IoU vs eager at the runner's precision)."""
    got = click_session(runner, size)
    errors = [np.abs(a[2] - r[2]).max() / np.abs(r[2]).max() for a, r in zip(got, reference, strict=True)]
    ious = [mask_iou(a[0], s[0]) for a, s in zip(got, same, strict=True)]
    return float(max(errors)), float(min(ious))


def source_fingerprint() -> str:
    """A short hash of the product's source (``hrsam/``, ``export/``): what a package was built from.

    Why: a reused package must come from the code being measured. A GPU machine kept warm between
    calls keeps ``--aoti-dir``; without the fingerprint in the directory name a run on one branch
    reused a package another branch had built (fifteenth session, docs/BENCHMARKS.md).
    """
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    sources = (p for folder in ("hrsam", "export") for p in (root / folder).rglob("*") if p.suffix in (".py", ".c"))
    for path in sorted(sources):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def aoti_directory(name: str, size: int, args: argparse.Namespace) -> tuple[Path, str]:
    """The case's package directory under --aoti-dir, packaged unless it already holds this case
    built from this source (``source_fingerprint``)."""
    tuned = "_autotuned" if args.max_autotune else ""
    directory = args.aoti_dir / f"{name}_{size}_{args.precision}{tuned}_{source_fingerprint()}"
    if (directory / SIDECAR_FILE).is_file():
        sidecar = Sidecar.read(directory)
        record = sidecar.aoti.get("encoder", {})
        if (sidecar.model, sidecar.input_size, record.get("precision")) == (name, size, args.precision):
            return directory, "reused"
    result = export_aoti(
        load_model(name), size, directory, args.precision, "cuda", max_points=16, max_autotune=args.max_autotune
    )
    return directory, " + ".join(f"{result.seconds[p]:.0f}" for p in ("encoder", "decoder"))


class Case:
    """One model at one input size: its eager runners, inputs and reference sessions, built once."""

    def __init__(self, name: str, size: int, args: argparse.Namespace) -> None:
        self.name, self.size, self.args = name, size, args
        self.loaded = load_model(name)
        self.model = self.loaded.model.cuda().eval()
        self.model.encoder.prepare(size, size, 1, "cuda")
        self.autocast = autocast_dtype_of(args.precision)
        self.eager, self.eager32 = EagerRunner(self.model, self.autocast), EagerRunner(self.model)
        self.images = torch.randn(1, 3, size, size, device="cuda")
        self.prompt = prompts(size, args.points)
        self.embedding = self.eager.encode(self.images)
        self.reference = click_session(self.eager32, size)
        self.same = click_session(self.eager, size)
        self.row: dict = {"name": name, "size": size, "encoder": {}, "decoder": {}, "parity": {}, "attention": {}}

    def time(self, label: str, runner: Runner) -> None:
        iters = self.args.iters

        def click() -> object:
            return runner.decode(self.embedding, *self.prompt)

        self.row["encoder"][label] = cuda_median_ms(lambda: runner.encode(self.images), iters=iters)
        self.row["decoder"][label] = cuda_median_ms(click, iters=iters)
        if label != "eager":
            self.row["parity"][label] = session_parity(runner, self.size, self.reference, self.same)
            self.row["attention"][label] = attention_kernels(click)

    def eager_and_compiled(self) -> None:
        self.time("eager", self.eager)
        self.row["decoder"]["eager fp32"] = cuda_median_ms(
            lambda: self.eager32.decode(self.embedding, *self.prompt), iters=self.args.iters
        )
        compiled = CompiledRunner(
            self.model, self.autocast, self.loaded.weights, self.size, self.args.points + 2, self.args.max_autotune
        )
        self.row["compiled build s"] = compiled.startup_s
        self.time("compiled", compiled)

    def aoti(self) -> None:
        directory, self.row["aoti packaging s"] = aoti_directory(self.name, self.size, self.args)
        start = time.perf_counter()
        packages = AOTIRunner(directory, precision=self.args.precision)
        self.row["aoti load s"] = time.perf_counter() - start
        self.time("aoti", packages)
        failure = packages.graph_failure
        self.row["aoti graphs"] = "every call" if failure is None else failure.splitlines()[0][:100]
        direct, iters = AOTIRunner(directory, precision=self.args.precision, cuda_graphs=False), self.args.iters
        self.row["aoti direct"] = {
            "encoder": cuda_median_ms(lambda: direct.encode(self.images), iters=iters),
            "decoder": cuda_median_ms(lambda: direct.decode(self.embedding, *self.prompt), iters=iters),
        }


def bench_sam(args: argparse.Namespace) -> dict:
    """SAM ViT-B at 1024: eager and compiled (CUDA graph) encoder at the same precision."""
    part = AutocastEncoder(build_encoder("sam_vit_b", 1024), autocast_dtype_of(args.precision))
    images = torch.randn(1, 3, 1024, 1024, device="cuda")
    with torch.inference_mode():
        eager_ms = cuda_median_ms(lambda: part(images), iters=args.iters)
    start = time.perf_counter()
    graph = CudaGraphCall(compile_part(part), [images.clone()], torch.cuda.graph_pool_handle())
    build_s = time.perf_counter() - start
    compiled_ms = cuda_median_ms(lambda: graph(images), iters=args.iters)
    return {"eager": eager_ms, "compiled": compiled_ms, "build s": build_s}


def startup_in_fresh_processes(name: str, size: int, args: argparse.Namespace) -> tuple[float, float]:
    """Compiled runner build time in two new processes sharing a new, empty Inductor / Triton cache."""
    times = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=f"{cache}/inductor", TRITON_CACHE_DIR=f"{cache}/triton")
        for _ in range(2):
            command = [sys.executable, __file__, "--child", f"{name}:{size}", "--precision", args.precision,
                       "--out", "/dev/null"]  # fmt: skip
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            times.append(float(done.stdout.strip().splitlines()[-1]))
    return times[0], times[1]


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def report(rows: list[dict], sam: dict, startup: tuple[float, float] | None, args: argparse.Namespace) -> str:
    p = args.precision
    encoder = [[r["name"], r["size"], fmt(r["encoder"]["eager"]), fmt(r["encoder"]["compiled"]),
                fmt(r["encoder"].get("aoti")), ratio(r["encoder"]["eager"], r["encoder"]["compiled"]),
                ratio(r["encoder"]["eager"], r["encoder"].get("aoti"))] for r in rows]  # fmt: skip
    encoder.append(["sam_vit_b", 1024, fmt(sam["eager"]), fmt(sam["compiled"]), "-",
                    ratio(sam["eager"], sam["compiled"]), "-"])  # fmt: skip
    decoder = [[r["name"], f"{r['size'] // PATCH_SIZE}^2", fmt(r["decoder"]["eager fp32"]), fmt(r["decoder"]["eager"]),
                fmt(r["decoder"]["compiled"]), fmt(r["decoder"].get("aoti")),
                ratio(r["decoder"]["eager fp32"], r["decoder"]["compiled"]),
                ratio(r["decoder"]["eager fp32"], r["decoder"].get("aoti"))] for r in rows]  # fmt: skip
    first = [[r["name"], r["size"], fmt(r["compiled build s"], 1), r.get("aoti packaging s", "-"),
              fmt(r.get("aoti load s"), 1)] for r in rows]  # fmt: skip
    first.append(["sam_vit_b", 1024, fmt(sam["build s"], 1), "-", "-"])
    parity = [[r["name"], r["size"], backend, f"{err:.2e}", f"{RELATIVE_TOLERANCE[p]:.0e}", f"{iou:.4f}"]
              for r in rows for backend, (err, iou) in r["parity"].items()]  # fmt: skip
    attention = [[r["name"], f"{r['size'] // PATCH_SIZE}^2", backend, f"`{kernels}`"]
                 for r in rows for backend, kernels in r["attention"].items()]  # fmt: skip
    lines = [
        f"## Compiled engines: eager vs compiled vs AOTInductor ({p})", "",
        f"- {environment()}; {datetime.date.today().isoformat()}",
        f"- random weights (seed 0), batch 1; median of {args.iters} calls after warm-up, CUDA events; "
        f"decoder with {args.points} points (5 clicks + padding point), no mask prompt; "
        f"Inductor max-autotune {'on' if args.max_autotune else 'off'}",
        "- compiled = hrsam.compiled.CompiledRunner (Inductor, freezing, CUDA graph replay incl. input and output "
        "copies); AOTI = trt_runtime.aoti_runner.AOTIRunner (python -m export aoti packages, each call "
        "replayed from a CUDA graph)", "",
        "### Encoder (ms)", "",
        markdown_table(["model", "input", f"eager {p}", "compiled", "AOTI", "eager/compiled", "eager/AOTI"], encoder),
        "", "### Decoder per click (ms)", "",
        markdown_table(["model", "embedding", "eager fp32", f"eager {p}", "compiled", "AOTI", "eager fp32/compiled",
                        "eager fp32/AOTI"], decoder),
        "", "Decoder attention kernels (one profiled click):", "",
        markdown_table(["model", "embedding", "backend", "kernels"], attention),
        "", "### First call (s)", "",
        markdown_table(["model", "input", "compiled runner build", "AOTI packaging (encoder + decoder)",
                        "AOTI load"], first),
        "", "### Parity over a 5-click session", "",
        markdown_table(["model", "input", "backend", "max logits err vs eager fp32", "tolerance",
                        f"min mask IoU vs eager {p}"], parity),
    ]  # fmt: skip
    lines += aoti_graphs_section(rows)
    lines += ["", "### Against the issue's targets", "", *targets(rows, sam)]
    if startup is not None:
        lines += ["", f"Compiled runner build of {rows[0]['name']} at {rows[0]['size']} in fresh processes with a new "
                  f"cache: cold {startup[0]:.1f} s, second process {startup[1]:.1f} s."]  # fmt: skip
    return "\n".join(lines) + "\n"


def aoti_graphs_section(rows: list[dict]) -> list[str]:
    """AOTI packages replayed from CUDA graphs (the runner's default) against calling them directly."""
    table = [[r["name"], r["size"], fmt(r["encoder"]["aoti"]), fmt(r["aoti direct"]["encoder"]),
              fmt(r["decoder"]["aoti"]), fmt(r["aoti direct"]["decoder"]), r["aoti graphs"]]
             for r in rows if "aoti direct" in r]  # fmt: skip
    if not table:
        return []
    header = ["model", "input", "encoder, graphs", "encoder, direct", "decoder, graphs", "decoder, direct",
              "replayed from graphs"]  # fmt: skip
    return ["", "### AOTI: CUDA graph replay vs direct package calls (ms)", "", markdown_table(header, table)]


def targets(rows: list[dict], sam: dict) -> list[str]:
    """One line per acceptance target these rows measure (issue 13), with the measured numbers."""
    lines = []

    def check(label: str, value: float | None, limit: float, what: str) -> None:
        if value is not None:
            verdict = "met" if value < limit else "NOT met"
            lines.append(f"- {label}: {value:.2f} ms vs {what} {limit:.2f} ms: {verdict}")

    for r in rows:
        case = (r["name"], r["size"])
        for backend in ("compiled", "aoti"):
            value = r["encoder"].get(backend)
            if case == ("hrsampp_vit_b", 2048):
                check(f"HRSAM++ 2048 {backend}", value, sam["eager"], "SAM ViT-B 1024 eager (same run)")
                check(f"HRSAM++ 2048 {backend}", value, 13.0, "the aim")
            if case == ("hrsam_vit_b", 2048):
                check(f"HRSAM 2048 {backend}", value, sam["compiled"], "SAM ViT-B 1024 compiled (same run)")
            if case == ("hrsam_vit_b", 1024):
                check(f"HRSAM 1024 {backend}", value, 4.0, "the aim")
            if r["size"] // PATCH_SIZE == 128:
                check(f"decoder per click at 128x128, {backend}", r["decoder"].get(backend), 1.5, "the limit")
    return lines


def child(case: str, precision: str) -> int:
    """--child: build the compiled runner of ``case`` and print its build time (for --startup)."""
    name, size = parse_case(case)
    model = load_model(name).model.cuda().eval()
    runner = CompiledRunner(model, autocast_dtype_of(precision), input_size=size, max_points=8)
    print(f"{runner.startup_s:.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="model:size")
    parser.add_argument("--aoti-cases", nargs="*", default=DEFAULT_CASES[:1], help="cases also run as packages")
    parser.add_argument("--aoti-dir", type=Path, default=Path(tempfile.gettempdir()) / "hrsam_aoti")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--points", type=int, default=6)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--startup", action="store_true", help="also time cold / warm builds in fresh processes")
    parser.add_argument("--max-autotune", action="store_true", help="Inductor max-autotune (much longer builds)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/compiled.py needs a CUDA device", file=sys.stderr)
        return 2
    if args.child:
        return child(args.child, args.precision)
    startup = startup_in_fresh_processes(*parse_case(args.cases[0]), args) if args.startup else None
    sam = bench_sam(args)
    print(f"SAM ViT-B 1024: {sam}", flush=True)
    cases = []

    def write() -> str:  # after every step: a run cut short keeps what it measured
        text = report([case.row for case in cases], sam, startup, args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        return text

    for spec in args.cases:  # every compiled case first, then the (slow to build) packages
        cases.append(Case(*parse_case(spec), args))
        cases[-1].eager_and_compiled()
        print(f"{spec}: {cases[-1].row}", flush=True)
        text = write()
    for case in cases:
        if f"{case.name}:{case.size}" in args.aoti_cases:
            case.aoti()
            print(f"{case.name}:{case.size} AOTI: {case.row}", flush=True)
            text = write()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
