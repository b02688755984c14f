"""The supervised baseline end to end on tiny synthetic X-rays (CPU, 32x32, one epoch)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from anomaly.data import scan_labelled_folder
from classify import CHECKPOINT_FORMAT
from classify.augment import AugmentConfig, augment_batch
from classify.evaluate_classifier import evaluate_classifier
from classify.models import ClassifierNet
from classify.predict import Classifier
from classify.train import FitConfig, class_weights, fit
from cli.classify_cli import main
from tests.report_page import check_page_against_report, decoded_images

REPORT_KEYS = {"model", "n", "n_normal", "n_anomalous", "auroc", "auroc_ci95", "threshold",
               "threshold_source", "confusion_matrix", "accuracy", "precision", "recall",
               "specificity", "f1"}
FAST = ["--image-size", "32", "--batch-size", "10", "--fine-tune-epochs", "0", "--no-progress"]


def synthetic_image(kind: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """NORMAL: a smooth gradient; PNEUMONIA: plus bright blobs; COVID: plus dark bands."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    mix = rng.uniform(0.2, 0.8)
    image = (mix * x + (1 - mix) * y) * 120 + 50 + rng.normal(0, 4, (size, size))
    if kind == "PNEUMONIA":
        for _ in range(3):
            centre = tuple(int(v) for v in rng.integers(6, size - 6, 2))
            cv2.circle(image, centre, int(rng.integers(3, 6)), 255, -1)
    elif kind == "COVID":
        for row in rng.integers(4, size - 4, 2):
            image[row - 1 : row + 2, :] = 10
    return np.clip(image, 0, 255).astype(np.uint8)


def make_folder(root: Path, counts: dict[str, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for kind, count in counts.items():
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            cv2.imwrite(str(root / kind / f"{kind.lower()}_{i:02d}.png"),
                        synthetic_image(kind, rng))
    return root


@pytest.fixture(scope="module")
def binary_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("binary")
    train = make_folder(root / "train", {"NORMAL": 12, "PNEUMONIA": 8}, seed=0)
    (train / "NORMAL" / "broken.png").write_bytes(b"not a png")
    return {"train": train,
            "val": make_folder(root / "val", {"NORMAL": 6, "PNEUMONIA": 6}, seed=1),
            "test": make_folder(root / "test", {"NORMAL": 6, "PNEUMONIA": 6}, seed=2),
            "root": root}


@pytest.fixture(scope="module")
def binary_run(binary_data) -> tuple[Path, str]:
    """One ``classify fit --weights none`` run shared by the CLI tests."""
    config = binary_data["root"] / "fit.yaml"
    config.write_text("dropout: 0.1\nepochs: 5\nrotation_degrees: 5.0\n")
    run_dir = binary_data["root"] / "run"
    result = CliRunner().invoke(main, [
        "fit", "--data", str(binary_data["train"]), "--val", str(binary_data["val"]),
        "--out", str(run_dir), "--config", str(config), "--weights", "none", "--epochs", "1",
        "--seed", "3", *FAST])
    assert result.exit_code == 0, result.output
    return run_dir, result.output


def test_class_weights_inverse_frequency(tmp_path):
    folder = scan_labelled_folder(make_folder(tmp_path, {"NORMAL": 8, "PNEUMONIA": 4,
                                                         "COVID": 2}, seed=0))
    assert folder.class_names == ["COVID", "NORMAL", "PNEUMONIA"]
    weights = class_weights(folder.class_index, len(folder.class_names))
    # N / (K * n_c): 14 / (3 * 2), 14 / (3 * 8), 14 / (3 * 4)
    assert weights == pytest.approx([14 / 6, 14 / 24, 14 / 12])
    assert class_weights([0, 1, 0, 1], 2) == pytest.approx([1.0, 1.0])


def test_fit_writes_checkpoints_config_and_curves(binary_run):
    run_dir, output = binary_run
    assert "class weights (inverse frequency): NORMAL 0.833, PNEUMONIA 1.250" in output
    assert "warning: --weights none" in output
    assert "skipped" in output and "broken.png" in output
    for name in ("best.pt", "last.pt"):
        state = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert state["format"] == "cxr-classify"
        assert state["backbone"] == "resnet50"
        assert state["class_names"] == ["NORMAL", "PNEUMONIA"]
        assert state["normal_class"] == "NORMAL"
        assert state["preprocess"]["image_size"] == 32 and state["preprocess"]["clahe"]
    saved = (run_dir / "config.yaml").read_text()
    assert "dropout: 0.1" in saved and "epochs: 1" in saved  # file, then flag override
    assert list(run_dir.glob("events.out.tfevents.*"))


def test_evaluate_then_predict_with_cam(binary_run, binary_data, tmp_path):
    run_dir, _ = binary_run
    runner = CliRunner()
    report_dir = tmp_path / "report"
    result = runner.invoke(main, [
        "evaluate", "--model", str(run_dir), "--data", str(binary_data["test"]),
        "--val", str(binary_data["val"]), "--out", str(report_dir), "--resamples", "50",
        "--subgroup", "pneumonia_0", "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert report["subgroups"]["pneumonia_0"]["n_anomalous"] == 6
    assert report["subgroups"]["pneumonia_0"]["auroc"] == report["auroc"]
    assert report["model"] == "classify" and report["threshold_source"] == "val"
    assert (report["n"], report["n_normal"], report["n_anomalous"]) == (12, 6, 6)
    assert "per_class" not in report  # two classes: the binary report only
    assert (report_dir / "roc.png").exists()
    page = check_page_against_report(report_dir)  # numbers equal report.json, images decode
    assert len(page.figures) == 12  # 6 normal films, 6 pneumonias, each with its Grad-CAM
    cams = decoded_images(page)[3:]
    assert len(cams) == 12 and all(cam.shape == (192, 192, 3) for cam in cams)

    images = [binary_data["test"] / "NORMAL" / "normal_00.png",
              binary_data["test"] / "PNEUMONIA" / "pneumonia_00.png"]
    broken = binary_data["train"] / "NORMAL" / "broken.png"
    cam_dir = tmp_path / "cams"
    args = ["predict", "--model", str(run_dir), "--cam", str(cam_dir)]
    for path in (images[0], broken, images[1]):
        args += ["--image", str(path)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if "broken.png" in line] == [
        f"skipped {broken}: is not a readable image (corrupt, truncated or unknown format)"]
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == [str(p) for p in images]
    for row in rows:
        probabilities = [float(cell.split("=")[1]) for cell in row[1:3]]
        assert sum(probabilities) == pytest.approx(1.0, abs=2e-4)
        assert row[3] in ("predicted=NORMAL", "predicted=PNEUMONIA")
    for path in images:
        overlay = cv2.imread(str(cam_dir / f"{path.stem}_cam.png"))
        assert overlay is not None and overlay.shape == (256, 256, 3)


def test_without_val_the_fits_validation_images_set_the_threshold(binary_run, binary_data,
                                                                   tmp_path):
    run_dir, _ = binary_run
    last = run_dir / "checkpoints" / "last.pt"
    args = ["evaluate", "--data", str(binary_data["test"]), "--resamples", "20", "--no-progress"]
    explicit = CliRunner().invoke(main, [*args, "--model", str(last), "--out",
                                         str(tmp_path / "a"), "--val", str(binary_data["val"])])
    implicit = CliRunner().invoke(main, [*args, "--model", str(last), "--out",
                                         str(tmp_path / "b")])
    assert explicit.exit_code == 0 and implicit.exit_code == 0, implicit.output
    assert "validation images of classify fit" in implicit.output
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    assert b["threshold_source"] == "val" and b["threshold"] == pytest.approx(a["threshold"])

    state = torch.load(last, weights_only=True)  # the fit's validation images are gone
    state["val_paths"] = [str(tmp_path / "gone" / Path(p).name) for p in state["val_paths"]]
    moved = tmp_path / "moved.pt"
    torch.save(state, moved)
    refused = CliRunner().invoke(main, [*args, "--model", str(moved), "--out",
                                        str(tmp_path / "c")])
    assert refused.exit_code == 1 and "--threshold-on-test" in refused.output
    result = CliRunner().invoke(main, [*args, "--model", str(moved), "--out",
                                       str(tmp_path / "d"), "--threshold-on-test"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "d" / "report.json").read_text())["threshold_source"] == "test"


def test_evaluate_refuses_the_fits_validation_images_as_test(binary_run, binary_data,
                                                            tmp_path):
    """Without --val the threshold comes from fit's validation images: evaluating on that
    very folder would pick the threshold on the test images."""
    run_dir, _ = binary_run
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["val_paths"] and all(Path(p).is_absolute() for p in state["val_paths"])
    refused = CliRunner().invoke(main, [
        "evaluate", "--model", str(run_dir / "checkpoints" / "last.pt"), "--data",
        str(binary_data["val"]), "--out", str(tmp_path / "e"), "--resamples", "20",
        "--no-progress"])
    assert refused.exit_code == 1, refused.output
    assert "share" in refused.output and "recorded by classify fit" in refused.output
    assert not (tmp_path / "e" / "report.json").exists()


def test_fit_refuses_a_validation_folder_sharing_training_images(binary_data, tmp_path):
    shared = tmp_path / "val"
    shutil.copytree(binary_data["val"], shared)
    first = sorted((binary_data["train"] / "PNEUMONIA").glob("*.png"))[0]
    shutil.copy(first, shared / "PNEUMONIA" / "copied.png")
    refused = CliRunner().invoke(main, [
        "fit", "--data", str(binary_data["train"]), "--val", str(shared), "--out",
        str(tmp_path / "run"), "--weights", "none", "--epochs", "1", *FAST])
    assert refused.exit_code == 1, refused.output
    assert "share 1 file" in refused.output and "copied.png" in refused.output


def test_weights_path_freezes_base_then_fine_tunes_layer4(binary_data, tmp_path):
    base = torchvision_resnet50_state(tmp_path / "resnet50.pth")
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "fit", "--data", str(binary_data["train"]), "--val", str(binary_data["val"]),
        "--out", str(run_dir), "--weights", str(base), "--epochs", "1",
        *FAST, "--fine-tune-epochs", "1", "--batch-size", "20"])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output and "unfroze layer4" in result.output
    original = torch.load(base, weights_only=True)
    trained = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["state_dict"]
    assert trained["net.fc.1.weight"].shape == (2, 2048)
    # frozen in both stages: weights and BatchNorm running statistics unchanged
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.bn1.running_var",
                "layer3.5.conv3.weight", "layer3.5.bn3.running_mean"):
        assert torch.equal(trained["net." + key], original[key]), key
    # fine-tuned in stage 2
    assert not torch.equal(trained["net.layer4.2.conv3.weight"], original["layer4.2.conv3.weight"])
    assert not torch.equal(trained["net.layer4.2.bn3.running_mean"],
                           original["layer4.2.bn3.running_mean"])


def torchvision_resnet50_state(path: Path) -> Path:
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path


def test_frozen_base_has_no_gradients_and_eval_batchnorm():
    model = ClassifierNet("resnet50", num_classes=2, dropout=0.2)
    model.freeze_base()
    model.train()
    head = {id(p) for p in model.head.parameters()}
    assert head and all(p.requires_grad == (id(p) in head) for p in model.parameters())
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and not any(m.training for m in batchnorms)
    assert model.head.training  # dropout of the head is active

    model.unfreeze_last_block()
    model.train()
    assert model.last_block_names == ["layer4"]
    assert all(m.training for m in model.net.layer4.modules() if isinstance(m, nn.BatchNorm2d))
    assert not any(m.training for m in model.net.layer3.modules()
                   if isinstance(m, nn.BatchNorm2d))
    assert all(p.requires_grad for p in model.net.layer4.parameters())
    assert not any(p.requires_grad for p in model.net.layer3.parameters())


def test_three_classes_per_class_table_and_macro_auroc(tmp_path):
    counts = {"COVID": 8, "NORMAL": 8, "PNEUMONIA": 8}
    train = make_folder(tmp_path / "train", counts, seed=4)
    val = make_folder(tmp_path / "val", counts, seed=5)
    config = FitConfig(image_size=32, batch_size=12, epochs=1, weights="none",
                       backbone="resnet18")  # fine_tune_epochs 5 by default: no stage 2
    said = []
    best = fit(config, train, val, tmp_path / "run", progress=False, log=said.append)
    assert best == tmp_path / "run" / "checkpoints" / "best.pt"
    assert any("no fine-tuning stage" in line for line in said)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["stage"] == 1 and last["epoch"] == 1
    report = evaluate_classifier(tmp_path / "run", train, tmp_path / "report", val_dir=val,
                                 resamples=20, progress=False, log=lambda *a: None)
    assert REPORT_KEYS <= set(report)
    assert report["n"] == 24 and report["n_normal"] == 8 and report["n_anomalous"] == 16
    assert set(report["per_class"]) == set(counts)
    for row in report["per_class"].values():
        assert {"precision", "recall", "f1", "support"} <= set(row) and row["support"] == 8
    assert (tmp_path / "report" / "per_class.txt").exists()
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["macro_auroc_ovr"] == pytest.approx(report["macro_auroc_ovr"])

    classifier = Classifier.from_checkpoint(best)
    # the macro one-vs-rest AUROC, recomputed from the classifier's own probabilities
    from sklearn.metrics import roc_auc_score

    everything = classifier.predict_paths(sorted(train.rglob("*.png")))  # the folder evaluated
    truth = [classifier.class_names.index(p.parent.name) for p in everything.paths]
    expected = roc_auc_score(truth, everything.probabilities, multi_class="ovr",
                             average="macro")
    assert report["macro_auroc_ovr"] == pytest.approx(expected, abs=1e-6)
    predictions = classifier.predict_paths(sorted((val / "COVID").glob("*.png")))
    assert predictions.probabilities.shape == (8, 3)
    assert np.allclose(predictions.probabilities.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_non_checkpoint_model_is_a_one_line_error(binary_data, tmp_path, command):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"this is not a checkpoint")
    image = binary_data["test"] / "NORMAL" / "normal_00.png"
    args = {"evaluate": ["evaluate", "--model", str(fake), "--data", str(binary_data["test"]),
                         "--out", str(tmp_path / "report")],
            "predict": ["predict", "--model", str(fake), "--image", str(image)]}[command]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert "model.pt" in result.output and "Traceback" not in result.output


def test_gan_checkpoint_is_not_a_classifier(tmp_path):
    from anomaly.checkpoint import save_checkpoint

    save_checkpoint({"format": "cxr-anomaly-gan", "format_version": 1}, tmp_path / "gan.pt")
    with pytest.raises(ValueError, match="not a cxr-classify checkpoint"):
        Classifier.from_checkpoint(tmp_path / "gan.pt")


def test_imagenet_offline_is_a_one_line_hint(binary_data, tmp_path, monkeypatch):
    import torchvision.models._api as weights_api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    monkeypatch.setattr(weights_api, "load_state_dict_from_url", offline)
    result = CliRunner().invoke(main, [
        "fit", "--data", str(binary_data["train"]), "--val", str(binary_data["val"]),
        "--out", str(tmp_path / "run"), "--weights", "imagenet", *FAST])
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "--weights none" in error[0] and "--weights PATH" in error[0]
    assert "Traceback" not in result.output


def test_unknown_backbone_and_bad_weights_file(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone"):
        ClassifierNet("resnet5000")
    junk = tmp_path / "weights.pth"
    torch.save({"something.else": torch.zeros(3)}, junk)
    with pytest.raises(ValueError, match="does not fit"):
        ClassifierNet("resnet18", weights=junk)


def test_augment_batch_keeps_shape_and_range():
    images = torch.rand(6, 1, 32, 32) * 2 - 1
    out = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, images)
    still = augment_batch(images, AugmentConfig(False, 0.0, 0.0, 0.0, 0.0))
    assert torch.allclose(still, images, atol=1e-5)


def test_too_small_for_inception_is_one_line(binary_data, tmp_path):
    result = CliRunner().invoke(main, [
        "fit", "--data", str(binary_data["train"]), "--val", str(binary_data["val"]),
        "--out", str(tmp_path / "run"), "--weights", "none", "--backbone", "inception_v3",
        "--image-size", "64", "--epochs", "1", "--no-progress"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--image-size 64 is too small for inception_v3" in lines[0]
    assert "Traceback" not in result.output


def test_classifier_does_not_import_the_gan_training_code():
    import subprocess
    import sys

    code = ("import sys, classify.train, cli.classify_cli; "
            "print('anomaly.train' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], check=True)
    assert done.stdout.strip() == "False"


def test_fit_resumes_after_a_kill_and_matches_an_uninterrupted_fit(binary_data, tmp_path):
    """Killed after each epoch in turn (an on_epoch hook raising once the checkpoint is
    written), a resumed fit ends with the weights, best loss and epochs of one that never
    stopped, through both stages; other settings are refused."""
    import torchvision

    from anomaly.checkpoint import load_checkpoint
    from anomaly.config import ConfigError

    train, val = binary_data["train"], binary_data["val"]
    base = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), base)
    config = FitConfig(image_size=32, batch_size=8, epochs=2, fine_tune_epochs=2,
                       weights=str(base), backbone="resnet18", device="cpu")
    quiet = dict(progress=False, log=lambda *a: None)
    fit(config, train, val, tmp_path / "whole", **quiet)

    class Killed(Exception):
        pass

    def kill(epoch, metrics):
        raise Killed

    run = tmp_path / "killed"
    with pytest.raises(Killed):
        fit(config, train, val, run, on_epoch=kill, **quiet)
    for expected_epoch in (2, 3):  # killed again after the end of stage 1, then in stage 2
        with pytest.raises(Killed):
            fit(config, train, val, run, on_epoch=kill, resume=True, **quiet)
        assert load_checkpoint(run / "checkpoints" / "last.pt",
                               expected_format=CHECKPOINT_FORMAT)["epoch"] == expected_epoch
    with pytest.raises(ConfigError, match="lr 0.001 there, 0.5 now"):
        fit(dataclasses.replace(config, lr=0.5), train, val, run, resume=True, **quiet)
    fit(config, train, val, run, resume=True, **quiet)
    for name in ("last.pt", "best.pt"):
        resumed = load_checkpoint(run / "checkpoints" / name, expected_format=CHECKPOINT_FORMAT)
        whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / name,
                                expected_format=CHECKPOINT_FORMAT)
        assert (resumed["epoch"], resumed["stage"]) == (whole["epoch"], whole["stage"])
        for key, value in whole["state_dict"].items():
            torch.testing.assert_close(resumed["state_dict"][key], value)


def test_a_nan_or_mismatched_classifier_checkpoint_is_refused_not_called_normal(
        binary_run, binary_data, tmp_path):
    run_dir, _ = binary_run
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    image = binary_data["test"] / "PNEUMONIA" / "pneumonia_00.png"
    nan = {**state, "state_dict": {**state["state_dict"]}}
    name = next(k for k, v in nan["state_dict"].items() if v.is_floating_point())
    nan["state_dict"][name] = torch.full_like(nan["state_dict"][name], float("nan"))
    fewer = {**state, "class_names": ["NORMAL"]}
    for broken, needle in ((nan, "not finite"), (fewer, "num_classes 2 but 1 class names")):
        path = tmp_path / "broken.pt"
        torch.save(broken, path)
        result = CliRunner().invoke(main, ["predict", "--model", str(path), "--image",
                                           str(image)])
        assert result.exit_code == 1 and needle in result.output, result.output
        assert "predicted=" not in result.output and "Traceback" not in result.output


def test_predictions_are_kept_when_a_grad_cam_cannot_be_written(binary_run, binary_data,
                                                                tmp_path, monkeypatch):
    import errno

    import classify.predict

    def full(path, image):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(classify.predict, "write_png", full)
    run_dir, _ = binary_run
    image = binary_data["test"] / "PNEUMONIA" / "pneumonia_00.png"
    result = CliRunner().invoke(main, ["predict", "--model", str(run_dir), "--image",
                                       str(image), "--cam", str(tmp_path / "cams")])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{image}\tNORMAL=")
    assert "grad-cam not written" in result.stderr and "No space left" in result.stderr


def test_grad_cam_other_than_the_normal_class_explains_the_abnormal_one():
    """A report's panels show the evidence of disease, also on films predicted normal."""
    from classify.gradcam import GradCAM
    from classify.models import ClassifierNet

    torch.manual_seed(0)
    model = ClassifierNet("resnet18", 3, 0.0, weights=None).eval()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        head.bias[1] += 10.0  # class 1, the normal one here, predicted for every film
    images = torch.randn(4, 1, 128, 128)  # layer4: 4x4 cells, maps that can differ
    cam = GradCAM(model, model.cam_layer)
    _, probabilities = cam(images)
    ranked = probabilities.clone()
    ranked[:, 1] = -1
    expected, _ = cam(images, class_index=ranked.argmax(1))
    maps, _ = cam(images, other_than=1)
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert (probabilities.argmax(1) == 1).all()
    predicted, _ = cam(images)
    assert not np.allclose(predicted, maps)  # not the predicted (normal) class's map


@pytest.mark.parametrize("backbone, expected", [
    ("resnet18", ["layer4"]),
    ("vgg11", ["features.16", "features.18"]),  # the convolutions of its last stage
    ("efficientnet_b0", ["features.7", "features.8"]),  # last stage, then its 1x1 conv
    ("mobilenet_v2", ["features.17", "features.18"]),
])
def test_the_last_block_is_a_whole_stage(backbone, expected):
    import torchvision

    from classify.models import _find_head, _last_block_names

    net = getattr(torchvision.models, backbone)(weights=None)
    assert _last_block_names(net, _find_head(net)) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_missing_is_not_called_a_broken_checkpoint(binary_run, binary_data):
    run_dir, _ = binary_run
    result = CliRunner().invoke(main, ["predict", "--model", str(run_dir), "--device", "cuda",
                                       "--image", str(binary_data["test"] / "NORMAL" /
                                                      "normal_00.png")])
    assert result.exit_code == 1 and "CUDA" in result.output, result.output
    assert "checkpoint" not in result.output


def test_a_device_name_that_is_not_one_is_a_one_line_error(binary_run, binary_data):
    from anomaly.device import resolve_device

    with pytest.raises(ValueError, match="'gpu' is not a device"):
        resolve_device("gpu")
    run_dir, _ = binary_run
    result = CliRunner().invoke(main, ["predict", "--model", str(run_dir), "--device", "gpu",
                                       "--image", str(binary_data["test"] / "NORMAL" /
                                                      "normal_00.png")])
    assert result.exit_code == 1 and "is not a device" in result.output, result.output
    assert "Traceback" not in result.output and "checkpoint" not in result.output
