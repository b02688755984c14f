"""Grad-CAM (Selvaraju et al., 2017) by hand: which regions drove a class score.

A forward hook on the target layer keeps its activations A and hooks their gradient;
one backward pass from the class logit gives dy/dA. The weights are the gradients
averaged over space, the map is ``ReLU(sum_k w_k A_k)``, upsampled to the input and
scaled to [0, 1].
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomaly.preprocess import to_display


class GradCAM:
    """Grad-CAM on one layer of a classifier.

    Args:
        model: the classifier (its output is class logits).
        target_layer: the module whose output is explained, usually the last
            convolutional block (``layer4`` for ResNets).
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module):
        self.model = model
        self.target_layer = target_layer
        self._activations: torch.Tensor | None = None
        self._gradients: torch.Tensor | None = None

    def _forward_hook(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self._activations = output.detach()

        def keep_gradient(grad: torch.Tensor) -> None:
            self._gradients = grad.detach()

        output.register_hook(keep_gradient)

    def __call__(self, images: torch.Tensor, class_index: torch.Tensor | None = None,
                 other_than: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """Class activation maps of a batch.

        Args:
            images: (B, 1, S, S) model inputs.
            class_index: (B,) class to explain per image; default: the predicted class.
            other_than: without ``class_index``, explain the most likely class other than
                this one (the normal class: where the evidence of disease lies, also on a
                film predicted normal).

        Returns:
            (B, S, S) float32 maps in [0, 1], and the (B, K) class probabilities.
        """
        handle = self.target_layer.register_forward_hook(self._forward_hook)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                inputs = images.detach().requires_grad_(True)  # gradients even if frozen
                logits = self.model(inputs).float()
                if class_index is None:
                    ranked = logits.detach().clone()
                    if other_than is not None:
                        ranked[:, other_than] = -torch.inf
                    class_index = ranked.argmax(1)
                self.model.zero_grad(set_to_none=True)
                logits.gather(1, class_index.view(-1, 1).to(logits.device)).sum().backward()
        finally:
            handle.remove()
            self.model.train(was_training)
        activations, gradients = self._activations.float(), self._gradients.float()
        weights = gradients.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        cam = F.relu((weights * activations).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)
        cam = cam[:, 0]
        peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
        self.model.zero_grad(set_to_none=True)
        return (cam / peak).cpu().numpy().astype(np.float32), logits.softmax(1).detach()


def cam_overlay(image: np.ndarray, cam: np.ndarray, display_size: int = 256,
                alpha: float = 0.4) -> np.ndarray:
    """The image with the map as a JET heatmap over it.

    Args:
        image: (S, S) model-range input in [-1, 1].
        cam: (S, S) map in [0, 1].
        display_size: side of the output in pixels.
        alpha: weight of the heatmap.

    Returns:
        (display_size, display_size, 3) uint8 BGR image.
    """
    size = (display_size, display_size)
    gray = cv2.resize(to_display(image), size, interpolation=cv2.INTER_LINEAR)
    heat8 = np.clip(cv2.resize(cam, size, interpolation=cv2.INTER_CUBIC) * 255.0, 0, 255)
    colour = cv2.applyColorMap(heat8.astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), 1.0 - alpha, colour, alpha, 0)

