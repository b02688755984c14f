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
from anomaly.validate import whole_number
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


def keep_finite_rows(paths: Sequence[Path], probabilities: np.ndarray,
                     failures: list[tuple[Path, str]]) -> np.ndarray:
    """Which rows of ``probabilities`` are finite; the others' paths join ``failures``
    (a NaN must not become the first class by argmax)."""
    finite = np.isfinite(probabilities).all(axis=1)
    failures.extend((path, "the model's output is not finite") for path, ok
                    in zip(paths, finite) if not ok)
    return finite


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
        self.batch_size = whole_number(batch_size, "batch_size", low=1)
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
        torch_device = resolve_device(device)  # its errors are not the checkpoint's
        batch_size = whole_number(batch_size, "batch_size", low=1)
        try:
            if int(state["num_classes"]) != len(state["class_names"]):
                raise CheckpointError(f"{display_path(checkpoint)}: num_classes "
                                      f"{state['num_classes']} but {len(state['class_names'])} "
                                      "class names")
            bad = [name for name, tensor in state["state_dict"].items()
                   if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
            if bad:
                raise CheckpointError(f"{display_path(checkpoint)}: weights that are not "
                                      f"finite ({bad[0]}{' ...' if len(bad) > 1 else ''})")
            model = ClassifierNet(state["backbone"], int(state["num_classes"]),
                                  float(state["dropout"]), weights=None)
            model.load_state_dict(state["state_dict"])
            preprocess = PreprocessConfig(**state["preprocess"])
            classifier = cls(model, state["class_names"], state["normal_class"], preprocess,
                             torch_device, batch_size)
            classifier.validation = LabelledFolder(
                [Path(p) for p in state.get("val_paths", [])], classifier.class_names,
                list(state.get("val_class_index", [])), classifier.normal_class)
            return classifier
        except CheckpointError:
            raise
        except (AttributeError, KeyError, RuntimeError, TypeError, ValueError) as err:
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
                bar.update(len(good) + len(failures))
                result.failures.extend(failures)
                probabilities = self.predict_tensor(images)
                finite = keep_finite_rows(good, probabilities, result.failures)
                result.paths.extend(p for p, ok in zip(good, finite) if ok)
                parts.append(probabilities[finite])
        result.probabilities = np.concatenate(parts)
        return result

    def anomaly_scores(self, probabilities: np.ndarray) -> np.ndarray:
        """Binary anomaly score: ``1 - P(normal)``."""
        return 1.0 - probabilities[:, self.normal_index]

    def cam_images(self, paths: Sequence[str | os.PathLike], display_size: int = 256,
                   abnormal: bool = False) -> tuple[Predictions, dict[Path, np.ndarray]]:
        """Predict and draw a Grad-CAM overlay per readable file, for its predicted class
        (with ``abnormal``: its most likely class other than the normal one, as a report
        shows the evidence of disease on every film, the missed ones too).

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
            maps, probabilities = cam(batch, other_than=self.normal_index if abnormal
                                      else None)
            probabilities = probabilities.cpu().numpy()
            finite = keep_finite_rows(good, probabilities, result.failures)
            parts.append(probabilities[finite])
            for path, image, heat, ok in zip(good, batch.cpu().numpy()[:, 0], maps, finite):
                if ok:
                    result.paths.append(path)
                    overlays[path] = cam_overlay(image, heat, display_size)
        result.probabilities = np.concatenate(parts)
        return result, overlays

    def write_cams(self, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                   display_size: int = 256
                   ) -> tuple[Predictions, list[Path], list[tuple[Path, str]]]:
        """Predict and write a Grad-CAM overlay PNG per readable file (:meth:`cam_images`).

        Files are named ``<stem>_cam.png`` (``<stem>_cam_2.png`` ... when stems repeat).

        Returns:
            The predictions, the written PNG paths, and (PNG path, reason) for each overlay
            that could not be written (a full disk, an unwritable folder): the predictions
            are kept.
        """
        result, overlays = self.cam_images(paths, display_size)
        written, unwritten, used = [], [], set()
        for path in result.paths:
            name, copy = f"{path.stem}_cam.png", 1
            while name in used:
                copy += 1
                name = f"{path.stem}_cam_{copy}.png"
            used.add(name)
            try:
                written.append(write_png(Path(out_dir) / name, overlays[path]))
            except OSError as err:
                unwritten.append((Path(out_dir) / name, err.strerror or type(err).__name__))
        return result, written, unwritten
