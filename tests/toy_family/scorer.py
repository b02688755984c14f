"""The toy family's scoring object (:class:`anomaly.families.base.Family`)."""

import numpy as np
import torch

from anomaly.families.base import FamilyOutput


class ToyFamily:
    """Scores a film by |its mean brightness - the training normals'| * scale."""

    name = "toy"
    title = "Toy brightness family"
    modes = ("toy",)
    components = ("toy",)
    score_kinds = {"toy-distance": "toy"}
    default_score = "toy-distance"
    reconstructs = False

    def __init__(self, part: dict, device: torch.device):
        self.mean, self.scale, self.device = part["mean"], part["scale"], device

    def settings(self) -> dict:
        """The mode alone."""
        return {"mode": "toy"}

    def report_settings(self, score: str) -> dict:
        """Its one setting, whatever the score."""
        return {"toy_scale": self.scale}

    def check_score(self, score: str) -> None:
        """Every score kind it declares works."""

    def score_batch(self, images: torch.Tensor, score: str = "toy-distance",
                    heatmaps: bool = True) -> FamilyOutput:
        """The distance of each film's mean from the normals'."""
        distance = (images.mean(dim=(1, 2, 3)) - self.mean).abs() * self.scale
        return FamilyOutput(components={"toy": distance.numpy().astype(np.float64)},
                            heatmaps=images[:, 0].clone() if heatmaps else None,
                            heat_scale=None, reconstructions=None)


def build_family(state: dict, mode: str, device: torch.device, lung_prior: torch.Tensor,
                 **ignored) -> ToyFamily:
    """The toy's scoring object from its checkpoint part."""
    return ToyFamily(state["toy"], device)
