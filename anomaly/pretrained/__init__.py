"""The pretrained model shipped inside the package: the recommended critic, trained on the
normal films of the pediatric chest X-ray set (docs/model_card.md).

``anomaly score`` without ``--model``, ``Detector.pretrained()`` and ``--model pretrained``
use it. :func:`bundle` makes it from a trained run: the run's checkpoint without what only
training needs (optimiser, schedule and random states, the paths of the training films),
and ``expected.json`` beside it, the scores of the bundled example films, which the
tests compare against so that a change to preprocessing or the network cannot pass
without retraining it.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

PRETRAINED = "pretrained"  # what --model takes to name it
CHECKPOINT_NAME = "critic.pt"
EXPECTED_NAME = "expected.json"
TRAINING_ONLY = ("optimizer", "schedule", "order_rng", "torch_rng",  # of each family part
                 "map_optimizer", "map_schedule", "map_order_rng", "map_torch_rng")
DESCRIPTION = ("the bundled pretrained critic (trained on the pediatric chest X-ray set's "
               "normal films; docs/model_card.md)")


def folder() -> Path:
    """The folder of the bundled model inside the installed package."""
    return Path(str(resources.files(__name__)))


def checkpoint() -> Path:
    """The bundled checkpoint, refused in one line when this install has none."""
    path = folder() / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: this install holds no pretrained model; pass "
                                "--model RUN (a trained run or an exported model)")
    return path


def bundled_checkpoint() -> Path:
    """:func:`checkpoint`, its absence as a :class:`anomaly.errors.CheckpointError`."""
    from anomaly.errors import CheckpointError

    try:
        return checkpoint()
    except FileNotFoundError as err:
        raise CheckpointError(str(err)) from None


def is_pretrained(model: str | os.PathLike | None) -> bool:
    """Whether ``model`` names the bundled model (None or ``pretrained``)."""
    return model is None or str(model) == PRETRAINED


def resolve(model: str | os.PathLike | None) -> Path:
    """``model`` as a path, the bundled checkpoint where it names the pretrained model."""
    return checkpoint() if is_pretrained(model) else Path(model)


def expected_scores() -> dict:
    """The recorded scores of the bundled example films (see :func:`bundle`)."""
    return json.loads((folder() / EXPECTED_NAME).read_text())


def strip_for_scoring(state: dict) -> dict:
    """A checkpoint dict without what only training (or resuming it) needs."""
    state = dict(state)
    for name in state.get("families", []):
        part = state.get(name)
        if isinstance(part, dict):
            state[name] = {k: v for k, v in part.items() if k not in TRAINING_ONLY}
    state["holdout_paths"] = []  # the training machine's files; their scores are kept
    state["data_dir"] = "train/NORMAL of the pediatric chest X-ray set (Kermany et al.)"
    return state


def bundle(run: str | os.PathLike, out_dir: str | os.PathLike,
           example_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/critic.pt`` (the run stripped for scoring) and ``expected.json``
    (the scores and components of the films under ``example_dir``)."""
    from anomaly.atomic import write_text_atomically
    from anomaly.checkpoint import load_checkpoint, save_checkpoint
    from anomaly.io import find_images
    from anomaly.score import Scorer

    state = strip_for_scoring(load_checkpoint(run))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / CHECKPOINT_NAME
    save_checkpoint(state, target)
    scorer = Scorer.from_checkpoint(target, device="cpu")
    root = Path(example_dir)
    paths = find_images(root)
    result = scorer.score_paths(paths, progress=False)
    expected = {"score": scorer.score, "mode": scorer.mode,
                "films": {p.relative_to(root).as_posix(): {
                    "score": result.score[i],
                    **{name: result.values[name][i] for name in result.values}}
                    for i, p in enumerate(result.paths)}}
    write_text_atomically(out_dir / EXPECTED_NAME, json.dumps(expected, indent=1) + "\n")
    return target
