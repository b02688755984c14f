"""Load a trained classifier and predict class probabilities (and Grad-CAM maps) for files.

The preprocessing (CLAHE, size) comes from the checkpoint, never re-specified.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from anomaly.checkpoint import CheckpointError, load_checkpoint
from anomaly.data import LabelledFolder, iter_preprocessed_batches, uint8_to_model
from anomaly.device import resolve_device
from anomaly.heatmap import write_png
from anomaly.io import display_path
from anomaly.preprocess import PreprocessConfig
from classify import CHECKPOINT_FORMAT
from classify.gradcam import GradCAM, cam_overlay
from classify.models import ClassifierNet


def resolve_classifier_checkpoint(model: str | os.PathLike) -> Path:
    """A run directory means its ``checkpoints/best.pt`` (``last.pt`` if there is no best)."""
    model = Path(model)
    if model.is_dir():
        checkpoints = model / "checkpoints"
        model = checkpoints / "best.pt"
        if not model.is_file() and (checkpoints / "last.pt").is_file():
            model = checkpoints / "last.pt"
    if not model.is_file():
        raise CheckpointError(f"{display_path(model)}: no checkpoint there")
    return model


@dataclass
class Predictions:
    """Class probabilities of the files that could be read.

    Attributes:
        paths: the N files that were read, in input order.
        probabilities: (N, K) array; rows sum to 1.
        failures: (path, reason) of every skipped file.
    """

    paths: list[Path]
    probabilities: np.ndarray
    failures: list[tuple[Path, str]] = field(default_factory=list)


class Classifier:
    """A trained classifier with its class names and preprocessing.

    Args:
        model: the network (moved to ``device`` and put in eval mode).
        class_names: output class names, in logit order.
        normal_class: name of the normal class.
        preprocess: preprocessing settings the model was trained with.
        device: compute device.
        batch_size: images per forward pass.
    """

    def __init__(self, model: ClassifierNet, class_names: Sequence[str], normal_class: str,
                 preprocess: PreprocessConfig, device: torch.device | str = "cpu",
                 batch_size: int = 32):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.class_names = list(class_names)
        self.normal_class = normal_class
        self.normal_index = self.class_names.index(normal_class)
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.validation: LabelledFolder | None = None  # fit's validation images, if known

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto",
                        batch_size: int = 32) -> Classifier:
        """Rebuild a classifier from a run directory or checkpoint file.

        Loading uses ``torch.load(weights_only=True)``: no code is unpickled.

        Raises:
            CheckpointError: missing, unsafe, corrupt or not a classifier checkpoint.
        """
        checkpoint = resolve_classifier_checkpoint(path)
        state = load_checkpoint(checkpoint, expected_format=CHECKPOINT_FORMAT)
        try:
            model = ClassifierNet(state["backbone"], int(state["num_classes"]),
                                  float(state["dropout"]), weights=None)
            model.load_state_dict(state["state_dict"])
            preprocess = PreprocessConfig(**state["preprocess"])
            classifier = cls(model, state["class_names"], state["normal_class"], preprocess,
                             resolve_device(device), batch_size)
            classifier.validation = LabelledFolder(
                [Path(p) for p in state.get("val_paths", [])], classifier.class_names,
                list(state.get("val_class_index", [])), classifier.normal_class)
            return classifier
        except (KeyError, RuntimeError, TypeError) as err:
            raise CheckpointError(f"{display_path(checkpoint)}: incomplete or inconsistent "
                                  f"classifier checkpoint ({type(err).__name__})") from None

    @torch.no_grad()
    def predict_tensor(self, images: torch.Tensor) -> np.ndarray:
        """Class probabilities of preprocessed uint8 images (N, 1, S, S): (N, K)."""
        outputs = []
        for start in range(0, len(images), self.batch_size):
            batch = uint8_to_model(images[start : start + self.batch_size].to(self.device))
            outputs.append(self.model(batch).float().softmax(1).cpu())
        if not outputs:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return torch.cat(outputs).numpy()

    def iter_batches(self, paths: Sequence[str | os.PathLike]
                     ) -> Iterator[tuple[list[Path], torch.Tensor, list[tuple[Path, str]]]]:
        """Read files in batches: (paths read, uint8 (B, 1, S, S), failures)."""
        return iter_preprocessed_batches(paths, self.preprocess, self.batch_size)

    def predict_paths(self, paths: Sequence[str | os.PathLike], progress: bool = False
                      ) -> Predictions:
        """Class probabilities of image files; unreadable files are skipped and listed."""
        from tqdm import tqdm

        result = Predictions([], np.zeros((0, len(self.class_names)), np.float32))
        parts = [result.probabilities]
        with tqdm(total=len(paths), desc="predicting", unit="img", disable=not progress) as bar:
            for good, images, failures in self.iter_batches(paths):
                result.paths.extend(good)
                result.failures.extend(failures)
                parts.append(self.predict_tensor(images))
                bar.update(len(good) + len(failures))
        result.probabilities = np.concatenate(parts)
        return result

    def anomaly_scores(self, probabilities: np.ndarray) -> np.ndarray:
        """Binary anomaly score: ``1 - P(normal)``."""
        return 1.0 - probabilities[:, self.normal_index]

    def cam_images(self, paths: Sequence[str | os.PathLike], display_size: int = 256
                   ) -> tuple[Predictions, dict[Path, np.ndarray]]:
        """Predict and draw a Grad-CAM overlay per readable file, for its predicted class.

        The map explains the end of the last convolutional block (``layer4`` for ResNets).

        Returns:
            The predictions and a uint8 BGR overlay per path predicted.
        """
        cam = GradCAM(self.model, self.model.cam_layer)
        result = Predictions([], np.zeros((0, len(self.class_names)), np.float32))
        parts, overlays = [result.probabilities], {}
        for good, images, failures in self.iter_batches(paths):
            result.failures.extend(failures)
            if not good:
                continue
            batch = uint8_to_model(images.to(self.device))
            maps, probabilities = cam(batch)
            result.paths.extend(good)
            parts.append(probabilities.cpu().numpy())
            for path, image, heat in zip(good, batch.cpu().numpy()[:, 0], maps):
                overlays[path] = cam_overlay(image, heat, display_size)
        result.probabilities = np.concatenate(parts)
        return result, overlays

    def write_cams(self, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                   display_size: int = 256) -> tuple[Predictions, list[Path]]:
        """Predict and write a Grad-CAM overlay PNG per readable file (:meth:`cam_images`).

        Files are named ``<stem>_cam.png`` (``<stem>_cam_2.png`` ... when stems repeat).

        Returns:
            The predictions and the written PNG paths (same order).
        """
        result, overlays = self.cam_images(paths, display_size)
        written, used = [], set()
        for path in result.paths:
            name, copy = f"{path.stem}_cam.png", 1
            while name in used:
                copy += 1
                name = f"{path.stem}_cam_{copy}.png"
            used.add(name)
            written.append(write_png(Path(out_dir) / name, overlays[path]))
        return result, written
