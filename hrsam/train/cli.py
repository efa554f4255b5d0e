"""``python -m hrsam.train {finetune, distill, plot}``: the training command line (docs/TRAINING.md)."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch

from hrsam.checkpoint import DEFAULT_MODEL, load_model
from hrsam.data import LAYOUTS, TRAIN_SEED, FolderDataset, Scene, SyntheticScenes
from hrsam.modeling.configs import CONFIGS
from hrsam.modeling.interactive import HRSAMInteractive, build_model
from hrsam.train.batches import SceneItems
from hrsam.train.distill import DistillItems, DistillObjective, TeacherCache, list_images, load_sam_teacher, teacher_id
from hrsam.train.finetune import FinetuneObjective
from hrsam.train.metrics_log import plot
from hrsam.train.trainer import PRECISIONS, LoopSettings, train

STARTED = time.time()  # the budget counts from here (the interpreter start is a second earlier)


def _common(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("run")
    run.add_argument("--model", choices=sorted(CONFIGS), default=None, help=f"config (default {DEFAULT_MODEL})")
    run.add_argument("--init", default=None, help="start from these weights (e.g. a distilled checkpoint)")
    run.add_argument("--out", required=True, help="output folder: metrics.csv, train.log, loss.png, models")
    run.add_argument("--state-dir", default=None, help="where state.pt goes (default: --out)")
    run.add_argument("--resume", default=None,
                     help="state.pt (exact) or a run's weights_fp32 / model_fp16 .safetensors (another machine)")
    run.add_argument("--steps", type=int, default=2000, help="schedule length (an upper bound with --fit-steps)")
    run.add_argument("--batch-size", type=int, default=8, help="images per process and step")
    run.add_argument("--stop-at", type=int, default=None, help="stop (with a checkpoint) after this step")
    run.add_argument("--max-minutes", type=float, default=None, help="stop cleanly (checkpoint) within this time")
    run.add_argument("--fit-steps-to-budget", action="store_true",
                     help="shorten the schedule to what fits in --max-minutes, measured after a few steps")
    run.add_argument("--checkpoint-every", type=int, default=200, help="steps between state.pt saves")
    run.add_argument("--log-every", type=int, default=10, help="steps between metrics rows")
    run.add_argument("--seed", type=int, default=0, help="initial weights and all training randomness")
    run.add_argument("--workers", type=int, default=4, help="data-loading processes per training process")
    run.add_argument("--device", default=None, help="cuda or cpu (torchrun: one GPU per process)")
    run.add_argument("--part-mib", type=int, default=None, help="split output models into parts of this many MiB")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    optim = parser.add_argument_group("optimisation (defaults: the paper's recipe, docs/MODEL.md)")
    optim.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    optim.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up steps")
    optim.add_argument("--warmup-start-lr", type=float, default=1e-6, help="learning rate at step 0")
    optim.add_argument("--poly-power", type=float, default=1.0, help="poly decay exponent")
    optim.add_argument("--layer-decay", type=float, default=0.9, help="layer-wise learning-rate decay")
    optim.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    optim.add_argument("--clip-grad", type=float, default=1.0, help="gradient norm clip (0: none)")
    optim.add_argument("--precision", choices=sorted(PRECISIONS), default="bf16", help="autocast precision")
    optim.add_argument("--gradient-checkpointing", action="store_true", help="recompute blocks in the backward")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hrsam.train", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    finetune = commands.add_parser("finetune", help="click fine-tuning with simulated clicks and NFL",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(finetune)
    data = finetune.add_argument_group("data")
    data.add_argument("--data", default="synthetic", choices=("synthetic", "coco", *LAYOUTS), help="training data")
    data.add_argument("--root", help="dataset root (davis / hqseg44k / folder)")
    data.add_argument("--annotations", help="COCO / LVIS annotation JSON")
    data.add_argument("--image-root", help="COCO / LVIS image folder")
    data.add_argument("--size", type=int, default=512, help="training input side S")
    data.add_argument("--instances", type=int, default=4, help="objects supervised per image")
    data.add_argument("--synthetic-objects", type=int, default=5, help="objects drawn per synthetic scene")
    clicks = finetune.add_argument_group("click simulation")
    clicks.add_argument("--max-sim-iters", type=int, default=20, help="k < this, P(k) ~ decay^k")
    clicks.add_argument("--sim-decay", type=float, default=0.6, help="decay of P(k)")
    clicks.add_argument("--iou-weight", type=float, default=1.0, help="weight of the IoU-prediction loss")
    clicks.add_argument("--dice-weight", type=float, default=0.0,
                        help="weight of a soft Dice loss added to the NFL (0: the paper's loss)")
    finetune.set_defaults(run=run_finetune)
    distill = commands.add_parser("distill", help="distil a SAM image encoder into the student encoder",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(distill)
    data = distill.add_argument_group("data")
    data.add_argument("--teacher", required=True, help="segment_anything checkpoint, e.g. sam_vit_h_4b8939.pth")
    data.add_argument("--images", help="folder of training images (searched recursively)")
    data.add_argument("--annotations", help="or: COCO / LVIS annotation JSON listing the images")
    data.add_argument("--image-root", help="image folder of --annotations")
    data.add_argument("--cache", required=True, help="teacher-embedding cache folder (resumable)")
    data.add_argument("--shard-size", type=int, default=64, help="images per cache shard")
    data.add_argument("--teacher-batch", type=int, default=4, help="images per teacher forward")
    data.add_argument("--cache-only", action="store_true", help="fill the cache and stop")
    distill.set_defaults(run=run_distill)
    plotter = commands.add_parser("plot", help="draw loss.png from a metrics.csv")
    plotter.add_argument("metrics", help="metrics.csv of a run")
    plotter.add_argument("--out", default=None, help="image path (default: loss.png beside the CSV)")
    plotter.set_defaults(run=lambda args: print(plot(Path(args.metrics), Path(args.out or Path(args.metrics)
                                                                                   .with_name("loss.png")))) or 0)
    return parser


def _settings(args: argparse.Namespace, kind: str) -> LoopSettings:
    for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return LoopSettings(
        kind=kind, out=Path(args.out), steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=args.warmup_steps, warmup_start=args.warmup_start_lr, poly_power=args.poly_power,
        layer_decay=args.layer_decay, weight_decay=args.weight_decay, precision=args.precision,
        clip_grad=args.clip_grad or None, gradient_checkpointing=args.gradient_checkpointing,
        max_minutes=args.max_minutes, fit_steps_to_budget=args.fit_steps_to_budget,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, seed=args.seed, workers=args.workers,
        device=args.device, state_dir=Path(args.state_dir) if args.state_dir else None, part_mib=args.part_mib,
        progress_bar=not args.no_progress and sys.stderr.isatty(), stop_at=args.stop_at, started=STARTED,
    )


def _model(args: argparse.Namespace) -> HRSAMInteractive:
    if args.init:
        return load_model(args.model, args.init).model
    torch.manual_seed(args.seed)
    return build_model(args.model or DEFAULT_MODEL)


class _SingleObjectScenes:
    """Image / mask pairs (folder layouts) as one-object scenes."""

    def __init__(self, samples: FolderDataset) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Scene:
        sample = self.samples[index]
        return Scene(sample.image, sample.mask[None], sample.name)


def _finetune_scenes(args: argparse.Namespace, settings: LoopSettings) -> tuple[object, bool]:
    """The scene source and whether to shuffle it."""
    if args.data == "synthetic":
        length = max(1, settings.steps * settings.batch_size * 64)  # never exhausted (64 processes at most)
        return SyntheticScenes(length, args.size, args.size, args.synthetic_objects, seed=TRAIN_SEED + args.seed), False
    if args.data == "coco":
        if not (args.annotations and args.image_root):
            raise ValueError("--data coco needs --annotations FILE and --image-root DIR")
        from hrsam.data.coco import CocoInstances, CocoScenes

        return CocoScenes(CocoInstances(args.annotations, args.image_root)), True
    if not args.root:
        raise ValueError(f"--data {args.data} needs --root DIR")
    return _SingleObjectScenes(FolderDataset.from_layout(args.root, args.data)), True


def run_finetune(args: argparse.Namespace) -> int:
    settings = _settings(args, "finetune")
    scenes, shuffle = _finetune_scenes(args, settings)
    items = SceneItems(scenes, args.size, args.instances, args.seed)
    model = _model(args)

    def objective(m: HRSAMInteractive) -> FinetuneObjective:
        return FinetuneObjective(m, args.max_sim_iters, args.sim_decay, args.iou_weight, dice_weight=args.dice_weight)

    train(settings, model, objective, model, items, shuffle, Path(args.resume) if args.resume else None)
    return 0


def run_distill(args: argparse.Namespace) -> int:
    settings = _settings(args, "distill")
    if args.images:
        images = list_images(args.images)
    elif args.annotations and args.image_root:
        from hrsam.data.coco import CocoInstances

        coco = CocoInstances(args.annotations, args.image_root, min_area=0)
        images = [coco.image_path(i) for i in coco.image_ids]
    else:
        raise ValueError("distill needs --images DIR, or --annotations FILE with --image-root DIR")
    teacher, size = load_sam_teacher(args.teacher)
    cache = TeacherCache(args.cache, images, teacher_id(Path(args.teacher)), size, args.shard_size)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    written = cache.fill(teacher, device, args.teacher_batch, progress=sys.stderr.isatty())
    print(f"teacher cache {cache.folder}: {cache.num_shards} shards ({written} computed now), input size {size}")
    del teacher
    if args.cache_only:
        return 0
    model = _model(args)
    train(settings, model, lambda m: DistillObjective(m.encoder), model.encoder, DistillItems(cache), True,
          Path(args.resume) if args.resume else None)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run; input errors become one line on stderr (exit status 2)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, ImportError, FloatingPointError) as error:
        where = traceback.extract_tb(error.__traceback__)[-1]  # where it was raised: enough to debug a remote run
        print(f"error: {error} [{Path(where.filename).name}:{where.lineno}]", file=sys.stderr)
        return 2
