"""Generator-based scores that use the critic: f-AnoGAN's residual in the critic's space.

For a run that holds both families (the default: critic, then DCGAN and encoder), each
film x is reconstructed by the encoder, G(E(x)), and compared with itself in the
critic's feature space as well as in pixels:

    critic residual   mean |c(x) - c(G(E(x)))| over the critic's last feature map
                      (f-AnoGAN's feature residual, with the critic as feature extractor)
    critic distance   1 - cos(e(x), e(G(E(x)))) of the critic's embeddings
    density of G(E(x)) the critic's density of the reconstruction (control: it should
                      not separate, since G draws normal films)
    lung-opacity      the DCGAN's positive smoothed residual inside the lung prior

beside the critic's own ``density`` and the no-network ``brightness`` of the same films.
Every AUROC column is one labelled folder; no label sets anything.

    python examples/critic_residual_probe.py --model RUN \
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
import torch.nn.functional as F
from probe_common import print_auroc_table, probe_arguments

from anomaly.checkpoint import load_checkpoint
from anomaly.data import iter_preprocessed_batches, scan_labelled_folder, uint8_to_model
from anomaly.density import mahalanobis
from anomaly.evaluate import auroc
from anomaly.families.critic.scorer import critic_embedding
from anomaly.score import Scorer


@torch.no_grad()
def generator_scores(critic_scorer: Scorer, encoder_scorer: Scorer, images: torch.Tensor
                     ) -> dict[str, np.ndarray]:
    """Every probe score of one batch of preprocessed images (B, 1, S, S)."""
    critic = critic_scorer.family.critic
    density = critic_scorer.family.density
    encoded = encoder_scorer.score_tensor(images, heatmaps=False)
    reconstruction = encoded.reconstructions.to(images.device)
    maps, maps_rec = critic.feature_map(images), critic.feature_map(reconstruction)
    views, embedding = critic_scorer.family.views, critic_scorer.family.embedding  # the run's
    emb, emb_rec = (critic_embedding(critic, images, views, embedding),
                    critic_embedding(critic, reconstruction, views, embedding))
    scored = critic_scorer.score_tensor(images, heatmaps=False)
    return {
        "critic density (default)": scored.density,
        "brightness (no network)": scored.brightness,
        "lung-opacity of G(E(x))": encoded.opacity,
        "critic residual |c(x) - c(G(E(x)))|": (maps - maps_rec).abs().flatten(1).mean(1)
        .numpy(),
        "critic distance 1 - cos(e(x), e(G(E(x))))": (1 - F.cosine_similarity(emb, emb_rec))
        .numpy(),
        "critic density of G(E(x)) (control)": mahalanobis(emb_rec, density).numpy(),
    }


def main(argv=None) -> None:
    args = probe_arguments(__doc__, argv)
    state = load_checkpoint(args.model)
    critic_scorer = Scorer.from_state(state, mode="critic", device="cpu")
    encoder_scorer = Scorer.from_state(state, mode="encoder", device="cpu")
    columns = {}
    for folder_path in args.data:
        folder = scan_labelled_folder(folder_path)
        label_of = dict(zip(folder.paths, folder.binary_labels))
        labels, values = [], {}
        for paths, batch, _ in iter_preprocessed_batches(folder.paths,
                                                         critic_scorer.preprocess_config, 64):
            if not paths:
                continue
            for name, value in generator_scores(critic_scorer, encoder_scorer,
                                                uint8_to_model(batch)).items():
                values.setdefault(name, []).extend(np.asarray(value).tolist())
            labels += [label_of[p] for p in paths]
        columns[Path(folder_path).name] = {name: auroc(np.array(labels), np.array(v))
                                           for name, v in values.items()}
    print_auroc_table("score", columns)


if __name__ == "__main__":
    main()
