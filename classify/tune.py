"""``classify tune``: Bayesian hyper-parameter search (Optuna) for the supervised baseline.

A study samples configs from a search space written in YAML with the TPE sampler, trains
each with :func:`classify.train.fit`, and, for the validation-loss objective, stops weak
trials early with a median pruner fed by their per-epoch validation loss. The objective
is measured on the validation folder only (validation loss of the best checkpoint, or
its validation AUROC), never on test data. The study lives in Optuna's storage: an SQLite
file in the study folder by default, or any database URL shared by several processes or
machines.

A search space maps :class:`~classify.train.FitConfig` field names to ranges::

    lr: {low: 1.0e-4, high: 1.0e-2, log: true}     # float (log scale)
    dropout: {low: 0.1, high: 0.6}                 # float
    fine_tune_epochs: {low: 0, high: 3}            # int (both ends are ints)
    batch_size: {choices: [16, 32]}                # one of a list
    backbone: {choices: [resnet18, resnet50]}
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from anomaly.atomic import atomic_file
from anomaly.config import format_config, from_dict, save_config
from anomaly.io import display_path
from classify.train import FitConfig, fit

OBJECTIVES = ("val-loss", "val-auroc")
DEFAULT_SPACE = {
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "dropout": {"low": 0.1, "high": 0.6},
    "batch_size": {"choices": [16, 32]},
    "rotation_degrees": {"low": 0.0, "high": 15.0},
    "fine_tune_epochs": {"low": 0, "high": 3},
}


class StudyError(ValueError):
    """A search space, study or storage cannot be used; the message says why."""


@dataclass
class Parameter:
    """One searched setting: a numeric range (``low``..``high``) or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list | None = None

    def suggest(self, trial) -> Any:
        """Draw this parameter's value for an Optuna trial."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)


def parse_space(space: dict, source: str = "search space") -> list[Parameter]:
    """Check a search space (field name -> range) and turn it into parameters.

    Raises:
        StudyError: unknown key, malformed range, low > high, or an unknown backbone.
    """
    from classify.models import classification_backbones

    if not isinstance(space, dict) or not space:
        raise StudyError(f"{source}: a search space is a non-empty mapping of settings to "
                         "ranges")
    fields = {f.name for f in dataclasses.fields(FitConfig)}
    parameters = []
    for name, spec in space.items():
        if name not in fields:
            raise StudyError(f"{source}: unknown setting '{name}'; searchable settings are "
                             f"classify fit's config keys ({', '.join(sorted(fields))})")
        if not isinstance(spec, dict) or not (set(spec) <= {"low", "high", "log", "choices"}):
            raise StudyError(f"{source}: '{name}' must be {{low, high[, log]}} or {{choices}}")
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise StudyError(f"{source}: '{name}': choices must be a non-empty list")
            if name == "backbone":
                unknown = [c for c in choices if c not in classification_backbones()]
                if unknown:
                    raise StudyError(f"{source}: unknown backbone(s) {', '.join(map(str, unknown))}"
                                     "; choose torchvision classifiers such as resnet18, "
                                     "resnet50, densenet121")
            parameters.append(Parameter(name, choices=list(choices)))
            continue
        low, high = spec.get("low"), spec.get("high")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      for v in (low, high))
        if not numbers:
            raise StudyError(f"{source}: '{name}' needs numeric low and high")
        if low > high:
            raise StudyError(f"{source}: '{name}': low {low} is greater than high {high}")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise StudyError(f"{source}: '{name}': a log range needs low > 0, not {low}")
        parameters.append(Parameter(name, low, high, log))
    return parameters


def load_space(path: str | os.PathLike | None) -> list[Parameter]:
    """Read and check a YAML search space (default: :data:`DEFAULT_SPACE`)."""
    if path is None:
        return parse_space(DEFAULT_SPACE, "default search space")
    try:
        space = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise StudyError(f"{display_path(path)}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise StudyError(f"{display_path(path)}: not valid YAML "
                         f"({str(err).splitlines()[0]})") from None
    return parse_space(space, display_path(path))


def base_values(base: FitConfig, space: list[Parameter]) -> dict:
    """The base config's value of every searched setting inside its range (a value
    outside the range or the choices is left for the sampler to draw)."""
    values = {}
    for parameter in space:
        value = getattr(base, parameter.name)
        inside = (value in parameter.choices if parameter.choices is not None
                  else parameter.low <= value <= parameter.high)
        if inside:
            values[parameter.name] = value
    return values


def trial_config(base: FitConfig, values: dict) -> FitConfig:
    """The base config with a trial's values, checked like any config file."""
    return from_dict(FitConfig, {**dataclasses.asdict(base), **values}, "trial")


def connect_storage(url: str, attempts: int = 5):
    """Optuna's database storage at ``url``.

    Processes started together on a new database race to create its tables; the loser
    gets "table ... already exists" (or a locked or duplicate version stamp) and simply
    connects again (the tables are there now).
    """
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def open_study(study_dir: Path, storage: str | None, name: str, resume: bool, seed: int):
    """Create (or with ``resume``, reopen) the study: TPE sampler, median pruner.

    With ``resume`` a missing study is created, so several processes started alike
    share one.

    Raises:
        StudyError: the study exists and ``resume`` is off.
    """
    import optuna

    url = storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    backend = connect_storage(url)
    exists = name in [s.study_name for s in optuna.get_all_study_summaries(backend)]
    if exists and not resume:
        raise StudyError(f"study '{name}' already exists in {url}; pass --resume to continue "
                         "it, or choose another --out or --study-name")
    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.create_study(study_name=name, storage=backend, direction="minimize",
                               sampler=sampler, pruner=pruner, load_if_exists=True)


def tune(data_dir: str | os.PathLike, val_dir: str | os.PathLike,
         study_dir: str | os.PathLike, base: FitConfig, space: list[Parameter],
         trials: int | None = None, timeout: float | None = None,
         objective: str = "val-loss", storage: str | None = None,
         study_name: str = "classify", resume: bool = False, progress: bool = True,
         log: Callable[..., None] = print):
    """Run (or continue) a study; write best.yaml, trials.csv and the plots.

    Args:
        data_dir: labelled training folder.
        val_dir: labelled validation folder: the objective and the pruner read it only.
        study_dir: folder for the study: study.db (unless ``storage``), one run folder
            per trial, best.yaml, trials.csv, history.png, importances.png.
        base: fixed settings for every trial (the command line's overrides included).
        space: searched settings (:func:`load_space`).
        trials: trials to run in this call (None: until ``timeout``).
        timeout: seconds after which no new trial starts.
        objective: ``val-loss`` (the best checkpoint's validation loss, minimised) or
            ``val-auroc`` (its validation AUROC, maximised: 1 - AUROC is minimised).
        storage: database URL shared by several processes (default: the SQLite file).
        study_name: the study's name in the storage.
        resume: continue an existing study (its finished trials are kept).

    Returns:
        The Optuna study.
    """
    import optuna

    if objective not in OBJECTIVES:
        raise StudyError(f"unknown objective {objective!r}; choose {', '.join(OBJECTIVES)}")
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(study_dir, storage, study_name, resume, base.seed)
    if not study.trials:  # trial 0 is the hand-written config, the figure to beat
        study.enqueue_trial(base_values(base, space), skip_if_exists=True)
    log("fixed settings:\n" + format_config(base))
    log("searching: " + ", ".join(
        f"{p.name} in {p.choices}" if p.choices else
        f"{p.name} in [{p.low}, {p.high}]{' (log)' if p.log else ''}" for p in space))

    def run_trial(trial) -> float:
        values = {p.name: p.suggest(trial) for p in space}
        config = trial_config(base, values)
        run_dir = study_dir / f"trial_{trial.number:04d}"

        def report(epoch: int, metrics: dict) -> None:
            trial.report(metrics["val_loss"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        # the pruner compares the validation loss each epoch: only for that objective (a
        # trial with a worse loss may still rank the films better)
        best = fit(config, data_dir, val_dir, run_dir, progress=progress,
                   log=lambda *a, **k: None,
                   on_epoch=report if objective == "val-loss" else None)
        value = validation_objective(best, val_dir, objective, config)
        trial.set_user_attr("run_dir", str(run_dir))
        return value

    def announce(study, trial) -> None:
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        state = trial.state.name.lower()
        last = " last reported" if trial.state == optuna.trial.TrialState.PRUNED else ""
        value = ("" if trial.value is None
                 else f"{last} {objective} {_objective_value(trial.value, objective):.4f}")
        best = ""
        if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
            best = (f" [best: trial {study.best_trial.number}, "
                    f"{_objective_value(study.best_value, objective):.4f}]")
        log(f"trial {trial.number} {state}:{value} ({params}){best}")

    study.optimize(run_trial, n_trials=trials, timeout=timeout, callbacks=[announce],
                   catch=(ValueError, RuntimeError))
    write_study_outputs(study, base, study_dir, objective, log)
    return study


def validation_objective(best_checkpoint: Path, val_dir, objective: str,
                         config: FitConfig) -> float:
    """The value to minimise for a finished trial, from validation data only."""
    from anomaly.checkpoint import load_checkpoint
    from classify import CHECKPOINT_FORMAT

    if objective == "val-loss":
        state = load_checkpoint(best_checkpoint, expected_format=CHECKPOINT_FORMAT)
        return float(state["metrics"]["val_loss"])
    from anomaly.data import scan_labelled_folder
    from anomaly.evaluate import auroc
    from anomaly.evaluate_model import limit_per_class
    from classify.evaluate_classifier import predict_labelled
    from classify.predict import Classifier

    classifier = Classifier.from_checkpoint(best_checkpoint, device=config.device)
    folder = limit_per_class(scan_labelled_folder(val_dir, config.normal_class),
                             config.max_images)  # the images fit validated on
    predictions, labels, _ = predict_labelled(classifier, folder, progress=False,
                                              log=lambda *a: None)
    return 1.0 - auroc(labels, classifier.anomaly_scores(predictions.probabilities))


def write_study_outputs(study, base: FitConfig, study_dir: Path, objective: str,
                        log=print) -> None:
    """best.yaml (a config ``classify fit --config`` takes as it is), trials.csv and the
    optimisation-history and parameter-importance plots."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    write_trials_csv(study, study_dir / "trials.csv", objective)
    if not complete:
        log("no trial finished: nothing to recommend yet")
        return
    best = study.best_trial
    save_config(trial_config(base, best.params), study_dir / "best.yaml")
    log(f"best: trial {best.number}, {objective} "
        f"{_objective_value(best.value, objective):.4f} ({best.params}); config: "
        f"{display_path(study_dir / 'best.yaml')}")
    _plot(optuna.visualization.matplotlib.plot_optimization_history, study,
          study_dir / "history.png", log)
    if len(complete) >= 2 and len(best.params) >= 1:
        _plot(optuna.visualization.matplotlib.plot_param_importances, study,
              study_dir / "importances.png", log)


def write_trials_csv(study, path: Path, objective: str) -> None:
    """One row per trial: number, state, objective value, parameters, run folder."""
    names = sorted({k for t in study.trials for k in t.params})
    with atomic_file(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", objective, *names, "run_dir"])
        for trial in study.trials:
            value = "" if trial.value is None else _objective_value(trial.value, objective)
            writer.writerow([trial.number, trial.state.name, value,
                             *(trial.params.get(n, "") for n in names),
                             trial.user_attrs.get("run_dir", "")])


def _objective_value(value: float, objective: str) -> float:
    return 1.0 - value if objective == "val-auroc" else value


def _short(value: Any) -> str:
    if isinstance(value, float) and value != 0 and not math.isclose(value, round(value, 4)):
        return f"{value:.3g}"
    return str(value)


def _plot(make_plot, study, path: Path, log) -> None:
    import warnings

    import matplotlib
    import optuna

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anomaly.plots import save_figure_atomically

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = make_plot(study)
    except (ValueError, RuntimeError) as err:  # e.g. importances of one distinct value
        log(f"skipped {path.name}: {err}")
        return
    figure = axes.figure if hasattr(axes, "figure") else plt.gcf()
    figure.tight_layout()
    save_figure_atomically(figure, path)
    plt.close(figure)

