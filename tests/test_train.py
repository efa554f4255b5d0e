"""Training: objectives learn, the loop resumes exactly, checkpoints and bad input give clear errors.

Most tests use ``micro_config`` (2 blocks of 32 channels, a 32-wide decoder) so that a step takes a
fraction of a second on two CPU cores; ``test_tiny_config_finetune_steps_reduce_loss`` runs the
real ``hrsam_tiny`` (slow).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from hrsam.checkpoint import load_model
from hrsam.data import SyntheticScenes
from hrsam.evaluation.clicks import distance_to_boundary
from hrsam.modeling.configs import DecoderConfig, EncoderConfig, ModelConfig
from hrsam.modeling.interactive import HRSAMInteractive, build_model
from hrsam.modeling.sam_decoder import sam_modeling
from hrsam.train.batches import ResumableOrder, SceneItems, normalise
from hrsam.train.click_sim import distance_transform, initial_clicks, next_clicks, sample_iterations
from hrsam.train.distill import DistillItems, DistillObjective, TeacherCache, load_sam_teacher
from hrsam.train.finetune import FinetuneObjective, normalized_focal_loss, soft_dice_loss
from hrsam.train.optim import Schedule, layer_id, param_groups
from hrsam.train.runtime import enable_gradient_checkpointing
from hrsam.train.state import split_file
from hrsam.train.trainer import LoopSettings, train

SIZE = 64


def micro_config(name: str = "micro") -> ModelConfig:
    """The model's full structure at toy width: fast enough for many optimisation steps on a CPU."""
    encoder = EncoderConfig(embed_dim=32, depth=2, num_heads=2, stage_ends=(1,), state_dim=4, window=4, out_dim=32)
    decoder = DecoderConfig(prompt_dim=32, depth=1, num_heads=2, mlp_dim=64, iou_head_hidden_dim=32, mask_in_chans=4)
    return ModelConfig(name, encoder, decoder)


def micro_model(seed: int = 0) -> HRSAMInteractive:
    torch.manual_seed(seed)
    return HRSAMInteractive(micro_config())


def _batch(count: int = 4, instances: int = 2) -> dict[str, torch.Tensor]:
    items = SceneItems(SyntheticScenes(16, 96, 96, objects=3, seed=3), SIZE, instances, seed=0)
    batch = default_collate([items[(0, i)] for i in range(count)])
    batch["image"] = normalise(batch["image"], batch["region"])
    return batch


def _generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)


def _optimise(objective: torch.nn.Module, batch: dict, steps: int, lr: float) -> list[float]:
    optimizer = torch.optim.AdamW(objective.parameters(), lr)
    losses = []
    for _ in range(steps):
        loss, _ = objective(batch, _generators(5))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def test_finetune_steps_reduce_loss_on_a_fixed_batch() -> None:
    losses = _optimise(FinetuneObjective(micro_model()), _batch(), steps=8, lr=2e-3)
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.slow
def test_tiny_config_finetune_steps_reduce_loss() -> None:
    torch.manual_seed(0)
    losses = _optimise(FinetuneObjective(build_model("hrsam_tiny")), _batch(2, 1), steps=4, lr=2e-4)
    assert losses[-1] < 0.8 * losses[0], losses


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    batch = _batch(2, 1)
    grads = []
    for checkpointed in (False, True):
        model = micro_model()
        if checkpointed:
            enable_gradient_checkpointing(model)
        loss, _ = FinetuneObjective(model)(batch, _generators(5))
        loss.backward()
        grads.append([p.grad for p in model.encoder.parameters()])
        assert list(model.state_dict()) == list(micro_model().state_dict())  # names unchanged
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_vmapped_decoder_equals_per_image_calls() -> None:
    model = micro_model()
    decode = torch.func.vmap(model.decoder)
    emb = torch.randn(3, 1, 32, 4, 4)
    coords, labels = torch.rand(3, 2, 3, 2) * SIZE, torch.tensor([1.0, 0.0, -1.0]).expand(3, 2, 3)
    prompt, has = torch.randn(3, 2, 1, 16, 16), torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    iou, masks = decode(emb, coords, labels, prompt, has)
    for b in range(3):
        ref_iou, ref_masks = model.decoder(emb[b], coords[b], labels[b], prompt[b], has[b])
        torch.testing.assert_close(iou[b], ref_iou, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(masks[b], ref_masks, atol=1e-5, rtol=1e-5)


def test_distance_transform_matches_scipy() -> None:
    region = torch.rand(4, 23, 31, generator=torch.Generator().manual_seed(0)) > 0.25
    expected = np.stack([distance_to_boundary(r.numpy()) for r in region])
    np.testing.assert_allclose(distance_transform(region).numpy(), expected, atol=1e-5)


def test_clicks_go_to_the_innermost_error_pixel() -> None:
    gt = torch.zeros(2, 15, 15, dtype=torch.bool)
    gt[:, 2:13, 2:13] = True  # an 11 x 11 square centred on (7, 7)
    pred = torch.zeros_like(gt)
    pred[1] = True  # second prompt: everything predicted, the false positives are the frame
    yx, labels = next_clicks(gt, pred, torch.zeros_like(gt))
    assert yx[0].tolist() == [7, 7] and labels[0] == 1
    assert labels[1] == 0 and not gt[1, yx[1, 0], yx[1, 1]]
    yx, labels = next_clicks(gt, gt.clone(), torch.zeros_like(gt))
    assert labels.tolist() == [-1.0, -1.0]  # nothing left to correct


def test_initial_clicks_fall_on_the_right_side_and_empty_objects_get_no_point() -> None:
    gt = torch.zeros(2, 20, 20, dtype=torch.bool)
    gt[0, 5:9, 3:17] = True
    yx, labels = initial_clicks(gt, 3, 2, torch.Generator().manual_seed(0))
    assert labels.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0], [-1.0] * 5]
    assert [bool(gt[0, y, x]) for y, x in yx[0].tolist()] == [True, True, True, False, False]


def test_iteration_count_follows_the_geometric_weights() -> None:
    generator = torch.Generator().manual_seed(0)
    counts = np.bincount([sample_iterations(20, 0.6, generator) for _ in range(4000)], minlength=20)
    assert counts.max() == counts[0] and counts[19] < 5
    assert abs(counts[1] / counts[0] - 0.6) < 0.08


def test_normalized_focal_loss_prefers_the_right_mask() -> None:
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    weight = torch.ones_like(target)
    good = normalized_focal_loss((target * 2 - 1) * 4, target, weight)
    bad = normalized_focal_loss(-(target * 2 - 1) * 4, target, weight)
    assert good < 0.05 < bad


def test_soft_dice_loss_is_zero_for_the_right_mask_and_near_one_for_its_complement() -> None:
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    weight = torch.ones_like(target)
    assert soft_dice_loss((target * 2 - 1) * 20, target, weight) < 0.01
    assert soft_dice_loss(-(target * 2 - 1) * 20, target, weight) > 0.95


def test_layer_ids_and_groups_cover_every_parameter_once() -> None:
    model = build_model("hrsam_tiny")
    assert layer_id("encoder.patch_embed.weight", 12, (2, 5, 8, 11)) == 0
    assert layer_id("encoder.blocks.4.attn.qkv.weight", 12, (2, 5, 8, 11)) == 5
    assert layer_id("encoder.scans.1.in_proj.weight", 12, (2, 5, 8, 11)) == 6  # before block 5
    assert layer_id("decoder.mask_decoder.iou_token.weight", 12, (2, 5, 8, 11)) == 13
    groups = param_groups(model, model, 1e-4, 0.9, 0.05)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    scales = {g["layer"]: g["lr_scale"] for g in groups}
    assert scales[13] == 1.0 and scales[0] == pytest.approx(0.9**13)


def test_schedule_warms_up_then_decays_to_zero() -> None:
    schedule = Schedule(1e-3, total_steps=100, warmup_steps=10, warmup_start=1e-6)
    rates = [schedule(step) for step in range(101)]
    assert rates[0] == pytest.approx(1e-6) and rates[10] == pytest.approx(1e-3) and rates[100] == 0.0
    assert all(a <= b for a, b in zip(rates[:10], rates[1:11], strict=True))
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))


def test_resumable_order_skips_exactly_what_was_consumed_and_shards_disjointly() -> None:
    def first(order: ResumableOrder, count: int) -> list:
        iterator = iter(order)
        return [next(iterator) for _ in range(count)]

    full = first(ResumableOrder(10, 0, 1, shuffle=True, seed=1), 25)
    assert first(ResumableOrder(10, 0, 1, shuffle=True, seed=1, start=13), 12) == full[13:]
    assert {i for _, i in full[:10]} == set(range(10)) and full[:10] != full[10:20]
    shards = [set(first(ResumableOrder(10, rank, 2, shuffle=True, seed=1), 5)) for rank in (0, 1)]
    assert not shards[0] & shards[1]


def _settings(tmp_path: Path, **changes: object) -> LoopSettings:
    values = dict(kind="finetune", out=tmp_path / "out", steps=4, batch_size=2, lr=1e-3, warmup_steps=1,
                  precision="fp32", workers=0, log_every=1, checkpoint_every=1, progress_bar=False, device="cpu")
    values.update(changes)
    return LoopSettings(**values)


def _train(settings: LoopSettings, model: HRSAMInteractive, resume: Path | None = None) -> None:
    items = SceneItems(SyntheticScenes(64, 80, 80, objects=2, seed=1), SIZE, 2, seed=0)
    train(settings, model, functools.partial(FinetuneObjective, max_iterations=3), model, items, False, resume)


def test_resume_from_state_continues_bit_exactly(tmp_path: Path) -> None:
    straight = micro_model()
    _train(_settings(tmp_path / "a"), straight)
    interrupted = micro_model()
    _train(_settings(tmp_path / "b", stop_at=2), interrupted)
    resumed = micro_model(seed=123)  # different initial weights: everything must come from the state
    _train(_settings(tmp_path / "b"), resumed, resume=tmp_path / "b" / "out" / "state.pt")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    rows = (tmp_path / "b" / "out" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3", "4"]


def test_outputs_load_as_models_and_resume_portably(tmp_path: Path) -> None:
    model = micro_model()
    _train(_settings(tmp_path, steps=2), model)
    out = tmp_path / "out"
    assert {"metrics.csv", "train.log", "weights_fp32.safetensors", "model_fp16.safetensors"} <= {
        p.name for p in out.iterdir()}
    release = load_model(checkpoint=out / "model_fp16.safetensors").model
    for (name, a), b in zip(model.state_dict().items(), release.state_dict().values(), strict=True):
        torch.testing.assert_close(a.half().float(), b, msg=name)
    _train(_settings(tmp_path, steps=3), micro_model(), resume=out / "weights_fp32.safetensors")
    assert "fresh optimizer" in (out / "train.log").read_text()


def test_resume_file_of_another_config_is_refused(tmp_path: Path) -> None:
    _train(_settings(tmp_path, steps=1), micro_model())
    torch.manual_seed(0)
    other = HRSAMInteractive(ModelConfig("other", EncoderConfig(embed_dim=16, depth=2, num_heads=1, stage_ends=(1,),
                                                                state_dim=4, window=4, out_dim=32),
                                         micro_config().decoder))
    with pytest.raises(ValueError, match="another configuration"):
        _train(_settings(tmp_path, steps=2), other, resume=tmp_path / "out" / "state.pt")
    with pytest.raises(ValueError, match="distill run"):
        _train(_settings(tmp_path, steps=2, kind="distill"), micro_model(), resume=tmp_path / "out" / "state.pt")


def test_split_file_parts_join_to_the_original(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3 * 2**20 + 5)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    parts = split_file(path, 1)
    assert len(parts) == 4 and not path.exists()
    assert b"".join(p.read_bytes() for p in sorted(parts)) == data


def _sam_shaped_teacher(path: Path) -> torch.nn.Module:
    """A random SAM ImageEncoderViT at toy size (32 output channels, like micro_config), saved like SAM."""
    torch.manual_seed(1)
    encoder = sam_modeling.ImageEncoderViT(img_size=SIZE, embed_dim=32, depth=2, num_heads=2, out_chans=32,
                                           use_rel_pos=True, window_size=2, global_attn_indexes=(1,),
                                           norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))
    state = {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 32)
    torch.save(state, path)
    return encoder.eval()


def _images(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_teacher_from_a_sam_checkpoint_and_resumable_cache(tmp_path: Path) -> None:
    reference = _sam_shaped_teacher(tmp_path / "sam.pth")
    teacher, size = load_sam_teacher(tmp_path / "sam.pth")
    assert size == SIZE
    x = torch.randn(1, 3, SIZE, SIZE)
    torch.testing.assert_close(teacher(x), reference(x))
    images = _images(tmp_path / "images", 5)
    cache = TeacherCache(tmp_path / "cache", images, "sam.pth", size, shard_size=2)
    assert cache.fill(teacher, torch.device("cpu"), batch_size=2) == 3
    cache.shard_path(1).unlink()  # an interrupted precomputation
    assert cache.fill(teacher, torch.device("cpu"), batch_size=2) == 1
    assert cache.embedding(4).shape == (32, 4, 4)
    with pytest.raises(ValueError, match="made for other count, images_sha256"):
        TeacherCache(tmp_path / "cache", images[:4], "sam.pth", size, shard_size=2)


def test_distillation_steps_reduce_the_mse(tmp_path: Path) -> None:
    _sam_shaped_teacher(tmp_path / "sam.pth")
    teacher, size = load_sam_teacher(tmp_path / "sam.pth")
    cache = TeacherCache(tmp_path / "cache", _images(tmp_path / "images", 4), "t", size, shard_size=4)
    cache.fill(teacher, torch.device("cpu"), batch_size=4)
    items = DistillItems(cache)
    batch = default_collate([items[(0, i)] for i in range(4)])
    batch["image"] = normalise(batch["image"], batch["region"])
    losses = _optimise(DistillObjective(micro_model().encoder), batch, steps=10, lr=3e-3)
    assert losses[-1] < 0.7 * losses[0], losses


def test_a_checkpoint_that_is_not_sams_is_refused(tmp_path: Path) -> None:
    torch.save(build_model("hrsam_tiny").state_dict(), tmp_path / "ours.pth")
    with pytest.raises(ValueError, match="not a segment_anything SAM checkpoint"):
        load_sam_teacher(tmp_path / "ours.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_sam_teacher(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError):
        load_sam_teacher(tmp_path / "missing.pth")


def test_cli_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hrsam.train.cli import main

    assert main(["finetune", "--out", str(tmp_path), "--data", "davis"]) == 2
    assert "needs --root" in capsys.readouterr().err
    assert main(["distill", "--out", str(tmp_path), "--teacher", str(tmp_path / "no.pth"), "--cache",
                 str(tmp_path / "c"), "--images", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def _ddp_worker(rank: int, folder: str, port: int) -> None:
    import os

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model = micro_model()
    _train(_settings(Path(folder), steps=2, batch_size=1), model)
    torch.save(model.state_dict(), Path(folder) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_keeps_replicas_identical(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(str(tmp_path), port), nprocs=2)
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["decoder.mask_decoder.iou_token.weight"],
                           micro_model().state_dict()["decoder.mask_decoder.iou_token.weight"])
    assert "x 2, 2 samples/step" in (tmp_path / "out" / "train.log").read_text()
