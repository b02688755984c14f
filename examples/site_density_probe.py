"""AUROC of the opacity critic's density at another site, refitted on that site's normals.

The labelled folder's normal films are split by patient into two halves (as
``site_regions.py`` does); one half plays a site's own normal films, which a site can
collect without any label of disease. The density is fitted on the run's training
normals (the run's own density), on them with its mean moved to the site normals' mean,
on both together, and on the site's normals alone; each is scored on the other half's
normals against every abnormal film, beside lung brightness on the same films. Then the
halves swap. No abnormal film fits or chooses anything.

    python examples/site_density_probe.py --model RUN --data ../shared/data/chest_xray/test_dev
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from critic_varied_density_probe import embed
from probe_common import (
    critic_and_its_training_normals,
    load_labelled_films,
    print_auroc_table,
    probe_arguments,
    run_embedding,
)
from site_regions import split_by_patient

from anomaly.checkpoint import load_checkpoint
from anomaly.data import uint8_to_model
from anomaly.density import fit_density, mahalanobis
from anomaly.evaluate import auroc
from anomaly.lungs import checkpoint_lung_prior, lung_brightness


def site_densities(train: torch.Tensor, site: torch.Tensor) -> dict[str, dict]:
    """The Gaussians compared, by name, from training and site embeddings (N, C)."""
    own = fit_density(train.numpy())
    moved = {"mean": site.mean(0), "precision": own["precision"]}
    return {"the training normals (the run's)": own,
            "the training normals, mean moved to the site's": moved,
            "the training and site normals": fit_density(torch.cat([train, site]).numpy()),
            "the site's normals alone": fit_density(site.numpy())}


def main(argv=None) -> None:
    args = probe_arguments(__doc__, argv)
    state = load_checkpoint(args.model)
    critic, preprocess_config, train = critic_and_its_training_normals(state)
    embedding = run_embedding(state)
    train_embeddings = embed(critic, uint8_to_model(train), embedding=embedding)
    prior = checkpoint_lung_prior(state, preprocess_config.image_size)
    pattern = state["train_config"].get("holdout_patient_pattern", "")
    columns = {}
    for folder_path in args.data:
        paths, labels, images = load_labelled_films(folder_path, preprocess_config)
        embeddings = embed(critic, images, embedding=embedding)
        brightness = lung_brightness(images, prior).numpy()
        normals = [Path(p) for p, label in zip(paths, labels) if label == 0]
        halves = split_by_patient(normals, pattern)
        for name, site_half in (("A fits, B checked", halves[0]),
                                ("B fits, A checked", halves[1])):
            site_paths = {p.resolve() for p in site_half}
            is_site = np.array([Path(p).resolve() in site_paths for p in paths])
            checked = ~is_site
            column = {}
            site = embeddings[torch.from_numpy(is_site)]
            for row, density in site_densities(train_embeddings, site).items():
                scores = mahalanobis(embeddings, density).numpy()
                column[f"density fitted on {row}"] = auroc(labels[checked], scores[checked])
            column["lung brightness (no network)"] = auroc(labels[checked], brightness[checked])
            print(f"{Path(folder_path).name}, {name}: {int(is_site.sum())} site normals, "
                  f"{int((checked & (labels == 0)).sum())} normals and "
                  f"{int((labels == 1).sum())} abnormal films checked")
            columns[f"{Path(folder_path).name}: {name}"] = column
    print(f"{len(train)} training normals embedded")
    print_auroc_table("score", columns)


if __name__ == "__main__":
    main()
