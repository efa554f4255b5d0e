"""SAM's prompt encoder and mask decoder, adapted to image embeddings of any size.

The modules are the real ``segment_anything`` classes (so SAM's and the authors' decoder weights
load unchanged); :class:`PromptDecoder` only changes how their inputs are formed, following the
authors' adaptation for embeddings other than 64 x 64 (docs/MODEL.md, "Decoder"):

* point coordinates (pixels of the padded S x S input) are shifted by +0.5 and normalised by the
  input size derived from the embedding (16 x the embedding side), not by a fixed 1024;
* the 64 x 64 dense positional encoding and the no-mask embedding are bilinearly resized
  (align_corners=False) to the embedding size;
* the mask prompt is the previous low-resolution logits, 4 x the embedding size.

Its forward has the I/O of segment-anything's ONNX decoder (image_embeddings, point_coords,
point_labels, mask_input, has_mask_input) with mask selection left to the caller, and uses only
tensor arithmetic (no data-dependent indexing) so that ``torch.export`` / ONNX see one graph.

Importing: ``import segment_anything`` runs its ``__init__``, which imports the predictor and with
it torchvision. torchvision cannot be installed beside the CPU torch of this project, and the
modeling classes do not need it, so when (and only when) that import fails for lack of torchvision
we register a bare ``segment_anything`` package (its real ``__path__``, none of its ``__init__``)
just long enough to import ``segment_anything.modeling`` from it, then remove it again.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import sys
import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrsam.modeling.configs import PATCH_SIZE, DecoderConfig

logger = logging.getLogger("hrsam")


def _import_sam_modeling() -> types.ModuleType:
    """``segment_anything.modeling``, importable with or without torchvision (see module doc)."""
    try:
        importlib.import_module("segment_anything")
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("torchvision"):
            raise ImportError(
                "hrsam needs the segment-anything package: pip install segment-anything"
            ) from error
        spec = importlib.util.find_spec("segment_anything")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("segment_anything is not installed: pip install segment-anything") from error
        package = types.ModuleType("segment_anything")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["segment_anything"] = package
        try:
            modeling = importlib.import_module("segment_anything.modeling")
        finally:
            # The bare package must not stay registered: a later ``import segment_anything`` then
            # runs the real __init__ (and fails only for what it really lacks, torchvision).
            del sys.modules["segment_anything"]
        logger.info(
            "segment_anything.modeling imported without the package __init__ (torchvision is missing)"
        )
        return modeling
    return importlib.import_module("segment_anything.modeling")


sam_modeling = _import_sam_modeling()
PromptEncoder = sam_modeling.PromptEncoder
MaskDecoder = sam_modeling.MaskDecoder
TwoWayTransformer = sam_modeling.TwoWayTransformer


class PromptDecoder(nn.Module):
    """Prompt encoder + mask decoder for one image embedding of any size (a multiple of 1/16 input).

    Attributes ``prompt_encoder`` and ``mask_decoder`` are SAM's modules with SAM's parameter names.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        base = config.base_input_size // PATCH_SIZE
        self.base_embed_size = base
        # Dense positional encodings per (size, device), made once: they depend only on SAM's fixed
        # Gaussian matrix (a buffer), so a fixed-size decode creates no tensors of its own.
        self._dense_pe_cache: dict[tuple, Tensor] = {}
        # The grid of SAM's base-size cell centres, a buffer rather than an ``arange`` in the call:
        # Inductor's freezing folds subgraphs of constants but not of tensor constructors, so only
        # then does a compiled decoder compute the dense encoding once instead of at every click.
        centres = (torch.arange(base, dtype=torch.float32) + 0.5) / base
        grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), dim=-1)  # [y, x, (x, y)]
        self.register_buffer("_pe_grid", grid, persistent=False)
        self.prompt_encoder = PromptEncoder(
            embed_dim=config.prompt_dim,
            image_embedding_size=(base, base),
            input_image_size=(config.base_input_size, config.base_input_size),
            mask_in_chans=config.mask_in_chans,
        )
        self.mask_decoder = MaskDecoder(
            transformer_dim=config.prompt_dim,
            transformer=TwoWayTransformer(
                depth=config.depth,
                embedding_dim=config.prompt_dim,
                mlp_dim=config.mlp_dim,
                num_heads=config.num_heads,
            ),
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        )

    def forward(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Decode all mask outputs for one embedding.

        Args:
            image_embeddings: [1, C, h, w] from the encoder (input size 16h x 16w).
            point_coords: [B, P, 2] (x, y) in pixels of the padded input; include SAM's padding
                point (0, 0) with label -1 when there is no box, as SamPredictor does.
            point_labels: [B, P]; 1 foreground, 0 background, 2 / 3 box corners, -1 not a point.
            mask_input: [B, 1, 4h, 4w] previous low-resolution logits (any values when unused).
            has_mask_input: [1] or [B]; 1.0 to use ``mask_input``, 0.0 for the no-mask embedding.

        Returns:
            iou_predictions [B, M] and low_res_masks [B, M, 4h, 4w] for all M mask outputs.
        """
        h, w = int(image_embeddings.shape[-2]), int(image_embeddings.shape[-1])
        self._check_shapes(image_embeddings, point_coords, point_labels, mask_input, h, w)
        sparse = self._embed_points(point_coords, point_labels, (PATCH_SIZE * h, PATCH_SIZE * w))
        dense = self._embed_masks(mask_input, has_mask_input, (h, w))
        image_pe = self._dense_pe((h, w))
        masks, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=image_pe.to(image_embeddings.dtype),
            sparse_prompt_embeddings=sparse.to(image_embeddings.dtype),
            dense_prompt_embeddings=dense.to(image_embeddings.dtype),
        )
        return iou, masks

    @staticmethod
    def _check_shapes(
        embeddings: Tensor, coords: Tensor, labels: Tensor, mask_input: Tensor, h: int, w: int
    ) -> None:
        """Clear errors for wrong shapes (static shapes: no runtime cost in an exported graph)."""
        if embeddings.dim() != 4 or embeddings.shape[0] != 1:
            raise ValueError(f"image_embeddings must be [1, C, h, w], got {tuple(embeddings.shape)}")
        bad_points = coords.dim() != 3 or coords.shape[-1] != 2 or labels.dim() != 2
        if bad_points or coords.shape[:2] != labels.shape:
            raise ValueError(
                f"point_coords must be [B, P, 2] and point_labels [B, P], got {tuple(coords.shape)} "
                f"and {tuple(labels.shape)}"
            )
        if mask_input.dim() != 4 or tuple(mask_input.shape[1:]) != (1, 4 * h, 4 * w):
            raise ValueError(
                f"mask_input must be [B, 1, {4 * h}, {4 * w}] (4x the {h}x{w} embedding), "
                f"got {tuple(mask_input.shape)}"
            )

    def _fourier(self, coords: Tensor) -> Tensor:
        """SAM's random-Fourier position encoding of coordinates in [0, 1], always in float32.

        Written with elementwise products instead of SAM's matmul so that neither ``.half()`` nor
        autocast lowers the precision of the (large-argument) sin/cos inputs.
        """
        gaussian = self.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.float()
        centred = 2 * coords.float() - 1
        angles = 2 * math.pi * (centred[..., :1] * gaussian[0] + centred[..., 1:] * gaussian[1])
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)

    def _dense_pe(self, size: tuple[int, int]) -> Tensor:
        """SAM's 64 x 64 dense positional encoding resized to ``size``, cached per size and device.

        The cache key holds the Gaussian buffer's identity and version, so loading other weights
        into it (an in-place copy) or moving the module invalidates the entry. One size is kept.
        """
        if torch.compiler.is_compiling():  # traced graphs compute (or constant-fold) it themselves
            return self._compute_dense_pe(size)
        gaussian = self.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        key = (size, gaussian.device, id(gaussian), gaussian._version)
        if key not in self._dense_pe_cache:
            self._dense_pe_cache = {key: self._compute_dense_pe(size)}
        return self._dense_pe_cache[key]

    def _compute_dense_pe(self, size: tuple[int, int]) -> Tensor:
        return self._resize(self._fourier(self._pe_grid).permute(2, 0, 1).unsqueeze(0), size)

    def _embed_points(self, coords: Tensor, labels: Tensor, input_size: tuple[int, int]) -> Tensor:
        """Sparse embeddings of points, normalised by the real input size (not SAM's 1024)."""
        encoder = self.prompt_encoder
        shifted = coords.float() + 0.5
        # Per-axis division by Python numbers: no tensor is created on the host during the call.
        normalised = torch.stack([shifted[..., 0] / input_size[1], shifted[..., 1] / input_size[0]], dim=-1)
        pe = self._fourier(normalised)
        labels = labels.unsqueeze(-1)
        embedding = pe * (labels != -1) + encoder.not_a_point_embed.weight.float() * (labels == -1)
        for i, point_embedding in enumerate(encoder.point_embeddings):
            embedding = embedding + point_embedding.weight.float() * (labels == i)
        return embedding

    def _embed_masks(self, mask_input: Tensor, has_mask_input: Tensor, size: tuple[int, int]) -> Tensor:
        """Dense embedding: the mask prompt if given, else SAM's no-mask embedding resized to ``size``."""
        encoder = self.prompt_encoder
        # SAM's no-mask embedding is one vector at every position, so its bilinear resize (the
        # authors' rule) is the same vector at every position of ``size``.
        no_mask = encoder.no_mask_embed.weight.float().reshape(1, -1, 1, 1).expand(1, -1, *size)
        weight_dtype = encoder.no_mask_embed.weight.dtype
        mask_embedding = encoder.mask_downscaling(mask_input.to(weight_dtype)).float()
        has_mask = has_mask_input.float().reshape(-1, 1, 1, 1)
        return has_mask * mask_embedding + (1 - has_mask) * no_mask

    @staticmethod
    def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
        """Bilinear resize (align_corners=False, as the authors) unless already at ``size``."""
        if tuple(x.shape[-2:]) == size:
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def select_single_mask(iou: Tensor, masks: Tensor, multimask_output: bool) -> tuple[Tensor, Tensor]:
    """SAM's output selection: the single-mask output, or the multimask outputs 1.."""
    selection = slice(1, None) if multimask_output else slice(0, 1)
    return iou[:, selection], masks[:, selection]


__all__ = ["MaskDecoder", "PromptDecoder", "PromptEncoder", "TwoWayTransformer", "select_single_mask"]
