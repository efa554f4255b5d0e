"""``CompiledRunner``: the PyTorch model through torch.compile (Inductor), replayed from CUDA graphs.

Why: eager HRSAM is bound by Python and kernel launches at 1024 and by unfused elementwise work at
2048 (docs/BENCHMARKS.md); the decoder, run once per click, is almost all launch overhead. This
runner removes both without leaving PyTorch, and it is the fallback for users without TensorRT.

How:

* ``EncoderPart`` / ``DecoderPart`` are the two halves as modules with the export contract's I/O
  (float32 in, float32 out, autocast inside). The same modules are what ``python -m export aoti``
  packages with AOTInductor, so compiled and packaged engines run the same graph.
* The custom ops stay opaque calls inside the compiled graph (their eager CUDA backends: our
  Triton scan, PyTorch's memory-efficient varlen attention in float32; 16-bit attention is our
  kernel's ``triton_op``, below); Inductor fuses everything around them. Their
  Inductor-visible forms (``hrsam.ops.lowering``) are for AOTInductor packages only: inside
  compiled graphs they measured slower (docs/BENCHMARKS.md).
* Compile options: ``freezing`` (weights become constants: their autocast casts and weight-only
  subgraphs such as the padding token's projection are folded once), ``comprehensive_padding`` off
  (the scan kernel indexes its contiguous inputs itself, so Inductor must not pad their strides).
* Inside ``engine_kernels()`` (``hrsam.ops.lowering``) engine-only forms are traced on CUDA:
  the encoder MLPs' fc1 + GELU as one cuBLASLt GEMM with a GELU epilogue in half precision
  (``hrsam.modeling.gelu_epilogue``: tanh GELU, within the outputs' rounding), each attention
  layer's gathers + RoPE of q, k, v as Triton kernels (``hrsam.ops.gather_rope``, exact), and in
  half precision the attention as our Triton kernel (``hrsam::varlen_attention_triton``).
* The encoder is compiled for ONE input size S (layouts prepared first, so index plans and RoPE
  tables are constants) and captured in one CUDA graph. The decoder is compiled once with a
  dynamic point count and captured once per point count P in 2..max_points at construction.
  Prompts are not padded to a few bucket sizes: SAM's "not a point" padding tokens take part in
  the decoder's token self-attention and change the masks (``tests/test_compiled.py`` shows it),
  so each P gets its own exact graph; the graphs share one memory pool. Other point counts run
  the compiled decoder without a graph.
* The decoder is compiled with flash attention first in SDPA's priority (``DECODER_SDPA_PRIORITY``):
  Inductor rewrites SAM's matmul-softmax-matmul attention into ``scaled_dot_product_attention``,
  whose default choice on the H200 was cuDNN's kernel; flash made the per-click graph 0.69 ms
  instead of 1.00 (``benchmarks/decoder_attention.py``, docs/BENCHMARKS.md). Where flash has no
  kernel (float32) the next backend in the list is taken.

Weights are baked in when the runner is built: load other weights, build another runner.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from hrsam.modeling.configs import PATCH_SIZE
from hrsam.modeling.interactive import HRSAMInteractive
from hrsam.ops.lowering import engine_kernels
from hrsam.runner import Runner, RunnerInfo, precision_name

logger = logging.getLogger("hrsam")

DEFAULT_MAX_POINTS = 24  # 23 clicks + SAM's padding point: longer sessions are rare
INDUCTOR_OPTIONS = {"freezing": True, "comprehensive_padding": False}
DECODER_SDPA_PRIORITY = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]
_EVERY_SDPA_BACKEND = [
    SDPBackend.MATH,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
]


def sdpa_priority(backends: Sequence[SDPBackend] | None) -> contextlib.AbstractContextManager:
    """SDPA backends tried in this order while a graph is traced (None: PyTorch's default order).

    The choice is made when Inductor lowers the attention, so it must surround the compilation,
    i.e. the first call of a compiled part (and of an AOTInductor export).
    """
    if not backends:
        return contextlib.nullcontext()
    _settle_default_sdpa_order()
    return sdpa_kernel(list(backends), set_priority=True)


@functools.cache
def _settle_default_sdpa_order() -> None:
    """Let PyTorch set its default CUDA SDPA order now, so that it cannot overwrite ours later.

    PyTorch sets that default lazily, at the first attention it dispatches on CUDA, and where it
    prefers cuDNN's kernel (Hopper and Blackwell with a recent cuDNN) that first dispatch replaces
    the order in force with cuDNN-first. In a fresh process our priority was therefore lost
    whenever the decoder's compile was the process's first attention: the H200 ran cuDNN's
    kernel, 1.04 ms per click at 128 x 128 embeddings against 0.72 ms with flash. A backend
    choice on a tiny tensor dispatches no kernel and settles the default; every backend is enabled
    for it, so that a caller's narrower ``sdpa_kernel`` context cannot make the choice fail. Once
    per process: ``compile_part`` enters the priority on every call of a part.
    """
    if torch.cuda.is_available():
        tiny = torch.zeros(1, 1, 1, 8, device="cuda", dtype=torch.float16)
        with sdpa_kernel(_EVERY_SDPA_BACKEND):
            torch._fused_sdp_choice(tiny, tiny, tiny)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class EncoderPart(nn.Module):
    """images [1, 3, S, S] float32 -> image_embeddings [1, 256, S/16, S/16] float32 contiguous, autocast inside."""

    def __init__(self, model: HRSAMInteractive, autocast_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype

    def forward(self, images: Tensor) -> Tensor:
        with _autocast(images.device, self.autocast_dtype):
            # The neck leaves the embedding channels-last; a package keeps its output's strides and
            # another package (the decoder) assumes contiguous inputs, so chaining them needs this.
            return self.model.encode(images).float().contiguous()


class DecoderPart(nn.Module):
    """The decoder with the export contract's five float32 inputs and two float32 outputs."""

    def __init__(self, model: HRSAMInteractive, autocast_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype

    def forward(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor]:
        with _autocast(image_embeddings.device, self.autocast_dtype):
            iou, masks = self.model.decode(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        return iou.float(), masks.float()


def compile_part(
    part: nn.Module, max_autotune: bool = False, sdpa_backends: Sequence[SDPBackend] | None = None
) -> Callable[..., object]:
    """torch.compile of one part (one graph, no CUDA graphs: the runner captures its own).

    Call the result under ``torch.no_grad()``: freezing applies only to graphs traced without
    gradient recording. ``INDUCTOR_OPTIONS`` and the SDPA order ``sdpa_backends`` are set around
    every call, not passed as compile options: Dynamo reads ``freezing`` while it traces, and only
    then does it guard on the identity of the parameters it bakes in, so a graph holding one model's
    weights is never replayed for another model of the same shapes; a recompilation (a new point
    count outside the dynamic range) picks attention kernels the same way as the first.
    """
    compiled = torch.compile(
        part, fullgraph=True, options={"max_autotune": max_autotune, "triton.cudagraphs": False}
    )

    def call(*inputs: Tensor) -> object:
        with torch._inductor.config.patch(INDUCTOR_OPTIONS), sdpa_priority(sdpa_backends), engine_kernels():
            return compiled(*inputs)

    return call


def decoder_example(embedding_size: int, points: int, device: torch.device) -> tuple[Tensor, ...]:
    """Decoder inputs of the contract's shapes (zeros, label -1): for compiling and capturing."""
    side = 4 * embedding_size
    return (
        torch.zeros(1, 256, embedding_size, embedding_size, device=device),
        torch.zeros(1, points, 2, device=device),
        -torch.ones(1, points, device=device),
        torch.zeros(1, 1, side, side, device=device),
        torch.zeros(1, device=device),
    )


class CudaGraphCall:
    """``fn`` captured in a CUDA graph over static inputs; a call copies inputs in and outputs out.

    ``inputs`` become the graph's buffers and every later call overwrites them: pass tensors made
    for the graph, never ones the caller keeps (an image's cached embedding, say).

    Outputs are returned as copies, so results of earlier calls stay valid (the copy of a 512 x 512
    logit map is a few microseconds). Warm-up runs on a side stream before capture, as CUDA graph
    capture requires (lazy initialisation, compilation and autotuning happen there).
    """

    def __init__(self, fn: Callable[..., object], inputs: Sequence[Tensor], pool: tuple, warmup: int = 2) -> None:
        self.inputs = tuple(inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool), torch.no_grad():
            outputs = fn(*self.inputs)
        self.outputs = outputs if isinstance(outputs, tuple) else (outputs,)

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        for static, value in zip(self.inputs, inputs, strict=True):
            if static is not value:
                static.copy_(value)
        self.graph.replay()
        return tuple(out.clone() for out in self.outputs)


def cuda_unavailable_reason() -> str | None:
    """None when this machine can run the compiled runner, else why not (one line)."""
    if not torch.cuda.is_available():
        return "the compiled runner needs a CUDA GPU (torch.compile + CUDA graphs); use the eager runner here"
    return None


class CompiledRunner(Runner):
    """The model compiled by Inductor for one input size, encoder and decoder replayed from CUDA graphs.

    Args:
        model: the interactive model on a CUDA device (float32 weights; put in eval mode).
        autocast_dtype: torch.bfloat16 / torch.float16 to compute under autocast, None for float32.
        weights: a description of the weights for ``info``.
        input_size: the padded input side S (a multiple of 16) the encoder is compiled for.
        max_points: decoder graphs are captured for 2..max_points prompt points (clicks + padding).
        max_autotune: let Inductor benchmark GEMM / kernel variants (much longer compile).

    Construction compiles and captures both halves (the one-time cost; Inductor's on-disk cache,
    ``TORCHINDUCTOR_CACHE_DIR``, makes a second process much faster). ``startup_s`` records it.
    """

    def __init__(
        self,
        model: HRSAMInteractive,
        autocast_dtype: torch.dtype | None = None,
        weights: str = "unknown",
        input_size: int = 1024,
        max_points: int = DEFAULT_MAX_POINTS,
        max_autotune: bool = False,
    ) -> None:
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise RuntimeError(f"the compiled runner needs the model on a CUDA device, got {device}: use model.cuda()")
        if input_size <= 0 or input_size % PATCH_SIZE:
            raise ValueError(f"input_size must be a positive multiple of {PATCH_SIZE}, got {input_size}")
        if max_points < 2:
            raise ValueError(f"max_points must be at least 2 (one click and SAM's padding point), got {max_points}")
        self.model = model.eval()
        self.autocast_dtype = autocast_dtype
        self.max_points = max_points
        self._device = device
        self.info = RunnerInfo(
            "compiled", model.config.name, str(device), precision_name(autocast_dtype or torch.float32),
            input_size, weights,
        )  # fmt: skip
        start = time.perf_counter()
        self._pool = torch.cuda.graph_pool_handle()
        self._build_encoder(max_autotune)
        self._build_decoder(max_autotune)
        torch.cuda.synchronize(device)
        self.startup_s = time.perf_counter() - start
        logger.info("compiled runner ready in %.1f s: %s", self.startup_s, self.info.describe())

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def embedding_size(self) -> int:
        return self.info.input_size // PATCH_SIZE

    def _build_encoder(self, max_autotune: bool) -> None:
        size = self.info.input_size
        self.model.encoder.prepare(size, size, 1, self._device)
        compiled = compile_part(EncoderPart(self.model, self.autocast_dtype), max_autotune)
        images = torch.zeros(1, 3, size, size, device=self._device)
        self._encoder = CudaGraphCall(compiled, [images], self._pool)

    def _build_decoder(self, max_autotune: bool) -> None:
        part = DecoderPart(self.model, self.autocast_dtype)
        self._decode_compiled = compile_part(part, max_autotune, DECODER_SDPA_PRIORITY)
        embedding, _, _, mask, has_mask = decoder_example(self.embedding_size, 2, self._device)
        self._decoders: dict[int, CudaGraphCall] = {}
        for points in range(2, self.max_points + 1):
            _, coords, labels, _, _ = decoder_example(self.embedding_size, points, self._device)
            torch._dynamo.maybe_mark_dynamic(coords, 1)  # one compile serves every point count
            torch._dynamo.maybe_mark_dynamic(labels, 1)
            self._decoders[points] = CudaGraphCall(  # embedding and mask buffers shared by all graphs
                self._decode_compiled, [embedding, coords, labels, mask, has_mask], self._pool
            )

    def encode(self, images: Tensor) -> Tensor:
        size = self.info.input_size
        _check_tensor("images", images, (1, 3, size, size), self._device)
        (embedding,) = self._encoder(images)
        return embedding

    def decode(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor]:
        side = self.embedding_size
        points = point_coords.shape[1] if point_coords.dim() == 3 else -1
        _check_tensor("image_embeddings", image_embeddings, (1, 256, side, side), self._device)
        _check_tensor("point_coords", point_coords, (1, points, 2), self._device)
        _check_tensor("point_labels", point_labels, (1, points), self._device)
        _check_tensor("mask_input", mask_input, (1, 1, 4 * side, 4 * side), self._device)
        _check_tensor("has_mask_input", has_mask_input, (1,), self._device)
        graph = self._decoders.get(points)
        if graph is None:  # outside the captured range: the compiled decoder without a graph
            with torch.no_grad():
                inputs = (image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
                return self._decode_compiled(*(t.float() for t in inputs))
        return graph(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)


def _check_tensor(name: str, tensor: Tensor, shape: tuple[int, ...], device: torch.device) -> None:
    """One-line errors for inputs a fixed-shape graph cannot take (copying would broadcast silently)."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)} for this compiled runner, got {list(tensor.shape)}")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device}; this runner runs on {device}")
    if not tensor.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float tensor, got {tensor.dtype}")
