"""Command-line entry points: ``anomaly`` and ``classify``. They parse and call the library."""
