"""Click fine-tuning: iterative click simulation and the Normalized Focal Loss (docs/MODEL.md, training).

Per step and image: the encoder runs once (with gradients); each of the image's M objects gets its
initial clicks (``click_sim.initial_clicks``: one positive, or a few positive and negative); then
k extra rounds (k drawn with probability proportional to 0.6^k, k < 20)
run the decoder without gradients, add one click from the error region (``click_sim``) and feed the
previous low-resolution logits back as the mask prompt, exactly as at inference; the last round
runs with gradients and is supervised. Loss = NFL of the single-mask output (upsampled to the input
size, as the predictor does) + ``iou_weight`` x MSE of its IoU prediction against the real IoU
(+ ``dice_weight`` x soft Dice, off by default: from random weights it shortens the early phase
in which every pixel is predicted background; docs/TRAINING.md has the measurement).

Batching: the decoder takes one embedding and many prompt sets; ``torch.func.vmap`` maps it over
the images of the batch (each with its M objects), so training runs the very decoder code of
inference (tests check the mapped call equals per-image calls).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrsam.modeling.interactive import HRSAMInteractive
from hrsam.train.click_sim import (
    grid_to_pixels,
    initial_clicks,
    initial_counts,
    mark_clicked,
    next_clicks,
    sample_iterations,
)


def normalized_focal_loss(logits: Tensor, target: Tensor, weight: Tensor, gamma: float = 2.0) -> Tensor:
    """NFL per mask: focal weights (1 - p_t)^gamma rescaled to average 1 over the weighted pixels.

    ``logits``, ``target``, ``weight`` broadcast to [..., H, W]; returns [...]. The rescaling (not
    differentiated) keeps the loss scale steady as predictions improve, which plain focal loss
    does not (Sofiiuk et al., adopted by RITM / SimpleClick and the paper).
    """
    probability = torch.sigmoid(logits)
    p_t = torch.where(target > 0.5, probability, 1 - probability)
    focal = (1 - p_t).pow(gamma) * weight
    total = weight.sum(dim=(-2, -1))
    scale = (total / focal.sum(dim=(-2, -1)).clamp_min(1e-8)).detach()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (focal * bce).sum(dim=(-2, -1)) * scale / total.clamp_min(1.0)


def soft_dice_loss(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """1 - soft Dice of sigmoid(logits) and the target over the weighted pixels, [..., H, W] -> [...]."""
    probability = torch.sigmoid(logits) * weight
    inter = (probability * target).sum(dim=(-2, -1))
    total = probability.sum(dim=(-2, -1)) + (target * weight).sum(dim=(-2, -1))
    return 1 - (2 * inter + 1) / (total + 1)


def mask_iou(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """IoU of bool masks over the weighted pixels, [..., H, W] -> [...] (1 where both are empty)."""
    inter = (pred & target & weight).sum(dim=(-2, -1)).float()
    union = ((pred | target) & weight).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


class FinetuneObjective(nn.Module):
    """The click fine-tuning loss of a batch; a module so that DDP can wrap it."""

    def __init__(self, model: HRSAMInteractive, max_iterations: int = 20, decay: float = 0.6,
                 iou_weight: float = 1.0, gamma: float = 2.0, dice_weight: float = 0.0) -> None:
        super().__init__()
        self.model, self.max_iterations, self.decay = model, max_iterations, decay
        self.iou_weight, self.gamma, self.dice_weight = iou_weight, gamma, dice_weight
        self.decode = torch.func.vmap(model.decoder)

    def forward(self, batch: dict[str, Tensor], generators: tuple[torch.Generator, torch.Generator]
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """``batch`` from ``batches.scene_to_tensors`` (on the device); generators (CPU, device)."""
        cpu_generator, generator = generators
        images, masks, valid, region = batch["image"], batch["masks"], batch["valid"], batch["region"]
        batch_size, objects, size = masks.shape[0], masks.shape[1], images.shape[-1]
        embedding = self.model.encode(images)[:, None]
        low = (4 * embedding.shape[-2], 4 * embedding.shape[-1])
        gt_low = F.interpolate(masks.float(), size=low, mode="area").flatten(0, 1) >= 0.5
        gt_low &= valid.flatten()[:, None, None]
        yx, labels = initial_clicks(gt_low, *initial_counts(cpu_generator), generator)
        clicked = torch.zeros_like(gt_low)
        mark_clicked(clicked, yx, labels)
        cell = size / low[1]
        coords, point_labels = list(grid_to_pixels(yx, cell).unbind(1)), list(labels.unbind(1))
        prompt = torch.zeros(batch_size, objects, 1, *low, device=images.device)
        has_prompt = torch.zeros(batch_size, objects, device=images.device)
        with torch.no_grad():
            for _ in range(sample_iterations(self.max_iterations, self.decay, cpu_generator)):
                _, low_res = self._decode(embedding.detach(), coords, point_labels, prompt, has_prompt)
                prompt, has_prompt = low_res[:, :, :1].float(), torch.ones_like(has_prompt)
                yx, labels = next_clicks(gt_low, (prompt > 0).flatten(0, 2), clicked)
                mark_clicked(clicked, yx, labels)
                coords.append(grid_to_pixels(yx, cell))
                point_labels.append(labels)
        iou_prediction, low_res = self._decode(embedding, coords, point_labels, prompt, has_prompt)
        logits = F.interpolate(low_res[:, :, 0].float(), size=(size, size), mode="bilinear", align_corners=False)
        target = masks.float()
        weight = (region[:, None] & valid[:, :, None, None]).float()
        nfl = normalized_focal_loss(logits, target, weight, self.gamma)
        dice = soft_dice_loss(logits, target, weight) if self.dice_weight else torch.zeros_like(nfl)
        with torch.no_grad():
            real_iou = mask_iou(logits > 0, target > 0.5, weight > 0)
        iou_error = (iou_prediction[:, :, 0].float() - real_iou) ** 2
        count = valid.sum().clamp_min(1)
        loss_nfl = (nfl * valid).sum() / count
        loss_dice = (dice * valid).sum() / count
        loss_iou = (iou_error * valid).sum() / count
        clicks = torch.tensor(float(len(coords)), device=images.device)
        stats = {"nfl": loss_nfl.detach(), "dice": loss_dice.detach(), "iou_mse": loss_iou.detach(),
                 "train_iou": (real_iou * valid).sum() / count, "clicks": clicks}
        return loss_nfl + self.dice_weight * loss_dice + self.iou_weight * loss_iou, stats

    def _decode(self, embedding: Tensor, coords: list[Tensor], labels: list[Tensor], prompt: Tensor,
                has_prompt: Tensor) -> tuple[Tensor, Tensor]:
        """All clicks so far plus SAM's padding point -> (iou [B, M, 4], low-res logits [B, M, 4, h, w])."""
        batch_size, objects = prompt.shape[:2]
        points = torch.stack(coords, dim=1)  # [B*M, P, 2]
        point_labels = torch.stack(labels, dim=1)
        points = F.pad(points, (0, 0, 0, 1))
        point_labels = F.pad(point_labels, (0, 1), value=-1.0)
        shape = (batch_size, objects, points.shape[1])
        return self.decode(embedding, points.view(*shape, 2), point_labels.view(shape), prompt, has_prompt)
