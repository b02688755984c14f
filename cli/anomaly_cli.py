"""``anomaly``: train the GAN on normal X-rays, score images, evaluate, compare reports."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from anomaly import families  # the families' declarations, without torch
from anomaly.io import display_path
from cli.common import (
    AT_LEAST_ONE,
    NOT_NEGATIVE,
    POSITIVE,
    FiniteFloat,
    RegistryChoice,
    device_option,
    evaluation_options,
    family_train_options,
    print_report,
    user_errors_as_messages,
)

MODES = RegistryChoice(families.modes)
SCORES = RegistryChoice(families.scores)
HEATS = RegistryChoice(families.heats)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Unsupervised anomaly detection in chest X-rays with GANs."""


@main.command("train-gan")
@click.option("--data", "data_dir", required=True, type=click.Path(),
              help="Folder of NORMAL training images (searched recursively).")
@click.option("--out", "run_dir", required=True, type=click.Path(), help="Run directory.")
@click.option("--config", "config_file", type=click.Path(), help="YAML config (configs/*.yaml).")
@click.option("--image-size", type=int, help="Power of two, 32 to 256.")
@family_train_options
@click.option("--max-images", type=AT_LEAST_ONE, help="Use only the first N images (a quick try).")
@click.option("--cache-dir", type=click.Path(), help="Keep preprocessed images on disk here.")
@click.option("--seed", type=int)
@device_option
@click.option("--resume", is_flag=True,
              help="Continue from RUN_DIR/checkpoints/last.pt with the settings it was "
                   "trained with; only more --epochs / --encoder-epochs and where it runs "
                   "may change.")
@click.option("--overwrite", is_flag=True,
              help="Replace a run already trained in RUN_DIR (refused without it).")
@click.option("--dry-run", is_flag=True,
              help="At most one epoch of each part, on at most 64 images.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@user_errors_as_messages
def train_gan_command(data_dir, run_dir, config_file, dry_run, no_progress, resume, overwrite,
                      **overrides):
    """Train on normal images only: each family of the config in turn (by default the
    opacity critic, then a DCGAN and its encoder)."""
    from anomaly.config import load_config
    from anomaly.train import TrainConfig, dry_run_config, resume_config, train_run

    config = (resume_config(run_dir, config_file, overrides) if resume else
              load_config(TrainConfig, config_file, overrides))
    if dry_run:  # at most one epoch of each family, on at most 64 images
        config = dry_run_config(config)
    if resume and overwrite:
        raise click.UsageError("give --resume or --overwrite, not both")
    last = train_run(config, data_dir, run_dir, resume=resume, progress=not no_progress,
                     overwrite=overwrite)
    if int(os.environ.get("RANK", "0")) == 0:  # rank 0 of a torchrun job, or alone
        click.echo(f"checkpoint: {display_path(last)}")


@main.command("train-encoder")
@click.option("--model", required=True, type=click.Path(), help="Run directory or .pt file.")
@click.option("--epochs", type=AT_LEAST_ONE, default=20, show_default=True)
@click.option("--data", "data_dir", type=click.Path(),
              help="Normal training folder (default: the GAN's own).")
@click.option("--lr", type=POSITIVE)
@click.option("--kappa", type=NOT_NEGATIVE, help="Weight of the feature loss.")
@click.option("--batch-size", type=AT_LEAST_ONE)
@device_option
@click.option("--no-progress", is_flag=True)
@user_errors_as_messages
def train_encoder_command(model, epochs, data_dir, lr, kappa, batch_size, device, no_progress):
    """Train the f-AnoGAN encoder (izi_f) for a trained GAN."""
    from anomaly.train import train_encoder  # the family that declares it (the DCGAN)

    path = train_encoder(model, epochs, data_dir=data_dir, lr=lr, kappa=kappa,
                         batch_size=batch_size, device=device, progress=not no_progress)
    click.echo(f"checkpoint: {display_path(path)}")


def scorer_options(command):
    """Scoring options shared by ``score`` and ``evaluate``."""
    options = [
        click.option("--mode", type=MODES,
                     help="Default: critic where the run has one, else the DCGAN's best "
                          "(encoder when trained, else search: AnoGAN)."),
        click.option("--score", "score_kind", type=SCORES,
                     help="How components become the score (default: the mode's own; "
                          "critic: density; DCGAN: lung-opacity; anogan: (1 - lambda) * "
                          "residual + lambda * discrimination; fanogan: f-AnoGAN's mse + "
                          "kappa * feature mse; lung-brightness: the no-GAN baseline)."),
        click.option("--iterations", type=click.IntRange(min=0),
                     help="Latent-search steps (search: 500, encoder-search: 20; other "
                          "modes refuse it)."),
        click.option("--lr", "search_lr", type=POSITIVE, default=0.05, show_default=True,
                     help="Adam learning rate for z."),
        click.option("--lambda", "lam", type=NOT_NEGATIVE, default=0.1, show_default=True,
                     help="Weight of the discrimination loss."),
        click.option("--batch-size", type=AT_LEAST_ONE, default=64, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        device_option,
        click.option("--cpu-bf16", is_flag=True,
                     help="bfloat16 autocast on CPUs with AVX512-BF16/AMX (about twice as "
                          "fast; scores within bfloat16 precision)."),
        click.option("--heat", type=HEATS,
                     help="Critic's heat map: map (its map head's opacity per pixel, the "
                          "default where it has one) or gradcam (the density's Grad-CAM)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command("score")
@click.option("--model", type=click.Path(),
              help="Run directory, .pt file or exported model (default: the bundled "
                   "pretrained critic, also named 'pretrained').")
@click.option("--image", "images", multiple=True, type=click.Path(), help="Image file (repeatable).")
@click.option("--dir", "folder", type=click.Path(), help="Folder of images (recursive).")
@click.option("--out", "out_csv", type=click.Path(),
              help="CSV: path,score,label,p_value and the score's components.")
@click.option("--heatmaps", "heatmap_dir", type=click.Path(), help="Folder for heatmap PNGs.")
@scorer_options
@click.option("--threshold", type=float,
              help="Label a film anomalous at or above this score (default: the one "
                   "'anomaly calibrate' stored, else the held-out normals' 95% quantile).")
@click.option("--alpha", type=float,
              help="Label by conformal p-value instead: anomalous where p <= ALPHA (a "
                   "false-positive rate of at most ALPHA on normal films like the "
                   "training ones).")
@click.option("--regions", is_flag=True,
              help="Box the heat map's regions above the region threshold (the run's, or "
                   "the one anomaly calibrate fitted on a site's normals): their "
                   "count as a CSV column, the boxes (film pixels) in OUT.regions.jsonl.")
@click.option("--resume", is_flag=True, help="Skip images already in --out.")
@click.option("--max-images", type=AT_LEAST_ONE, help="Score only the first N images.")
@click.option("--no-progress", is_flag=True)
@user_errors_as_messages
def score_command(model, images, folder, out_csv, heatmap_dir, mode, score_kind, iterations,
                  search_lr, lam, batch_size, seed, device, cpu_bf16, heat, threshold, alpha,
                  regions, resume, max_images, no_progress):
    """Score images: higher = more anomalous. Prints one line per image: path, score,
    label (normal / anomalous) and conformal p-value."""
    if bool(images) == bool(folder):  # before torch is imported: a usage error is instant
        raise click.UsageError("give either --image (one or more) or --dir")
    if threshold is not None and alpha is not None:
        raise click.UsageError("give --threshold or --alpha, not both")
    from anomaly import pretrained
    if pretrained.is_pretrained(model):
        click.echo(f"model: {pretrained.DESCRIPTION}", err=True)
        model = str(pretrained.bundled_checkpoint())
    from anomaly.exported import is_exported_model
    if is_exported_model(model):  # onnxruntime, NumPy and OpenCV only: no torch
        return score_exported(model, images, folder, out_csv, heatmap_dir, mode, score_kind,
                              iterations, batch_size, threshold, alpha, resume, max_images,
                              regions, heat)
    from anomaly.data import find_images
    from anomaly.evaluate_model import describe_scorer
    from anomaly.score import Scorer
    from anomaly.score_files import score_files, score_files_sharded

    paths = [Path(p) for p in images] if images else find_images(folder)
    if max_images:
        paths = paths[:max_images]
    scorer = Scorer.from_checkpoint(model, mode=mode, score=score_kind, iterations=iterations,
                                    lr=search_lr, lam=lam, batch_size=batch_size,
                                    device=device or "auto", seed=seed, cpu_bf16=cpu_bf16,
                                    heat=heat)
    decision = scorer.decision(threshold, alpha)
    click.echo(f"{describe_scorer(scorer)}; {decision.describe()}", err=True)

    def print_row(path, score, label, p_value, *components):
        boxes = f"\tregions={len(components[-1])}" if regions else ""
        tqdm_write(f"{display_path(path)}\t{score:.6f}\t{label}\tp={p_value:.4g}{boxes}")

    if out_csv and os.environ.get("WORLD_SIZE", "1") != "1":
        if regions:
            raise click.UsageError("--regions is not written by sharded (torchrun) scoring; "
                                   "score with one process")
        result = score_files_sharded(scorer, paths, out_csv, heatmap_dir, resume=resume,
                                     on_row=print_row, progress=not no_progress,
                                     decision=decision)
    else:
        result = score_files(scorer, paths, out_csv, heatmap_dir, resume=resume,
                             on_row=print_row, progress=not no_progress, decision=decision,
                             regions=regions)
    report_failures(result, resume and out_csv)


def score_exported(model, images, folder, out_csv, heatmap_dir, mode, score_kind, iterations,
                   batch_size, threshold, alpha, resume, max_images, regions=False,
                   heat=None) -> None:
    """``anomaly score`` for an exported model (``anomaly export``)."""
    from anomaly.exported import ExportedScorer
    from anomaly.io import find_images
    from anomaly.score_files import score_files

    if mode or score_kind or iterations is not None or heat:
        raise click.UsageError("an exported model scores with its exported mode, score and "
                               "heat map: drop --mode, --score, --heat and --iterations")
    scorer = ExportedScorer(model, batch_size=batch_size)
    if (heatmap_dir or regions) and not scorer.has_map:
        raise click.UsageError("this exported model has no opacity map (a critic without a "
                               "map head): drop --heatmaps and --regions")
    paths = [Path(p) for p in images] if images else find_images(folder)
    paths = paths[:max_images] if max_images else paths
    decision = scorer.decision(threshold, alpha)
    click.echo(f"exported model, mode {scorer.mode}, score {scorer.score}; "
               f"{decision.describe()}", err=True)

    def print_row(path, score, label, p_value, *components):
        boxes = f"\tregions={len(components[-1])}" if regions else ""
        click.echo(f"{display_path(path)}\t{score:.6f}\t{label}\tp={p_value:.4g}{boxes}")

    result = score_files(scorer, paths, out_csv, heatmap_dir, resume=resume, on_row=print_row,
                         progress=False, decision=decision, regions=regions)
    report_failures(result, resume and out_csv)


def report_failures(result, resumed: bool) -> None:
    """List the skipped files, count what was scored, and fail if nothing was."""
    for path, reason in result.failures:
        click.echo(f"skipped {display_path(path)}: {reason}", err=True)
    click.echo(f"scored {len(result.paths)} image(s), skipped {len(result.failures)}", err=True)
    if not result.paths and not resumed:
        sys.exit(1)


@main.command("export")
@click.option("--model", required=True, type=click.Path(), help="Run directory or .pt file.")
@click.option("--out", "out_dir", required=True, type=click.Path(),
              help="Folder for model.onnx (or model.pt) and export.json.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx",
              show_default=True)
@click.option("--mode", type=MODES, help="Default: the run's default (critic).")
@click.option("--threshold", type=float, help="Store this threshold (default: the run's).")
@user_errors_as_messages
def export_command(model, out_dir, fmt, mode, threshold):
    """Export the scoring network and what scoring needs (onnx: run it with
    'anomaly score --model OUT' or onnxruntime alone)."""
    from anomaly.export import export_run

    path = export_run(model, out_dir, fmt, mode, threshold)
    click.echo(f"exported: {display_path(path)} and {display_path(Path(out_dir) / 'export.json')}")


@main.command("calibrate")
@click.option("--model", required=True, type=click.Path(), help="Run directory or .pt file.")
@click.option("--val", "val_dir", required=True, type=click.Path(),
              help="Validation folder: one sub-folder per class, or normal images only.")
@click.option("--normal-class", default="NORMAL", show_default=True)
@click.option("--threshold-metric", type=click.Choice(["youden", "f1"]), default="youden",
              show_default=True, help="With both classes in --val.")
@click.option("--quantile", type=FiniteFloat(0, 1), default=0.95, show_default=True,
              help="With normal images only in --val: this quantile of their scores.")
@click.option("--regions/--no-regions", default=True, show_default=True,
              help="Also fit the heat map's region threshold again on the normal films of "
                   "--val (at least 20), so about 5% of this site's normals get a region.")
@scorer_options
@click.option("--no-progress", is_flag=True)
@user_errors_as_messages
def calibrate_command(model, val_dir, normal_class, threshold_metric, quantile, regions, mode,
                      score_kind, iterations, search_lr, lam, batch_size, seed, device, cpu_bf16,
                      heat, no_progress):
    """Pick the decision threshold on validation data and store it with the model."""
    from anomaly.evaluate_model import calibrate_threshold

    stored = calibrate_threshold(model, val_dir, normal_class, threshold_metric, quantile,
                                 regions=regions, progress=not no_progress, mode=mode,
                                 score=score_kind, iterations=iterations, lr=search_lr,
                                 lam=lam, batch_size=batch_size, device=device or "auto",
                                 seed=seed, cpu_bf16=cpu_bf16, heat=heat)
    click.echo(f"stored threshold {stored['value']:.5g} ({stored['source']}, "
               f"{stored['n']} validation images) for mode {stored['mode']}, score "
               f"{stored['score']}")
    for heat, fitted in stored.get("region_thresholds", {}).items():
        click.echo(f"stored region threshold {fitted['value']:.5g} of the {heat} heat map "
                   f"(fitted on {fitted['n']} normal films)")


@main.command("evaluate")
@click.option("--model", required=True, type=click.Path(), help="Run directory or .pt file.")
@evaluation_options
@click.option("--normal-class", default="NORMAL", show_default=True)
@scorer_options
@click.option("--no-progress", is_flag=True)
@user_errors_as_messages
def evaluate_command(model, data_dir, val_dir, out_dir, normal_class, threshold_metric, quantile,
                     threshold_on_test, max_images, resamples, subgroups, mode, score_kind,
                     iterations, search_lr, lam, batch_size, seed, device, cpu_bf16, heat,
                     no_progress):
    """Score a labelled folder and write report.json, scores.csv and plots."""
    from anomaly.evaluate_model import evaluate_model

    report = evaluate_model(model, data_dir, out_dir, val_dir, normal_class, threshold_metric,
                          quantile, threshold_on_test, max_images, resamples, subgroups,
                          progress=not no_progress, mode=mode, score=score_kind,
                          iterations=iterations,
                          lr=search_lr, lam=lam, batch_size=batch_size,
                          device=device or "auto", seed=seed, cpu_bf16=cpu_bf16, heat=heat)
    print_report(report, out_dir)


@main.command("serve")
@click.option("--model", type=click.Path(),
              help="Run directory, .pt file or exported model (default: the bundled "
                   "pretrained critic).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (the default answers this machine only).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--threshold", type=float, help="Label at or above this score.")
@click.option("--alpha", type=float, help="Label by conformal p-value <= ALPHA instead.")
@click.option("--max-upload-mb", type=POSITIVE, help="Largest film accepted (default: the "
              "toolkit's file limit, CXR_ANOMALY_MAX_FILE_MB).")
@device_option
@user_errors_as_messages
def serve_command(model, host, port, threshold, alpha, max_upload_mb, device):
    """A local page to look at films and their heat maps, and POST /score for scripts."""
    if threshold is not None and alpha is not None:
        raise click.UsageError("give --threshold or --alpha, not both")
    from anomaly.io import MAX_FILE_MB
    from anomaly.serve import serve

    click.echo(f"serving on http://{host}:{port}/ (Ctrl+C stops)", err=True)
    serve(model, host=host, port=port, threshold=threshold, alpha=alpha,
          max_upload_mb=MAX_FILE_MB if max_upload_mb is None else max_upload_mb,
          device=device or "auto")


@main.command("compare")
@click.argument("report_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(),
              help="Folder for comparison.md, roc.png and report.html.")
@user_errors_as_messages
def compare_command(report_dirs, out_dir):
    """Put several report folders side by side (Markdown table, one ROC plot, one page)."""
    from anomaly.evaluate import compare_reports

    click.echo(compare_reports(report_dirs, out_dir), nl=False)


def tqdm_write(line: str) -> None:
    """Print a line without breaking an active progress bar."""
    from tqdm import tqdm

    tqdm.write(line)


if __name__ == "__main__":
    main()
