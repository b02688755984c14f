"""Train, score, decide and evaluate from Python, without the command line.

Run from the repository root: ``python examples/python_api.py``.
"""

from pathlib import Path

from anomaly.evaluate_model import evaluate_model
from anomaly.score import Scorer
from anomaly.train import TrainConfig, train_run

HERE = Path(__file__).parent
OUT = HERE / "output" / "python_api"

# the recommended kind at toy size: the opacity critic, then a DCGAN and its encoder
config = TrainConfig(image_size=32, critic_epochs=5, epochs=2, batch_size=16,
                     encoder_epochs=1)
train_run(config, HERE / "data" / "train" / "NORMAL", OUT / "run", progress=False,
          overwrite=True)  # this example replaces its own earlier run
test_images = sorted((HERE / "data" / "test").rglob("*.jpeg"))

scorer = Scorer.from_checkpoint(OUT / "run")  # the default: critic, density
decision = scorer.decision()  # the held-out normals' 95% quantile until calibrated
result = scorer.score_paths(test_images, progress=False)
print(f"critic ({decision.describe()}):")
for path, score, label, p in zip(result.paths, result.score, decision.labels(result.score),
                                 decision.p_values(result.score)):
    print(f"  {path.parent.name:10s} {path.name:32s} {score:8.3f} {label:9s} p={p:.3f}")

search = Scorer.from_checkpoint(OUT / "run", mode="search", iterations=100)  # AnoGAN
result = search.score_paths(test_images, progress=False)
print("AnoGAN latent search, lung-opacity:",
      " ".join(f"{score:.4f}" for score in result.score))

report = evaluate_model(OUT / "run", HERE / "data" / "test", OUT / "report", resamples=200,
                      threshold_on_test=True, progress=False)
print(f"AUROC on the 8 example images: {report['auroc']:.3f} (a toy run; see README for real figures)")
