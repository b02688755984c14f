"""Copy a trained run with its critic's density refitted for other views or embedding.

Re-embeds the run's training normals (its data folder less the held-out films) with
``--views`` 1 (the film alone, half the work) or 2 (the film and its mirror averaged)
and ``--embedding`` ``l2`` or ``sqrt`` (each defaults to the run's own), refits the
critic's density and heat scale on them, and refits the score statistics on the held-out
normals, in a copy of the run: the weights are untouched, so the copy is what training
with ``critic: {score_views: N, embedding: E, score: S}`` would have given with the same
weights (``--default-score S``: the score the copy scores with when none is asked for).
A checkpoint stripped of its files (the bundled model) is given its training folder with
``--data``: the held-out films are drawn again from the run's seed and settings.

    python examples/refit_critic_views.py --model runs/critic_s0/run --views 1 \
        --out runs/critic_s0_one_view/run
    python examples/refit_critic_views.py --model runs/critic_s0/run --embedding sqrt \
        --out runs/critic_s0_sqrt/run
    python examples/refit_critic_views.py --model anomaly/pretrained/critic.pt \
        --data ../shared/data/chest_xray/train/NORMAL --out runs/bundled/run
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from probe_common import critic_and_its_training_normals

from anomaly.checkpoint import at_least_format, load_checkpoint, save_checkpoint
from anomaly.data import uint8_to_model
from anomaly.families.critic.config import EMBEDDINGS, SCORE_KINDS
from anomaly.families.critic.scorer import (
    CriticFamily,
    heat_scale_of,
    recorded_embedding,
    recorded_views,
)
from anomaly.families.critic.train import fit_critic_density
from anomaly.io import find_images
from anomaly.train import checkpoint_path, fit_score_statistics, split_holdout


def restore_files(state: dict, data: str | Path) -> None:
    """Give a checkpoint stripped of its files its training folder ``data`` and the
    held-out films drawn from it again (the run's seed, fraction and patient pattern)."""
    config = state["train_config"]
    _, holdout, _ = split_holdout(find_images(data), config["holdout_fraction"],
                                  config["seed"], config.get("holdout_patient_pattern", ""))
    if len(holdout) < 2:
        raise ValueError(f"{data}: fewer than two films held out; not the run's folder?")
    state["data_dir"] = str(Path(data).resolve())
    state["holdout_paths"] = [str(Path(p).resolve()) for p in holdout]


def refit_views(model: str | Path, views: int | None, out: str | Path, log=print,
                embedding: str | None = None, default_score: str | None = None,
                data: str | Path | None = None) -> Path:
    """Write a copy of run ``model`` (a run directory, or a checkpoint given ``data``)
    at ``out`` whose critic scores ``views`` views with its density fitted on
    ``embedding`` embeddings and ``default_score`` by default (None: the run's own)."""
    if not Path(model).is_dir() and data is None:
        raise ValueError(f"{model}: give the run directory, which is copied whole, or the "
                         "checkpoint with its training folder (--data)")
    source = checkpoint_path(model) if Path(model).is_dir() else Path(model)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new folder")
    state = load_checkpoint(source)
    if data is not None:
        restore_files(state, data)
    if Path(model).is_dir():
        shutil.copytree(model, out)
    else:
        checkpoint_path(out).parent.mkdir(parents=True)
    part = state["critic"]
    if default_score is not None:
        part["default_score"] = default_score
    critic, _, images = critic_and_its_training_normals(state)
    device = torch.device("cpu")
    views = views or recorded_views(part)
    embedding = embedding or recorded_embedding(part)
    part["views"], part["embedding"] = views, embedding
    part["density"] = fit_critic_density(critic, images, device, views, embedding)
    part["heat_scale"] = heat_scale_of(CriticFamily(critic, part["density"], device,
                                                    views=views, heat="gradcam",
                                                    embedding=embedding),
                                       uint8_to_model(images[:256]))
    state.pop("score_stats", None)
    state.pop("thresholds", None)  # calibrated on the old density
    target = checkpoint_path(out)
    if embedding != "l2":  # versions before 3 would read its density as l2
        state = at_least_format(state, 3)
    save_checkpoint(state, target)
    fit_score_statistics(target, log=log)
    log(f"{target}: the critic scores {views} view(s), {embedding} embedding, density "
        f"refitted on {len(images)} training normals")
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run directory or checkpoint")
    parser.add_argument("--views", type=int, choices=(1, 2), default=None,
                        help="views to score (default: the run's)")
    parser.add_argument("--embedding", choices=EMBEDDINGS, default=None,
                        help="the density's embedding (default: the run's)")
    parser.add_argument("--default-score", choices=SCORE_KINDS, default=None,
                        help="the score the copy scores with by default (default: the run's)")
    parser.add_argument("--data", default=None,
                        help="the training folder of a checkpoint stripped of its files")
    parser.add_argument("--out", required=True, help="new run directory")
    args = parser.parse_args(argv)
    refit_views(args.model, args.views, args.out, embedding=args.embedding,
                default_score=args.default_score, data=args.data)


if __name__ == "__main__":
    main()
