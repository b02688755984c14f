"""What the probe scripts share: their command line and their AUROC table."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from anomaly.data import find_images, load_images, scan_labelled_folder, uint8_to_model


def probe_arguments(doc: str, argv=None, extra=None) -> argparse.Namespace:
    """Parse ``--model RUN --data FOLDER [--data ...] [--threads N]`` (and apply --threads);
    ``extra(parser)`` adds a probe's own options."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if extra is not None:
        extra(parser)
    parser.add_argument("--model", required=True, help="run directory or checkpoint")
    parser.add_argument("--data", action="append", required=True,
                        help="labelled folder (repeatable): one AUROC column each")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def print_auroc_table(row_title: str, columns: dict[str, dict[str, float]]) -> None:
    """A Markdown table: one row per name, one AUROC column per labelled folder."""
    names = list(next(iter(columns.values())))
    print(f"| {row_title} | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{columns[c][name]:.3f}" for c in columns) + " |")


KINDS = ["bacteria", "virus"]  # the chest X-ray data's kinds of pneumonia, by file name


def add_kind_option(parser) -> None:
    """``--kind TEXT`` (repeatable; read with :func:`chosen_kinds`)."""
    parser.add_argument("--kind", action="append", default=None,
                        help="a kind of anomalous file by name (repeatable; default: "
                             + " and ".join(KINDS) + ")")


def chosen_kinds(args) -> list[str]:
    """The ``--kind`` values given, or :data:`KINDS`."""
    return args.kind or KINDS


def subgroup_cells(paths, labels: np.ndarray, scores: np.ndarray, kinds: list[str]) -> str:
    """A table cell: the AUROC of every file, then in brackets that of each kind of
    anomalous file (its name holds the kind, any case) against every normal file."""
    from anomaly.evaluate import auroc, subgroup_files

    normal = labels == 0
    by_kind = [auroc(labels[normal | kind], scores[normal | kind])
               for kind in (subgroup_files(paths, labels, k) for k in kinds)]
    return f"{auroc(labels, scores):.3f} (" + " / ".join(f"{a:.3f}" for a in by_kind) + ")"


def print_subgroup_header(row_title: str, folders: dict[str, tuple], kinds: list[str]) -> None:
    """The head of a Markdown table of :func:`print_subgroup_row` rows: one column per
    labelled folder (:func:`labelled_folders`)."""
    print(f"| {row_title} | " + " | ".join(
        f"{name}: all ({' / '.join(kinds)})" for name in folders) + " |")
    print("|---|" + "---|" * len(folders))


def print_subgroup_row(title: str, folders: dict[str, tuple], scores: dict[str, np.ndarray],
                       kinds: list[str]) -> None:
    """One row: each folder's :func:`subgroup_cells` of its ``scores``."""
    cells = [subgroup_cells(paths, labels, scores[name], kinds)
             for name, (paths, labels, _) in folders.items()]
    print(f"| {title} | " + " | ".join(cells) + " |", flush=True)


def labelled_folders(folder_paths, preprocess_config, kinds: list[str]) -> dict[str, tuple]:
    """Each labelled folder's :func:`load_labelled_films`, by its name; a kind of
    anomalous file that names none of a folder's files is refused first."""
    from anomaly.data import scan_labelled_folder
    from anomaly.evaluate import check_subgroups

    for folder_path in folder_paths:
        folder = scan_labelled_folder(folder_path)
        check_subgroups(folder.paths, folder.binary_labels, kinds, str(folder_path))
    return {Path(f).name: load_labelled_films(f, preprocess_config) for f in folder_paths}


def load_labelled_films(folder_path, preprocess_config
                        ) -> tuple[list[Path], np.ndarray, torch.Tensor]:
    """A labelled folder's readable images, preprocessed: (their paths, binary labels (N,),
    images (N, 1, S, S) in [-1, 1])."""
    folder = scan_labelled_folder(folder_path)
    loaded = load_images(folder.paths, preprocess_config, progress=False)
    label_of = dict(zip(folder.paths, folder.binary_labels))
    return (list(loaded.paths), np.array([label_of[p] for p in loaded.paths]),
            uint8_to_model(loaded.images))


def load_labelled_images(folder_path, preprocess_config) -> tuple[np.ndarray, torch.Tensor]:
    """:func:`load_labelled_films` without the paths: (binary labels (N,), images)."""
    _, labels, images = load_labelled_films(folder_path, preprocess_config)
    return labels, images


def held_out_normals(state: dict, preprocess_config) -> torch.Tensor:
    """The normal films a run held out from training, preprocessed, (N, 1, S, S) in
    [-1, 1]."""
    return uint8_to_model(load_images(state["holdout_paths"], preprocess_config,
                                      progress=False).images)


def training_normals(state: dict, preprocess_config) -> torch.Tensor:
    """The normal films a run was trained on (its data folder less the held-out films),
    preprocessed, uint8 (N, 1, S, S)."""
    held_out = {Path(p).resolve() for p in state.get("holdout_paths", [])}
    paths = [p for p in find_images(state["data_dir"]) if Path(p).resolve() not in held_out]
    return load_images(paths, preprocess_config, progress=False).images


def run_embedding(state: dict) -> str:
    """The embedding a run's critic density was fitted on (runs before it: ``l2``)."""
    from anomaly.families.critic.scorer import recorded_embedding

    return recorded_embedding(state["critic"])


def run_views(state: dict) -> int:
    """The views a run's critic scores with (runs before they were recorded: 2)."""
    from anomaly.families.critic.scorer import recorded_views

    return recorded_views(state["critic"])


@torch.no_grad()
def film_cells(critic, images: torch.Tensor, views: int) -> torch.Tensor:
    """The critic's max-pooled last-block cells (B, C, H, W) of images (B, 1, S, S): of the
    films alone, or with their mirror images' mirrored back (``views=2``), summed as the
    run's density sums its views."""
    cells = critic.pool(critic.feature_map(images)).float()
    if views == 2:
        cells = cells + critic.pool(critic.feature_map(images.flip(-1))).float().flip(-1)
    return cells


def critic_and_its_training_normals(state: dict):
    """A run's critic (eval mode, BatchNorm unfolded), its preprocessing, and the normal
    films it was trained on (:func:`training_normals`, uint8)."""
    from anomaly.families.critic.network import CriticArchitecture, OpacityCritic
    from anomaly.score import Scorer

    part = state["critic"]
    config = Scorer.from_state(state, mode="critic", device="cpu").preprocess_config
    critic = OpacityCritic(CriticArchitecture(**part["architecture"]))
    critic.load_state_dict(part["network"])
    return critic.eval(), config, training_normals(state, config)
