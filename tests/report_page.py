"""Read a report.html back: its numbers, images and gallery, for the tests."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import cv2
import numpy as np


class ReportPage(HTMLParser):
    """Collects data-key cells (with their shown text), images and gallery figures."""

    def __init__(self, text: str):
        super().__init__()
        self.cells: list[tuple[str, str, str]] = []  # (key, exact value, shown text)
        self.images: list[tuple[str, str]] = []  # (alt, src)
        self.figures: list[dict] = []  # data-path, data-score of gallery figures
        self.headings: list[str] = []
        self._cell: list | None = None
        self._heading: list | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-key" in attrs:
            self._cell = [attrs["data-key"], attrs["data-value"], ""]
        elif tag == "img":
            self.images.append((attrs.get("alt", ""), attrs["src"]))
        elif tag == "figure" and "data-path" in attrs:
            self.figures.append({"path": attrs["data-path"], "score": float(attrs["data-score"]),
                                 "section": len(self.headings)})
        elif tag in ("h1", "h2"):
            self._heading = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data
        if self._heading is not None:
            self._heading.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(tuple(self._cell))
            self._cell = None
        elif tag in ("h1", "h2") and self._heading is not None:
            self.headings.append("".join(self._heading))
            self._heading = None


def decoded_images(page: ReportPage) -> list[np.ndarray]:
    """Every inline image, decoded; fails on a link or an undecodable picture."""
    decoded = []
    for alt, src in page.images:
        assert src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")), (
            f"{alt}: not inline ({src[:40]})")
        image = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8),
                             cv2.IMREAD_UNCHANGED)
        assert image is not None and image.size > 0, f"{alt}: does not decode"
        decoded.append(image)
    return decoded


def report_value(report: dict, key: str):
    """``report[key]`` where a key like ``confusion_matrix.0.1`` walks into lists, and a
    name with dots in it (a subgroup's ``.jpeg``) is found as the longest key that fits."""
    value, parts = report, key.split(".")
    while parts:
        if isinstance(value, list):
            value, parts = value[int(parts[0])], parts[1:]
            continue
        taken = next(n for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in value)
        value, parts = value[".".join(parts[:taken])], parts[taken:]
    return value


def check_page_against_report(report_dir) -> ReportPage:
    """Parse report.html: every image decodes, every number is report.json's."""
    text = (report_dir / "report.html").read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text  # nothing fetched
    page = ReportPage(text)
    report = json.loads((report_dir / "report.json").read_text())
    keys = {key for key, _, _ in page.cells}
    assert {"auroc", "auroc_ci95.0", "auroc_ci95.1", "accuracy", "precision", "recall",
            "specificity", "f1", "threshold", "n", "confusion_matrix.1.1"} <= keys
    for key, exact, shown_text in page.cells:
        expected = report_value(report, key)
        assert json.loads(exact) == expected, key
        if expected is None:
            assert shown_text == "-", key
        elif isinstance(expected, float):
            digits = f"{expected:.4g}" if key == "threshold" else f"{expected:.3f}"
            assert shown_text == digits, key
        else:
            assert shown_text == str(expected), key
    assert len(decoded_images(page)) >= 3  # ROC, histogram, confusion matrix at least
    return page
