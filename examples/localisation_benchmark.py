"""Where does a run's heat map point? Localisation on synthetic lesions and real films.

1. Synthetic: the toolkit's opacities (``paste_opacities``, fixed seed; ``--recipe
   blobs``, the critic's training recipe) or lesions of a recipe no family trains on
   (``--recipe consolidation|patches``, :mod:`anomaly.eval_lesions`) pasted into the
   *normal* films of ``--data`` (another hospital than training). Pixel AUROC of the map
   against the lesion masks (blobs: blend weight > the run's mask level; the others:
   pixels visibly changed) inside the lung field,
   over the lesioned films alone and with their clean twins; the pointing game (the
   map's maximum, over the whole film, inside the lesion); the image AUROC of lesioned
   against their own clean films for each score.
2. Real: on the films of ``--data`` (pneumonia and normal), the share of the map's heat
   inside the lung field, the share of films whose maximum lies there, and the share
   with at least one region.

The lung field is the run's lung prior (the darkest 30% of a central ellipse on the
training normals' mean film) grown by 1/16 of the side (``anomaly.lungs.lung_field``).
The no-GAN row is the lung-brightness "map": the CLAHE film itself inside the lung prior.

Usage:
    python examples/localisation_benchmark.py --model RUN --data DIR [--heat map|gradcam]
        [--recipe blobs|consolidation|patches] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_common import load_labelled_images  # noqa: E402

from anomaly.checkpoint import load_checkpoint  # noqa: E402
from anomaly.eval_lesions import RECIPES, paste_lesions  # noqa: E402
from anomaly.families.critic.synthesis import paste_opacities, soft_lung_prior  # noqa: E402
from anomaly.localisation import (  # noqa: E402
    mass_inside,
    maximum_inside,
    pixel_auroc,
    pointing_game,
)
from anomaly.lungs import lung_field  # noqa: E402
from anomaly.score import Scorer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run directory or checkpoint")
    parser.add_argument("--data", required=True, help="labelled folder (NORMAL, PNEUMONIA)")
    parser.add_argument("--heat", choices=["map", "gradcam"],
                        help="the critic's heat map (default: the run's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pasted opacities")
    parser.add_argument("--recipe", default="blobs", choices=["blobs", *RECIPES],
                        help="the synthetic lesions: blobs (the critic's training recipe) "
                             "or one no family trains on (anomaly.eval_lesions)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    return parser.parse_args(argv)


def score_all(scorer: Scorer, images: torch.Tensor, batch_size: int = 64):
    """Heat maps (N, S, S) and scores by name (the scorer's kinds and brightness)."""
    heats, components = [], {}
    for start in range(0, len(images), batch_size):
        scores = scorer.score_tensor(images[start: start + batch_size])
        heats.append(scores.heatmaps.numpy())
        for name, value in scores.components.items():
            components.setdefault(name, []).extend(np.asarray(value).tolist())
    components = {name: np.asarray(v) for name, v in components.items()}
    kinds = {}
    for kind in [*scorer.family.score_kinds, "lung-brightness"]:
        try:
            kinds[kind] = np.asarray(_combine(scorer, kind, components))
        except Exception:  # a kind this run cannot compute (e.g. no held-out statistics)
            continue
    return np.concatenate(heats), kinds


def _combine(scorer: Scorer, kind: str, components: dict) -> np.ndarray:
    saved, scorer.score = scorer.score, kind
    try:
        return scorer.combine(components)
    finally:
        scorer.score = saved


def brightness_maps(images: torch.Tensor, prior: torch.Tensor) -> np.ndarray:
    """The no-GAN 'map': the film on [0, 1] inside the lung prior, (N, S, S)."""
    return (((images + 1) / 2)[:, 0] * prior).numpy()


def count_regions(scorer: Scorer, heats: np.ndarray) -> np.ndarray | None:
    """Regions per film at the model's resolution, or None without a region threshold."""
    if scorer.region_threshold is None:
        return None
    return np.array([len(scorer.regions(h)) for h in heats])


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    state = load_checkpoint(args.model)
    scorer = Scorer.from_state(state, mode="critic", device="cpu", heat=args.heat)
    config = scorer.preprocess_config
    labels, images = load_labelled_images(args.data, config)
    prior = scorer.lung_prior.cpu()
    field = lung_field(prior).numpy()
    level = float(state["critic"].get("config", {}).get("map_mask_level", 0.1))
    figures: dict = {"model": str(args.model), "data": str(args.data),
                     "heat": scorer.heat_name, "mask_level": level,
                     "lung_field": "run's lung prior grown by 1/16 of the side",
                     "region_threshold": scorer.region_threshold}

    # 1. synthetic opacities in the normal films
    normals = images[labels == 0]
    if args.recipe == "blobs":
        pasted, blend = paste_opacities(normals, soft_lung_prior(prior),
                                        generator=torch.Generator().manual_seed(args.seed))
        masks = (blend[:, 0] > level).numpy().astype(np.float32)
    else:
        pasted, lesion_masks = paste_lesions(args.recipe, normals, prior, args.seed)
        masks = lesion_masks.numpy().astype(np.float32)
    clean_heat, clean_scores = score_all(scorer, normals)
    lesion_heat, lesion_scores = score_all(scorer, pasted)
    bright_clean, bright_lesion = brightness_maps(normals, prior), brightness_maps(pasted, prior)
    both = np.concatenate([masks, np.zeros_like(masks)])
    twins = np.r_[np.ones(len(normals)), np.zeros(len(normals))]
    figures["synthetic"] = {
        "films": int(len(normals)),
        "recipe": args.recipe,
        "lesion_pixel_share": float(masks.mean()),
        "map": {"pixel_auroc": pixel_auroc(lesion_heat, masks, field),
                "pixel_auroc_with_clean": pixel_auroc(
                    np.concatenate([lesion_heat, clean_heat]), both, field),
                "pointing_game": pointing_game(lesion_heat, masks)},
        "lung-brightness": {"pixel_auroc": pixel_auroc(bright_lesion, masks, field),
                            "pixel_auroc_with_clean": pixel_auroc(
                                np.concatenate([bright_lesion, bright_clean]), both, field),
                            "pointing_game": pointing_game(bright_lesion, masks)},
        "image_auroc": {kind: float(roc_auc_score(
            twins, np.r_[lesion_scores[kind], clean_scores[kind]]))
            for kind in lesion_scores if kind in clean_scores},
    }

    # 2. real films: where the heat goes
    heats, _ = score_all(scorer, images)
    regions = count_regions(scorer, heats)
    real = {}
    for name, label in (("pneumonia", 1), ("normal", 0)):
        chosen = heats[labels == label]
        real[name] = {"films": int(len(chosen)),
                      "mass_in_lung_field": float(mass_inside(chosen, field).mean()),
                      "maximum_in_lung_field": float(maximum_inside(chosen, field).mean()),
                      "with_a_region": None if regions is None
                      else float((regions[labels == label] > 0).mean())}
    real["flat_map_mass_in_lung_field"] = float(field.mean())
    figures["real"] = real
    print_figures(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def print_figures(figures: dict) -> None:
    """The figures as two Markdown tables."""
    synthetic, real = figures["synthetic"], figures["real"]
    print(f"heat {figures['heat']}; {synthetic['films']} normal films with pasted opacities "
          f"(recipe {synthetic.get('recipe', 'blobs')}) "
          f"({100 * synthetic['lesion_pixel_share']:.1f}% of pixels)")
    print("| map | pixel AUROC in lung field | with clean twins | pointing game |")
    print("|---|---|---|---|")
    for name in ("map", "lung-brightness"):
        row = synthetic[name]
        print(f"| {figures['heat'] if name == 'map' else name} | {row['pixel_auroc']:.3f} | "
              f"{row['pixel_auroc_with_clean']:.3f} | {row['pointing_game']:.3f} |")
    print("image AUROC, lesioned vs their clean twins: " + ", ".join(
        f"{k} {v:.3f}" for k, v in synthetic["image_auroc"].items()))
    print("| real films | heat in lung field | maximum in lung field | with a region |")
    print("|---|---|---|---|")
    for name in ("pneumonia", "normal"):
        row = real[name]
        share = "n/a" if row["with_a_region"] is None else f"{row['with_a_region']:.3f}"
        print(f"| {name} ({row['films']}) | {row['mass_in_lung_field']:.3f} | "
              f"{row['maximum_in_lung_field']:.3f} | {share} |")
    print(f"(a flat map puts {real['flat_map_mass_in_lung_field']:.3f} of its heat in the "
          "lung field)")


if __name__ == "__main__":
    main()
