"""Supervised baseline: a class-weighted torchvision classifier with Grad-CAM.

Modules: ``models`` (network), ``augment`` (training augmentation), ``train`` (``fit``),
``predict`` (``Classifier``), ``gradcam``, ``evaluate_classifier``.
"""

CHECKPOINT_FORMAT = "cxr-classify"
CHECKPOINT_FORMAT_VERSION = 1
