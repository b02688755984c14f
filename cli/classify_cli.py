"""``classify``: the supervised baseline."""

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Supervised chest X-ray classifier (ResNet50 baseline)."""
