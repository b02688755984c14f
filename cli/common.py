"""Shared CLI plumbing: one-line errors instead of tracebacks, common options."""

from __future__ import annotations

import functools
import sys

import click

from anomaly.checkpoint import CheckpointError
from anomaly.config import ConfigError
from anomaly.data import DataError
from anomaly.io import ImageReadError
from anomaly.train import TrainingDiverged

USER_ERRORS = (CheckpointError, ConfigError, DataError, ImageReadError, TrainingDiverged,
               ValueError, FileNotFoundError, PermissionError)


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


device_option = click.option("--device", default=None,
                             help="auto (CUDA when present), cpu, cuda or cuda:N.")
