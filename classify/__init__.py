"""Supervised baseline: a class-weighted torchvision classifier with Grad-CAM."""
