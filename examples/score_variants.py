"""AUROC of score variants of one trained run (mode encoder), on labelled folders.

How the README's "score variants" lines were measured: each variant is computed from the
same reconstructions G(E(x)), so they differ only in how the residual is summarised.

    python examples/score_variants.py --model RUN \
        --data ../shared/data/chest_xray/val --data ../shared/data/chest_xray/test_dev
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from probe_common import load_labelled_images, print_auroc_table, probe_arguments

from anomaly.checkpoint import load_checkpoint
from anomaly.evaluate import auroc
from anomaly.lungs import geometric_lung_prior, smooth
from anomaly.score import Scorer


def variants(scorer: Scorer, images: torch.Tensor, prior: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image values of each variant (higher = more anomalous)."""
    with torch.no_grad():
        features = scorer.family.discriminator.features(images)
        reconstruction = scorer.family.generator(scorer.family.encoder(images))
        critic = -scorer.family.discriminator.logits(features)
        discrimination = (features - scorer.family.discriminator.features(reconstruction)).abs()
    residual = images - reconstruction
    geometric = geometric_lung_prior(images.shape[-1])

    def inside(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (values * mask).flatten(1).sum(1) / mask.sum()

    out = {
        "mean |x - G(z)| (AnoGAN residual)": residual.abs().flatten(1).mean(1),
        "mean |f(x) - f(G(z))| (feature loss)": discrimination.flatten(1).mean(1),
        "mean (x - G(z)), signed": residual.flatten(1).mean(1),
        "critic -D(x)": critic,
        "mean intensity in lung prior": inside(images, prior),
    }
    for sigma in (2, 4):
        blurred = smooth(residual, sigma)
        out[f"|blur{sigma}(x - G(z))|, whole image"] = blurred.abs().flatten(1).mean(1)
        out[f"max(blur{sigma}(x - G(z)), 0), whole image"] = blurred.clamp(min=0).flatten(1).mean(1)
        out[f"|blur{sigma}(x - G(z))|, lung prior"] = inside(blurred.abs(), prior)
        out[f"max(blur{sigma}(x - G(z)), 0), lung prior"] = inside(blurred.clamp(min=0), prior)
        out[f"max(blur{sigma}(x - G(z)), 0), geometric lungs"] = inside(blurred.clamp(min=0),
                                                                      geometric)
    return {name: value.float().numpy() for name, value in out.items()}


def main(argv=None) -> None:
    args = probe_arguments(__doc__, argv)
    state = load_checkpoint(args.model)
    scorer = Scorer.from_state(state, mode="encoder", score="anogan", device="cpu")
    prior = scorer.lung_prior.cpu()
    columns = {}
    for folder_path in args.data:
        labels, images = load_labelled_images(folder_path, scorer.preprocess_config)
        values = variants(scorer, images, prior)
        columns[Path(folder_path).name] = {name: auroc(labels, v) for name, v in values.items()}
    print_auroc_table("variant", columns)


if __name__ == "__main__":
    main()
