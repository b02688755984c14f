"""Shared CLI plumbing: one-line errors instead of tracebacks, common options."""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import click

from anomaly.config import ConfigError
from anomaly.errors import CheckpointError, DataError, TrainingDiverged
from anomaly.io import ImageReadError, display_path

USER_ERRORS = (CheckpointError, ConfigError, DataError, ImageReadError, TrainingDiverged,
               ValueError, OSError)  # OSError: a full disk, a read-only folder, ...


def user_errors_as_messages(command):
    """Turn the library's user-facing errors into one line on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted; results written so far are kept", err=True)
            sys.exit(130)

    return wrapper


class FiniteFloat(click.FloatRange):
    """A float in a range that is also finite (click's ranges let NaN through)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


POSITIVE = FiniteFloat(min=0, min_open=True)  # a learning rate, a size
NOT_NEGATIVE = FiniteFloat(min=0)  # a loss weight
AT_LEAST_ONE = click.IntRange(min=1)  # a batch size, a count of steps or resamples


device_option = click.option("--device", default=None,
                             help="auto (CUDA when present), cpu, cuda or cuda:N.")


def evaluation_options(command):
    """Options shared by ``anomaly evaluate`` and ``classify evaluate``."""
    options = [
        click.option("--data", "data_dir", required=True, type=click.Path(),
                     help="Labelled test folder (one sub-folder per class)."),
        click.option("--val", "val_dir", type=click.Path(),
                     help="Labelled validation folder, or a folder of normal images only."),
        click.option("--out", "out_dir", required=True, type=click.Path(),
                     help="Report folder."),
        click.option("--threshold-metric", type=click.Choice(["youden", "f1"]),
                     default="youden", show_default=True),
        click.option("--quantile", type=FiniteFloat(0, 1), default=0.95, show_default=True,
                     help="Normal-score quantile when validation holds normal images only."),
        click.option("--threshold-on-test", is_flag=True,
                     help="Without validation data, pick the threshold on the test data "
                          "(reported)."),
        click.option("--max-images", type=AT_LEAST_ONE, help="At most N images per class (a quick try)."),
        click.option("--resamples", type=AT_LEAST_ONE, default=1000, show_default=True,
                     help="Bootstrap resamples for the AUROC confidence interval."),
        click.option("--subgroup", "subgroups", multiple=True,
                     help="Text in the names of some anomalous files (e.g. virus): their "
                          "AUROC against every normal file, reported apart (repeatable)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


class RegistryChoice(click.Choice):
    """A choice among what the registered families declare now (``read()``), so a family
    registered after this module was imported is offered too."""

    def __init__(self, read):
        self.read = read
        super().__init__(list(read()))

    @property
    def choices(self):  # noqa: D102 (click's attribute, read when parsing and for --help)
        return tuple(self.read())

    @choices.setter
    def choices(self, value) -> None:
        pass


def family_train_options(command):
    """``train-gan``'s options that set a family's settings (each family's
    ``CLI_OPTIONS``: flag, the flat config key it sets, type, help)."""
    from anomaly.families import FAMILIES

    seen = set()
    for module in reversed(list(FAMILIES.values())):
        for flag, key, kind, text in reversed(getattr(module, "CLI_OPTIONS", ())):
            if flag not in seen:
                seen.add(flag)
                command = click.option(flag, key, type=kind, help=text)(command)
    return command


def print_report(report: dict, out_dir) -> None:
    """Print the headline metrics of a report."""
    low, high = report["auroc_ci95"]
    click.echo(f"AUROC {report['auroc']:.4f} (95% CI {low:.4f}-{high:.4f}) on {report['n']} "
               f"images; threshold {report['threshold']:.5g} from {report['threshold_source']}: "
               f"recall {report['recall']:.3f}, specificity {report['specificity']:.3f}, "
               f"precision {report['precision']:.3f}, F1 {report['f1']:.3f}, "
               f"accuracy {report['accuracy']:.3f}")
    for name, group in report.get("subgroups", {}).items():
        if group["auroc"] is None:
            click.echo(f"  {name}: none of its files could be scored")
            continue
        low, high = group["auroc_ci95"]
        click.echo(f"  {name} ({group['n_anomalous']} anomalous): AUROC {group['auroc']:.4f} "
                   f"(95% CI {low:.4f}-{high:.4f}), recall {group['recall']:.3f}")
    click.echo(f"report: {display_path(Path(out_dir) / 'report.json')}")
