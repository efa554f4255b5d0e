"""HRSAM and HRSAM++ image encoders (docs/MODEL.md, "Encoder"; paper sections 3 and 3.6).

Forward order, as the authors' implementation (so their checkpoints give the same result):

1. 16 x 16 patch embedding plus the 14 x 14 MAE position embedding bilinearly resized to the token
   grid (its cls slot is kept for checkpoint compatibility and unused);
2. HRSAM++ only: the padded input is also bilinearly resized (align_corners=False, no antialias)
   to the square anchor image and embedded by the same layers; both token sequences are
   concatenated (main first) and processed as one packed sequence;
3. blocks 0..depth-1, Flash Swin attention with plain windows in even blocks and windows shifted
   by window // 2 in odd blocks, KV-only padding with the authors' padding token, 2D RoPE;
   a Cycle-scan before the last block of each stage (per scale for HRSAM++), and for HRSAM++ a
   multi-scale Cycle-scan over the whole sequence after it;
4. stage outputs: the main grid (HRSAM), or main and anchor tokens (anchor bilinearly upsampled
   to the main grid), a LayerNorm shared by both scales and channel concatenation (HRSAM++);
5. the neck (``hrsam.modeling.neck``).

Index plans, cu_seqlens and RoPE tables (``AttentionLayout``), the position embedding's resize taps
and HRSAM++'s anchor upsampling taps (``BilinearTaps``) are built once per (input size, batch, device) and cached, so a
fixed-size forward does no index construction and ``torch.export`` sees them as constants. Any
input size that is a multiple of 16 works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrsam.modeling.configs import EncoderConfig
from hrsam.modeling.cycle_scan import CycleScan
from hrsam.modeling.flash_swin import AttentionLayout, FlashSwinAttention
from hrsam.modeling.gelu_epilogue import linear_gelu, wants_epilogue
from hrsam.modeling.neck import Neck
from hrsam.modeling.window_plan import window_plan
from hrsam.ops.add_norm import add_layer_norm
from hrsam.ops.fusion_norm import fusion_layer_norm, upsample_rows

Grid = tuple[int, int]
# Sizes whose layouts stay cached; the pair for a 2048 input holds ~40 MB of indices and RoPE tables.
MAX_CACHED_LAYOUTS = 8


class MLP(nn.Module):
    """Transformer feed-forward: Linear -> GELU -> Linear (fc1 + GELU one GEMM in engines: ``gelu_epilogue``)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        hidden = linear_gelu(x, self.fc1) if wants_epilogue(x) else self.act(self.fc1(x))
        return self.fc2(hidden)


class Block(nn.Module):
    """Pre-norm transformer block with Flash Swin window attention on packed tokens [T, C]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = FlashSwinAttention(dim, num_heads, padding="token")
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, layout: AttentionLayout) -> Tensor:
        return self.chained(x, layout)[0]

    def chained(
        self, x: Tensor, layout: AttentionLayout, normed: Tensor | None = None, next_norm: nn.LayerNorm | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(output, ``next_norm`` of it or None); ``normed``: ``norm1(x)`` when the previous block made it.

        Every residual add is made with the LayerNorm that reads it (``hrsam.ops.add_norm``: one
        kernel in the engines): x + attn(norm1(x)) with norm2, whose attention rows come in window
        order and whose gather back to raster order fuses in too, and x + mlp(...) with
        ``next_norm``, the norm the encoder runs next on the output (``HRSAMEncoder._next_norm``).
        """
        normed = self.norm1(x) if normed is None else normed
        x, hidden = add_layer_norm(x, *self.attn.window_rows(normed, layout), self.norm2)
        if next_norm is None:
            return x + self.mlp(hidden), None
        return add_layer_norm(x, self.mlp(hidden), None, next_norm)


class HRSAMEncoder(nn.Module):
    """HRSAM (``config.anchor_size`` None) or HRSAM++ (anchor image of that size) encoder.

    Input: [B, 3, H, W] normalised, padded images, H and W multiples of the patch size.
    Output: [B, out_dim, H / 16, W / 16].
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        dim, stages = config.embed_dim, len(config.stage_ends)
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pretrain_grid**2, dim))
        self.blocks = nn.ModuleList(Block(dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.scans = nn.ModuleList(self._scan() for _ in range(stages))
        if config.multi_scale:
            self.ms_scans = nn.ModuleList(self._scan() for _ in range(stages))
            self.fusion_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(stages))
        scales = 2 if config.multi_scale else 1
        self.neck = Neck(scales * dim, config.out_dim, stages)
        self._layouts: dict[tuple, SizePlan] = {}
        self.portable = False
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def _scan(self) -> CycleScan:
        return CycleScan(self.config.embed_dim, state_dim=self.config.state_dim, repeats=self.config.scan_repeats)

    def set_portable(self, enabled: bool) -> None:
        """Compute with standard tensor ops only (for ``--portable`` ONNX export); same function.

        Attention runs as padded dense windows (``hrsam.modeling.dense_windows``) and every
        Cycle-scan as the chunked reference scan, so an exported graph has no ``hrsam`` nodes.
        """
        self.portable = bool(enabled)
        for module in self.modules():
            if isinstance(module, CycleScan):
                module.portable = self.portable

    def grids(self, height: int, width: int) -> tuple[Grid, ...]:
        """Token grids of one image: the main grid, then the anchor grid for HRSAM++."""
        patch = self.config.patch_size
        if height <= 0 or width <= 0 or height % patch or width % patch:
            raise ValueError(
                f"input size {height} x {width} must be positive multiples of {patch}; resize and pad "
                "the image first (HRSAMPredictor does)"
            )
        grids: tuple[Grid, ...] = ((height // patch, width // patch),)
        if self.config.anchor_size is not None:
            side = self.config.anchor_size // patch
            grids += ((side, side),)
        return grids

    def prepare(self, height: int, width: int, batch: int = 1, device: torch.device | str = "cpu") -> None:
        """Build and cache the attention layouts for this input size (done by the first forward).

        Call it before ``torch.export`` / ``torch.compile`` so the layouts are constants there.
        """
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # the key must match inputs' "cuda:N"
            device = torch.device("cuda", torch.cuda.current_device())
        self._size_plan(self.grids(height, width), batch, device)

    def _size_plan(self, grids: tuple[Grid, ...], batch: int, device: torch.device) -> SizePlan:
        """Layouts (and HRSAM++'s anchor taps) for these grids, built once per (grids, batch, device)."""
        key = (grids, batch, str(device), self.portable)
        if key not in self._layouts:
            if torch.compiler.is_compiling():
                raise RuntimeError(
                    f"no attention layout for grids {grids}, batch {batch} on {device}: call "
                    "encoder.prepare(height, width, batch, device) before torch.export / torch.compile"
                )
            if len(self._layouts) >= MAX_CACHED_LAYOUTS:  # drop the oldest size (dicts keep order)
                del self._layouts[next(iter(self._layouts))]
            window, head_dim = self.config.window, self.config.head_dim
            plain, shifted = (
                AttentionLayout.build(
                    window_plan(grids, window, shift, True, batch), head_dim, device, dense=self.portable
                )
                for shift in (0, window // 2)
            )
            taps = BilinearTaps.build(grids[1], grids[0], device) if self.config.multi_scale else None
            side = (self.config.pretrain_grid,) * 2
            pos_taps = tuple(None if grid == side else BilinearTaps.build(side, grid, device) for grid in grids)
            self._layouts[key] = SizePlan(plain, shifted, taps, pos_taps)
        return self._layouts[key]

    def _patchify(self, images: Tensor) -> Tensor:
        """``self.patch_embed`` (kernel = stride = patch) as one GEMM over unfolded patches -> [B, h * w, C].

        Why not the convolution: with stride equal to the kernel it is exactly this matrix product,
        and cuDNN's implicit-GEMM kernel for it took 1.13 ms for HRSAM++'s two calls at 2048 (bf16,
        H200; docs/BENCHMARKS.md, encoder profile) for ~20 GFLOP of work. The weights stay the
        convolution's, so checkpoints are unchanged.
        """
        patch = self.config.patch_size
        batch, channels, height, width = images.shape
        h, w = height // patch, width // patch
        patches = images.reshape(batch, channels, h, patch, w, patch).permute(0, 2, 4, 1, 3, 5)
        weight = self.patch_embed.weight.reshape(self.patch_embed.out_channels, -1)
        return F.linear(patches.reshape(batch, h * w, -1), weight, self.patch_embed.bias)

    def _embed(self, images: Tensor, pos_taps: BilinearTaps | None) -> Tensor:
        """Patch embedding + resized position embedding -> tokens [B, h * w, C] in raster order.

        ``pos_taps`` resize the 14 x 14 grid to the token grid (None: the grids are equal). The
        resize runs channels last (``upsample_channels_last``, F.interpolate's arithmetic) from taps
        built once per size: the channels-first ``F.interpolate`` and the transpose after it cost the
        compiled HRSAM 2048 encoder a 53 us resize kernel and a looped 106 us first LayerNorm reading
        the transposed rows (docs/BENCHMARKS.md, twenty-first session).
        """
        x = self._patchify(images)
        side = self.config.pretrain_grid
        pos = self.pos_embed[:, 1:].reshape(1, side, side, -1)
        if pos_taps is not None:
            pos = upsample_channels_last(pos, pos_taps)
        return x + pos.flatten(1, 2).to(x.dtype)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        batch, height, width = int(images.shape[0]), int(images.shape[2]), int(images.shape[3])
        grids = self.grids(height, width)
        plan = self._size_plan(grids, batch, images.device)
        tokens = [self._embed(images, plan.pos_taps[0])]
        if self.config.anchor_size is not None:
            size = (self.config.anchor_size, self.config.anchor_size)
            anchor = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            tokens.append(self._embed(anchor, plan.pos_taps[1]))
        x = torch.cat(tokens, dim=1)
        channels = x.shape[-1]
        lengths = [h * w for h, w in grids]
        segments = lengths if self.config.multi_scale else None
        x = x.reshape(-1, channels)
        features, normed = [], None
        for i, block in enumerate(self.blocks):
            stage = self._stage_of(i)
            if stage is not None:
                x, normed = _scan_rows(self.scans[stage], x, normed, batch, segments), None
            x, normed = block.chained(x, plan.plain if i % 2 == 0 else plan.shifted, normed, self._next_norm(i))
            if stage is not None:
                if self.config.multi_scale:
                    x, normed = _scan_rows(self.ms_scans[stage], x, normed, batch), None
                features.append(self._stage_output(x.view(batch, -1, channels), grids, stage, plan.anchor_taps))
        return self.neck(features)

    def _next_norm(self, block: int) -> nn.LayerNorm | None:
        """The LayerNorm that reads ``block``'s output first: HRSAM++'s multi-scale scan's after a stage's
        last block, else the next stage's Cycle-scan's or the next block's; None after the last block."""
        stage, following = self._stage_of(block), block + 1
        if stage is not None and self.config.multi_scale:
            return self.ms_scans[stage].in_norm
        if following == len(self.blocks):
            return None
        next_stage = self._stage_of(following)
        return self.blocks[following].norm1 if next_stage is None else self.scans[next_stage].in_norm

    def _stage_of(self, block: int) -> int | None:
        """Index of the stage that ``block`` ends, or None."""
        ends = self.config.stage_ends
        return ends.index(block) if block in ends else None

    def _stage_output(self, x: Tensor, grids: tuple[Grid, ...], stage: int, anchor_taps: BilinearTaps | None) -> Tensor:
        """[B, L, C] -> channels-last stage feature [B, h, w, C] (HRSAM) or [B, h, w, 2C] (HRSAM++:
        ``hrsam.ops.fusion_norm``, one kernel in the engines)."""
        (h, w) = grids[0]
        if anchor_taps is None:
            return x[:, : h * w].unflatten(1, (h, w))
        return fusion_layer_norm(x, grids[0], anchor_taps.rows, anchor_taps.cols, grids[1], self.fusion_norms[stage])


def _scan_rows(
    scan: CycleScan, x: Tensor, normed: Tensor | None, batch: int, segments: list[int] | None = None
) -> Tensor:
    """``scan`` over packed rows [B * L, C] -> [B * L, C]; ``normed``: its in_norm of x, or None."""
    channels = x.shape[-1]
    rows = None if normed is None else normed.view(batch, -1, channels)
    return scan(x.view(batch, -1, channels), segments, rows).reshape(-1, channels)


def _axis_taps(in_size: int, out_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per output position along one axis: (lower source index, upper source index, upper weight).

    ``F.interpolate(mode="bilinear", align_corners=False)``'s sampling without antialias: source
    coordinate (i + 0.5) * in / out - 0.5, clamped at 0; the upper tap stops at the last index.
    """
    scale = in_size / out_size
    source = ((torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    lower = source.long()  # floor, as source >= 0
    upper = (lower + 1).clamp(max=in_size - 1)
    return lower, upper, source - lower


@dataclass(frozen=True)
class BilinearTaps:
    """A bilinear resize's source rows / columns and weights, built once per size (so exported
    graphs hold them as constants, like the attention layouts)."""

    rows: tuple[Tensor, Tensor, Tensor]
    cols: tuple[Tensor, Tensor, Tensor]

    @classmethod
    def build(cls, source: Grid, size: Grid, device: torch.device) -> BilinearTaps:
        """Taps resizing a ``source`` grid (h, w) to ``size``."""
        return cls(_axis_taps(source[0], size[0], device), _axis_taps(source[1], size[1], device))


class SizePlan(NamedTuple):
    """What one input size needs besides the weights: attention layouts, HRSAM++'s anchor taps and
    the position embedding's taps per grid (None where the grid is the 14 x 14 pretraining grid)."""

    plain: AttentionLayout
    shifted: AttentionLayout
    anchor_taps: BilinearTaps | None
    pos_taps: tuple[BilinearTaps | None, ...]


def upsample_channels_last(grid: Tensor, taps: BilinearTaps) -> Tensor:
    """Bilinear resize (align_corners=False) of a channels-last grid [B, h, w, C] by ``taps``.

    Why not ``F.interpolate``: it needs channels-first input, and in the compiled HRSAM++ encoder the
    permutes around it made Inductor's fused upsample + LayerNorm kernel write its intermediates
    channel-major, a stride of h x w elements between neighbouring channels (~0.3 ms a stage at a
    2048 input, docs/BENCHMARKS.md). Gathering whole rows of channels keeps every access contiguous.
    Same arithmetic as the interpolation (``hrsam.ops.fusion_norm.upsample_rows``: two linear blends
    in float32), result in ``grid``'s dtype.
    """
    return upsample_rows(grid, taps.rows, taps.cols)
