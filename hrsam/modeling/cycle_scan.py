"""Cycle-scan module (paper 3.5; docs/MODEL.md, "Encoder"): a Mamba-style selective scan over the tokens.

The token sequence (global raster order) is tiled ``repeats`` times and scanned once, so every
token's state has seen the whole image by the last copy; the copies' outputs are mixed by a
learnable per-channel weight ``gamma``. No conv1d, expand 1, one group, state size N.

HRSAM++ uses this one class twice per stage: the per-scale scan passes ``segments`` (token
counts of the main map and the 512-px anchor map, each scanned on its own) and the multi-scale
scan calls it without segments over the concatenated sequence. The two differ only in how the
sequence is cut, so no second class is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrsam.ops.selective_scan import cycle, selective_scan
from hrsam.ops.selective_scan.reference import selective_scan_chunked

# Steps per chunk of the portable (standard-op) scan: the exported graph unrolls L / 2048 chunks
# of an 11-step doubling scan, each holding [batch, dim, N, 2048] intermediates.
PORTABLE_SCAN_CHUNK = 2048

# The authors' parameter names (suffix after the module prefix) -> ours. Everything not listed
# keeps its name: in_norm.*, ssm_proj.*, gamma, out_norm.*, out_proj.*.
AUTHOR_KEY_MAP: dict[str, str] = {
    "in_proj.0.weight": "in_proj.weight",
    "in_proj.0.bias": "in_proj.bias",
    "ssm_proj_bias": "dt_bias",
    "As_log": "A_log",
    "Ds": "D",
}


def inverse_softplus_dt(
    dim: int, dt_min: float, dt_max: float, dt_init_floor: float, generator: torch.Generator | None = None
) -> Tensor:
    """dt bias such that softplus(bias) is log-uniform in [dt_min, dt_max] (floored), as Mamba."""
    log_dt = torch.rand(dim, generator=generator) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = torch.exp(log_dt).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


def kernel_reads_views(u: Tensor) -> bool:
    """Whether ``hrsam::cycle_scan``'s kernel for u's device reads u, dt, B and C as strided views in
    their own dtype (the Triton kernels, CUDA); the CPU C kernel wants contiguous float32 copies."""
    return u.is_cuda


class CycleScan(nn.Module):
    """x [batch, L, dim] -> x + out_proj(z * out_norm(scan(x))), same shape and dtype.

    Parameters (fp32 for the scan ones): in_norm, in_proj (dim -> 2 dim, SiLU after), ssm_proj
    (dim -> dim + 2 N: dt, B, C), dt_bias [dim], A_log [dim, N] (S4D-real log(1..N)), D [dim]
    (ones), gamma [dim, repeats, 1] (ones), out_norm, out_proj (dim -> dim).
    """

    def __init__(
        self,
        dim: int,
        state_dim: int = 32,
        repeats: int = 3,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.state_dim = state_dim
        self.repeats = repeats
        self.in_norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * dim)
        self.ssm_proj = nn.Linear(dim, dim + 2 * state_dim)
        self.dt_bias = nn.Parameter(inverse_softplus_dt(dim, dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(torch.arange(1, state_dim + 1, dtype=torch.float32).log().repeat(dim, 1))
        self.D = nn.Parameter(torch.ones(dim))
        self.gamma = nn.Parameter(torch.ones(dim, repeats, 1))
        self.out_norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, dim)
        self.portable = False  # set by HRSAMEncoder.set_portable: the chunked reference, standard ops
        # Like Mamba: the dt rows of ssm_proj start small and uniform, the bias at zero (the dt
        # offset lives in dt_bias); A_log and D are excluded from weight decay by optimisers
        # that honour the flag.
        with torch.no_grad():
            bound = dim**-0.5
            self.ssm_proj.weight[:dim].uniform_(-bound, bound)
            self.ssm_proj.bias.zero_()
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def forward(self, x: Tensor, segments: Sequence[int] | None = None, normed: Tensor | None = None) -> Tensor:
        """Scan the whole sequence, or each of ``segments`` (token counts summing to L) alone.

        ``normed``: ``in_norm(x)`` when the caller computed it with the residual add that made x
        (``hrsam.ops.add_norm``, the encoder's blocks).
        """
        length = x.shape[1]
        if segments is not None and sum(segments) != length:
            raise ValueError(f"CycleScan: segments {list(segments)} sum to {sum(segments)}, not L={length}")
        if normed is not None and normed.shape != x.shape:
            raise ValueError(f"CycleScan: normed input {tuple(normed.shape)} is not x's {tuple(x.shape)}")
        # SiLU on each half where it is read: u is materialised for ssm_proj and the scan, z's SiLU
        # fuses into the gate after out_norm. One SiLU over both halves made the compiled encoders
        # write (and the gate read back) the gate half as well (docs/BENCHMARKS.md, twenty-first session).
        u, z = self.in_proj(self.in_norm(x) if normed is None else normed).chunk(2, dim=-1)
        u = F.silu(u)
        ssm = self.ssm_proj(u)
        if segments is None or len(segments) == 1:
            y = self._scan(u, ssm)
        else:
            pieces = zip(u.split(list(segments), dim=1), ssm.split(list(segments), dim=1), strict=True)
            y = torch.cat([self._scan(u_part, ssm_part) for u_part, ssm_part in pieces], dim=1)
        y = self.out_norm(y.to(self.out_norm.weight.dtype))
        return x + self.out_proj(F.silu(z) * y)

    def _scan(self, u: Tensor, ssm: Tensor) -> Tensor:
        """One tiled scan: [batch, Ls, dim] -> gamma-weighted sum over the copies, [batch, Ls, dim].

        The scan runs in float32 (float64 for float64 modules, which the tests use).
        """
        batch, length, dim = u.shape
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        dt, B, C = ssm.split([dim, self.state_dim, self.state_dim], dim=-1)
        A, D = -torch.exp(self.A_log.to(dtype)), self.D.to(dtype)
        dt_bias, gamma = self.dt_bias.to(dtype), self.gamma.to(dtype)

        def channels_first(t: Tensor) -> Tensor:  # [batch, Ls, k] -> [batch, k, Ls]
            return t.transpose(1, 2).to(dtype)

        def along_length(t: Tensor) -> Tensor:  # [batch, Ls, dim] -> [batch, dim, Ls], laid out along Ls
            # The C kernel reads contiguous float32 inputs and copies anything else first; transposing
            # while casting is one pass instead of the cast here and the kernel's copy. copy=True: a
            # same-dtype ``to`` would return the transposed view (3-D tensors have no memory format).
            return t.transpose(1, 2).to(dtype, memory_format=torch.contiguous_format, copy=True)

        if not self.portable and cycle.cycle_kernel_unsupported(u, dt, B, C, A, D, dt_bias, gamma) is None:
            # Same function, L steps instead of repeats * L (hrsam.ops.selective_scan.cycle). y comes
            # back float32 and token-major, so y.transpose(1, 2) is [batch, Ls, dim] contiguous.
            if kernel_reads_views(u):
                # The Triton kernels read u and dt through their strides in their own dtype (bf16
                # under autocast): the projections' outputs are passed as [batch, dim, Ls] views, no
                # copy. B and C (N wide, 1/24 of dim for ViT-B) too: the launcher gathers them into
                # [batch, Ls, N] float32 itself. All four share u's dtype, as the op requires.
                u_in, dt_in, B_in, C_in = (t.transpose(1, 2) for t in (u, dt, B, C))
            else:
                u_in, dt_in, B_in, C_in = along_length(u), along_length(dt), channels_first(B), channels_first(C)
            y = cycle.cycle_scan(u_in, dt_in, A, B_in, C_in, D, dt_bias, gamma[:, :, 0], delta_softplus=True)
            return y.transpose(1, 2)

        def tiled(t: Tensor) -> Tensor:  # [batch, Ls, k] -> [batch, k, repeats * Ls], copy-major
            return channels_first(t).repeat(1, 1, self.repeats)

        scan = self._portable_scan if self.portable else selective_scan
        y = scan(tiled(u), tiled(dt), A, tiled(B), tiled(C), D, dt_bias, delta_softplus=True)
        y = (y.view(batch, dim, self.repeats, length) * gamma).sum(dim=2)
        return y.transpose(1, 2)

    @staticmethod
    def _portable_scan(*args: Tensor, delta_softplus: bool) -> Tensor:
        return selective_scan_chunked(*args, delta_softplus, chunk=PORTABLE_SCAN_CHUNK)
