"""``classify``: the supervised baseline: fit, evaluate, predict (with Grad-CAM)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from anomaly.io import display_path
from cli.common import (
    AT_LEAST_ONE,
    POSITIVE,
    device_option,
    evaluation_options,
    print_report,
    user_errors_as_messages,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Supervised chest X-ray classifier (ResNet50 baseline)."""


def fit_options(command):
    """The training settings of ``fit``; ``tune`` takes them as fixed for every trial."""
    options = [
        click.option("--data", "data_dir", required=True, type=click.Path(),
                     help="Labelled training folder (one sub-folder per class)."),
        click.option("--val", "val_dir", required=True, type=click.Path(),
                     help="Labelled validation folder (early stopping, best checkpoint)."),
        click.option("--config", "config_file", type=click.Path(),
                     help="YAML config (configs/classify_resnet50.yaml)."),
        click.option("--weights",
                     help="imagenet (default), none (random init) or a state-dict file."),
        click.option("--backbone", help="torchvision classifier: resnet50 (default), "
                                        "densenet169, vgg16, efficientnet_b0, inception_v3 ..."),
        click.option("--epochs", type=int, help="Stage 1: the new head on the frozen base."),
        click.option("--fine-tune-epochs", type=int,
                     help="Stage 2: also the last block, lower lr."),
        click.option("--image-size", type=int),
        click.option("--batch-size", type=AT_LEAST_ONE),
        click.option("--lr", type=POSITIVE),
        click.option("--fine-tune-lr", type=POSITIVE),
        click.option("--normal-class", help="Name of the normal class folder (default NORMAL)."),
        click.option("--max-images", type=AT_LEAST_ONE, help="At most N images per class (a quick try)."),
        click.option("--cache-dir", type=click.Path(),
                     help="Keep preprocessed images on disk here."),
        click.option("--seed", type=int),
        device_option,
        click.option("--no-progress", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command("fit")
@click.option("--out", "run_dir", required=True, type=click.Path(), help="Run directory.")
@fit_options
@click.option("--resume", is_flag=True,
              help="Continue from RUN_DIR/checkpoints/last.pt with the settings it was "
                   "trained with; only more --epochs / --fine-tune-epochs and where it runs "
                   "may change.")
@user_errors_as_messages
def fit_command(data_dir, val_dir, run_dir, config_file, no_progress, resume, **overrides):
    """Train the classifier; the best checkpoint (validation loss) is checkpoints/best.pt."""
    from anomaly.config import load_config
    from classify.train import FitConfig, fit, resume_fit_config

    config = (resume_fit_config(run_dir, config_file, overrides) if resume else
              load_config(FitConfig, config_file, overrides))
    best = fit(config, data_dir, val_dir, run_dir, progress=not no_progress, log=click.echo,
               resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:  # rank 0 of a torchrun job, or alone
        click.echo(f"checkpoint: {display_path(best)}")


@main.command("tune")
@click.option("--out", "study_dir", required=True, type=click.Path(),
              help="Study folder: study.db, one run per trial, best.yaml, trials.csv, plots.")
@click.option("--space", "space_file", type=click.Path(),
              help="YAML search space (configs/classify_tune_space.yaml; default: learning "
                   "rate, dropout, batch size, rotation, fine-tune epochs).")
@click.option("--trials", type=AT_LEAST_ONE, help="Trials to run in this call.")
@click.option("--timeout", type=POSITIVE, help="Seconds after which no new trial starts.")
@click.option("--objective", type=click.Choice(["val-loss", "val-auroc"]), default="val-loss",
              show_default=True, help="Measured on --val only, never on test data.")
@click.option("--storage", help="Database URL shared by several processes or machines "
                                "(default: sqlite in --out).")
@click.option("--study-name", default="classify", show_default=True)
@click.option("--resume", is_flag=True, help="Continue the study; finished trials are kept.")
@fit_options
@user_errors_as_messages
def tune_command(data_dir, val_dir, study_dir, config_file, space_file, trials, timeout,
                 objective, storage, study_name, resume, no_progress, **overrides):
    """Search classify fit's settings with Optuna (TPE sampler, median pruner)."""
    from anomaly.config import load_config
    from classify.train import FitConfig
    from classify.tune import load_space, tune

    base = load_config(FitConfig, config_file, overrides)
    space = load_space(space_file)  # refused in one line before any training
    if trials is None and timeout is None:
        raise click.UsageError("give --trials N, --timeout SECONDS or both")
    tune(data_dir, val_dir, study_dir, base, space, trials=trials, timeout=timeout,
         objective=objective, storage=storage, study_name=study_name, resume=resume,
         progress=not no_progress, log=click.echo)


@main.command("evaluate")
@click.option("--model", required=True, type=click.Path(), help="Run directory or .pt file.")
@evaluation_options
@click.option("--normal-class", help="Default: the model's normal class.")
@click.option("--batch-size", type=AT_LEAST_ONE, default=32, show_default=True)
@device_option
@click.option("--no-progress", is_flag=True)
@user_errors_as_messages
def evaluate_command(model, data_dir, val_dir, out_dir, normal_class, threshold_metric, quantile,
                     threshold_on_test, max_images, resamples, subgroups, batch_size, device,
                     no_progress):
    """Predict a labelled folder and write report.json (normal vs the rest), scores and plots."""
    from classify.evaluate_classifier import evaluate_classifier

    report = evaluate_classifier(model, data_dir, out_dir, val_dir, normal_class,
                                 threshold_metric, quantile, threshold_on_test, max_images,
                                 resamples, batch_size, device or "auto", subgroups,
                                 progress=not no_progress, log=click.echo)
    if report.get("macro_auroc_ovr") is not None:
        click.echo(f"macro one-vs-rest AUROC {report['macro_auroc_ovr']:.4f}, multi-class "
                   f"accuracy {report['multiclass_accuracy']:.3f}")
    print_report(report, out_dir)


@main.command("predict")
@click.option("--model", required=True, type=click.Path(), help="Run directory or .pt file.")
@click.option("--image", "images", multiple=True, required=True, type=click.Path(),
              help="Image file (repeatable).")
@click.option("--cam", "cam_dir", type=click.Path(),
              help="Write Grad-CAM overlays (PNG) of the predicted class here.")
@click.option("--batch-size", type=AT_LEAST_ONE, default=32, show_default=True)
@device_option
@user_errors_as_messages
def predict_command(model, images, cam_dir, batch_size, device):
    """Print class probabilities per image: path, class=probability ..., predicted class."""
    from classify.predict import Classifier

    classifier = Classifier.from_checkpoint(model, device=device or "auto",
                                            batch_size=batch_size)
    paths = [Path(p) for p in images]
    if cam_dir:
        result, written, unwritten = classifier.write_cams(paths, cam_dir)
    else:
        result, written, unwritten = classifier.predict_paths(paths), [], []
    for path, reason in result.failures:
        click.echo(f"skipped {display_path(path)}: {reason}", err=True)
    names = classifier.class_names
    for path, row in zip(result.paths, result.probabilities):
        probabilities = "\t".join(f"{name}={p:.4f}" for name, p in zip(names, row))
        click.echo(f"{display_path(path)}\t{probabilities}\tpredicted={names[int(row.argmax())]}")
    for png in written:
        click.echo(f"grad-cam: {display_path(png)}", err=True)
    for png, reason in unwritten:
        click.echo(f"grad-cam not written {display_path(png)}: {reason}", err=True)
    if not result.paths:
        sys.exit(1)


if __name__ == "__main__":
    main()
