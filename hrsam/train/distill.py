"""SAM distillation (docs/MODEL.md, training): MSE between the student's and SAM's image embeddings.

1. ``load_sam_teacher``: the image encoder of any ``segment_anything`` checkpoint (ViT-H / L / B, or
   any SAM-shaped ``ImageEncoderViT``), its hyper-parameters read from the weights' shapes.
2. ``TeacherCache``: the teacher's embeddings of every training image, computed once into float16
   safetensors shards of ``shard_size`` images under one folder; ``index.json`` fixes the image list
   and the teacher, finished shards are skipped, so an interrupted precomputation resumes.
3. ``DistillItems`` + ``DistillObjective``: the student sees the image the teacher saw (resized,
   normalised, padded to the teacher's input size; ``hrsam.predictor.preprocess`` for the teacher,
   ``batches.image_to_tensors`` + ``normalise`` for the student) and learns its embedding; a
   student grid other than the teacher's gets the teacher embedding resized.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import Dataset

from hrsam.data.folders import IMAGE_SUFFIXES, read_rgb
from hrsam.modeling.sam_decoder import sam_modeling
from hrsam.predictor import preprocess
from hrsam.train.batches import image_to_tensors


def _read_checkpoint(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - one line naming the file, not torch's advice
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({reason[:160]})") from None


def _encoder_weights(state: dict, path: Path) -> dict[str, Tensor]:
    """The ``image_encoder.*`` tensors of a SAM checkpoint (or a bare image-encoder state dict)."""
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a segment_anything SAM checkpoint (not a state dict of tensors)")
    prefixed = {k.removeprefix("image_encoder."): v for k, v in state.items() if k.startswith("image_encoder.")}
    weights = prefixed or state
    if "patch_embed.proj.weight" not in weights or "neck.0.weight" not in weights:
        raise ValueError(
            f"{path} is not a segment_anything SAM checkpoint: no image_encoder.patch_embed / neck weights "
            "(expected e.g. sam_vit_h_4b8939.pth)"
        )
    return weights


def load_sam_teacher(path: str | Path) -> tuple[nn.Module, int]:
    """SAM's ``ImageEncoderViT`` with the weights of ``path``, and its input size (1024 for SAM)."""
    path = Path(path)
    weights = _encoder_weights(_read_checkpoint(path), path)
    embed_dim, _, patch, _ = weights["patch_embed.proj.weight"].shape
    grid = weights["pos_embed"].shape[1] if "pos_embed" in weights else 64
    depth = 1 + max(int(m.group(1)) for k in weights if (m := re.match(r"blocks\.(\d+)\.", k)))
    rel_pos = {i: weights[key].shape for i in range(depth) if (key := f"blocks.{i}.attn.rel_pos_h") in weights}
    head_dim = rel_pos[0][1] if rel_pos else 64
    global_blocks = tuple(i for i, shape in rel_pos.items() if shape[0] == 2 * grid - 1)
    windows = [(shape[0] + 1) // 2 for i, shape in rel_pos.items() if i not in global_blocks]
    encoder = sam_modeling.ImageEncoderViT(
        img_size=grid * patch, patch_size=patch, embed_dim=embed_dim, depth=depth, num_heads=embed_dim // head_dim,
        mlp_ratio=weights["blocks.0.mlp.lin1.weight"].shape[0] / embed_dim, out_chans=weights["neck.0.weight"].shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in weights, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=bool(rel_pos), window_size=windows[0] if windows else 0, global_attn_indexes=global_blocks,
    )
    try:
        encoder.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(f"{path}: SAM image-encoder weights do not load ({str(error).splitlines()[0]})") from None
    return encoder.eval().requires_grad_(False), grid * patch


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted: the training set of distillation."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


class TeacherCache:
    """Teacher embeddings on disk: ``shard-NNNNN.safetensors`` with an ``embeddings`` [n, C, h, w] fp16."""

    def __init__(self, folder: str | Path, images: list[Path], teacher_id: str, size: int, shard_size: int) -> None:
        self.folder, self.images, self.size, self.shard_size = Path(folder), images, size, shard_size
        listing = hashlib.sha256("\n".join(map(str, images)).encode()).hexdigest()
        index = {"teacher": teacher_id, "size": size, "shard_size": shard_size, "images_sha256": listing,
                 "count": len(images)}
        index_path = self.folder / "index.json"
        if index_path.is_file():
            existing = json.loads(index_path.read_text())
            if existing != index:
                different = sorted(k for k in index if existing.get(k) != index[k])
                raise ValueError(f"the teacher cache {self.folder} was made for other {', '.join(different)}: "
                                 "use another --cache folder")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            index_path.write_text(json.dumps(index, indent=1))

    @property
    def num_shards(self) -> int:
        return -(-len(self.images) // self.shard_size)

    def shard_path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}.safetensors"

    def missing_shards(self) -> list[int]:
        return [s for s in range(self.num_shards) if not self.shard_path(s).is_file()]

    @torch.no_grad()
    def fill(self, teacher: nn.Module, device: torch.device, batch_size: int, progress: bool = False) -> int:
        """Compute the missing shards with ``teacher``; returns how many were written."""
        teacher = teacher.to(device)
        missing = self.missing_shards()
        shards = missing
        if progress:
            from tqdm import tqdm

            shards = tqdm(missing, desc="teacher embeddings", unit="shard")
        for shard in shards:
            paths = self.images[shard * self.shard_size : (shard + 1) * self.shard_size]
            outputs = []
            for start in range(0, len(paths), batch_size):
                images = [preprocess(read_rgb(p), self.size, device) for p in paths[start : start + batch_size]]
                with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                    outputs.append(teacher(torch.cat(images)).half().cpu())
            target = self.shard_path(shard)
            temporary = target.with_name(target.name + ".tmp")
            save_file({"embeddings": torch.cat(outputs).contiguous()}, str(temporary))
            temporary.replace(target)
        return len(missing)

    def embedding(self, index: int) -> Tensor:
        shard, row = divmod(index, self.shard_size)
        with safe_open(str(self.shard_path(shard)), framework="pt") as file:
            return file.get_slice("embeddings")[row : row + 1][0]


class DistillItems(Dataset):
    """(image preprocessed to the teacher's size, teacher embedding) pairs, keyed (epoch, index)."""

    def __init__(self, cache: TeacherCache) -> None:
        if cache.missing_shards():
            raise ValueError(f"the teacher cache {cache.folder} is incomplete: run distill again to fill it")
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache.images)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Tensor]:
        _, index = key
        image, region = image_to_tensors(read_rgb(self.cache.images[index]), self.cache.size)
        return {"image": image, "region": region, "teacher": self.cache.embedding(index)}


class DistillObjective(nn.Module):
    """MSE between the student encoder's embedding and the teacher's (resized to the student's grid)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, batch: dict[str, Tensor], generators: object = None) -> tuple[Tensor, dict[str, Tensor]]:
        student = self.encoder(batch["image"]).float()
        teacher = batch["teacher"].float()
        if teacher.shape[-2:] != student.shape[-2:]:
            teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.mse_loss(student, teacher)
        cosine = F.cosine_similarity(student.flatten(1), teacher.flatten(1)).mean()
        return loss, {"cosine": cosine.detach()}


def teacher_id(path: Path) -> str:
    """Identify a teacher checkpoint by name and size (hashing gigabytes would take minutes)."""
    return f"{path.name}:{path.stat().st_size}"

