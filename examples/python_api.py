"""Train, score and evaluate from Python, without the command line.

Run from the repository root: ``python examples/python_api.py``.
"""

from pathlib import Path

from anomaly.evaluate_gan import evaluate_gan
from anomaly.score import Scorer
from anomaly.train import TrainConfig, train_gan

HERE = Path(__file__).parent
OUT = HERE / "output" / "python_api"

config = TrainConfig(image_size=32, epochs=2, batch_size=16, encoder_epochs=1)
train_gan(config, HERE / "data" / "train" / "NORMAL", OUT / "run", progress=False)

scorer = Scorer.from_checkpoint(OUT / "run", mode="search", iterations=100)
result = scorer.score_paths(sorted((HERE / "data" / "test").rglob("*.jpeg")), progress=False)
for path, score in zip(result.paths, result.score):
    print(f"{path.parent.name:10s} {path.name:40s} {score:.4f}")

report = evaluate_gan(OUT / "run", HERE / "data" / "test", OUT / "report", resamples=200,
                      threshold_on_test=True, progress=False, mode="encoder")
print(f"AUROC on the 8 example images: {report['auroc']:.3f} (a toy run; see README for real figures)")
