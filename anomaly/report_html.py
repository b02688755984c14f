"""``report.html``: one self-contained page per report, and one for a comparison.

Everything is inline (figures as PNG and gallery panels as JPEG base64 data URIs,
CSS in the page), so the file can be mailed or opened offline. Every metric shown
carries its exact ``report.json`` value in a ``data-value`` attribute (``data-key``
names it), so a page can be checked against its JSON mechanically.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

METRICS = [("auroc", "AUROC"), ("accuracy", "accuracy"), ("precision", "precision"),
           ("recall", "recall (sensitivity)"), ("specificity", "specificity"), ("f1", "F1"),
           ("threshold", "threshold")]

STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; } td.name, th.name { text-align: left; }
.figures img { height: 22em; margin-right: 1em; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; width: 17em; font-size: 0.85em; }
figure img { width: 100%; image-rendering: auto; }
figcaption { word-break: break-all; }
.wrong { color: #b00; font-weight: bold; } .right { color: #060; }
.note { color: #555; font-size: 0.9em; }
"""


@dataclass
class GalleryImage:
    """One film of the error gallery: its panel (input + heat) and why it is shown."""

    path: str
    label: int  # 0 normal, 1 anomalous
    score: float
    flagged: bool  # score >= threshold
    panel: np.ndarray | None  # uint8 BGR (or grayscale) image; None: not drawn


def pick_gallery(labels: Sequence[int], scores: Sequence[float], count: int = 6
                 ) -> tuple[list[int], list[int]]:
    """Indices of the ``count`` most anomalous normal images (highest scores first) and
    the ``count`` least anomalous anomalous images (lowest scores first)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    worst_normal = normal[np.argsort(-scores[normal], kind="stable")][:count]
    mildest_anomalous = anomalous[np.argsort(scores[anomalous], kind="stable")][:count]
    return worst_normal.tolist(), mildest_anomalous.tolist()


def png_data_uri(image: bytes | str | os.PathLike) -> str:
    """A ``data:image/png;base64,...`` URI of PNG bytes or of a PNG file."""
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def jpeg_data_uri(image: np.ndarray, quality: int = 88) -> str:
    """A ``data:image/jpeg;base64,...`` URI of a uint8 grayscale or BGR array (X-ray
    panels are about a tenth of their PNG size)."""
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode the image as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def shown(key: str, value: float) -> str:
    """How a metric is printed: 3 decimals; the threshold to 4 significant digits (a
    classifier's can be 1e-5)."""
    return f"{value:.4g}" if key == "threshold" else f"{value:.3f}"


def _text(value) -> str:
    """HTML-escaped text; file names that are not valid UTF-8 keep a replacement mark."""
    return html.escape(str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def _number(key: str, value) -> str:
    """A table cell showing ``value`` (see :func:`shown`) and carrying it exactly."""
    if value is None:
        return f'<td data-key="{key}" data-value="null">-</td>'
    return (f'<td data-key="{key}" data-value="{html.escape(json.dumps(value))}">'
            f"{shown(key, float(value))}</td>")


def _metrics_table(report: dict) -> str:
    low, high = report["auroc_ci95"]
    rows = [f'<tr><th class="name">{label}</th>{_number(key, report[key])}</tr>'
            for key, label in METRICS]
    rows.insert(1, '<tr><th class="name">AUROC 95% CI</th>'
                   f'{_number("auroc_ci95.0", low)}{_number("auroc_ci95.1", high)}</tr>')
    (tn, fp), (fn, tp) = report["confusion_matrix"]
    n, n_normal, n_anomalous = (_text(report[k]) for k in ("n", "n_normal", "n_anomalous"))
    counts = (f'<tr><th class="name">images</th><td data-key="n" data-value="{n}">'
              f'{n}</td></tr>'
              f'<tr><th class="name">normal / anomalous</th>'
              f'<td data-key="n_normal" data-value="{n_normal}">{n_normal}</td>'
              f'<td data-key="n_anomalous" data-value="{n_anomalous}">'
              f'{n_anomalous}</td></tr>'
              f'<tr><th class="name">threshold from</th>'
              f'<td data-key="threshold_source" '
              f'data-value="{html.escape(json.dumps(report["threshold_source"]))}">'
              f'{html.escape(report["threshold_source"])}</td></tr>'
              f'<tr><th class="name">TN FP / FN TP</th>'
              + "".join(f'<td data-key="confusion_matrix.{i}.{j}" data-value="{_text(v)}">'
                        f'{_text(v)}</td>'
                        for (i, j), v in (((0, 0), tn), ((0, 1), fp), ((1, 0), fn), ((1, 1), tp)))
              + "</tr>")
    return "<table>" + "".join(rows) + counts + "</table>"


def _subgroups_table(report: dict) -> str:
    """Each subgroup of anomalous films against every normal one (``--subgroup``)."""
    groups = report.get("subgroups") or {}
    if not groups:
        return ""
    rows = []
    for name, group in groups.items():
        key = _text(f"subgroups.{name}")
        count = _text(group["n_anomalous"])
        interval = "<td>-</td><td>-</td>"  # none of its files scored
        if group["auroc_ci95"] is not None:
            low, high = group["auroc_ci95"]
            interval = _number(f"{key}.auroc_ci95.0", low) + _number(f"{key}.auroc_ci95.1", high)
        rows.append(f'<tr><th class="name">{_text(name)}</th>'
                    f'<td data-key="{key}.n_anomalous" data-value="{count}">{count}</td>'
                    f'{_number(key + ".auroc", group["auroc"])}{interval}'
                    f'{_number(key + ".recall", group["recall"])}</tr>')
    return ("<h2>Subgroups of the anomalous films, each against every normal film</h2>"
            "<table><tr><th>name holds</th><th>anomalous</th><th>AUROC</th><th>CI low</th>"
            "<th>CI high</th><th>recall</th></tr>" + "".join(rows) + "</table>")


def _settings_list(report: dict) -> str:
    """The report's other keys (mode, score, backbone, val AUROC, fidelity ...)."""
    listed = {}
    for key, value in report.items():
        if key in {k for k, _ in METRICS} | {"auroc_ci95", "confusion_matrix", "n", "n_normal",
                                             "n_anomalous", "threshold_source", "subgroups"}:
            continue
        if isinstance(value, float):
            listed[key] = f"{value:.4g}"
        elif isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
            listed[key] = ", ".join(f"{k} {v:.4g}" for k, v in value.items())  # e.g. fidelity
        elif not isinstance(value, (dict, list)):
            listed[key] = str(value)
    if not listed:
        return ""
    items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                    for k, v in listed.items())
    return f"<ul class='note'>{items}</ul>"


def _gallery(title: str, note: str, images: Sequence[GalleryImage]) -> str:
    if not images:
        return f"<h2>{html.escape(title)}</h2><p class='note'>none</p>"
    figures = []
    for image in images:
        wrong = image.flagged != bool(image.label)
        verdict = "flagged" if image.flagged else "not flagged"
        figures.append(
            f'<figure data-path="{_text(image.path)}" data-score="{image.score!r}">'
            + (f'<img alt="{_text(Path(image.path).name)}" '
               f'src="{jpeg_data_uri(image.panel)}">' if image.panel is not None else "")
            + f"<figcaption>{_text(Path(image.path).name)}<br>score {image.score:.4g} "
            f'<span class="{"wrong" if wrong else "right"}">{verdict}'
            f'{" (error)" if wrong else ""}</span></figcaption></figure>')
    return (f"<h2>{html.escape(title)}</h2><p class='note'>{html.escape(note)}</p>"
            f'<div class="gallery">{"".join(figures)}</div>')


def render_report_html(report: dict, figures: dict[str, str | os.PathLike],
                       false_positives: Sequence[GalleryImage],
                       false_negatives: Sequence[GalleryImage], title: str,
                       heat_note: str = "") -> str:
    """The page of one report.

    Args:
        report: the report.json dict.
        figures: caption -> PNG file (ROC, histogram, confusion matrix).
        false_positives: the most anomalous normal images, highest score first.
        false_negatives: the least anomalous anomalous images, lowest score first.
        title: page heading.
        heat_note: what the gallery's panels show (heatmap or Grad-CAM).
    """
    figure_tags = "".join(
        f'<img alt="{html.escape(caption)}" title="{html.escape(caption)}" '
        f'src="{png_data_uri(path)}">' for caption, path in figures.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="note">An image is flagged anomalous when its score is at least the threshold
(picked on: {html.escape(report["threshold_source"])}). Recall is sensitivity.</p>
{_metrics_table(report)}
{_subgroups_table(report)}
{_settings_list(report)}
<h2>ROC, scores by class, confusion matrix</h2>
<div class="figures">{figure_tags}</div>
{_gallery("Most anomalous normal films (false positives when flagged)",
          heat_note, false_positives)}
{_gallery("Least anomalous abnormal films (false negatives when not flagged)",
          heat_note, false_negatives)}
</body></html>
"""


def threshold_note(reports: Sequence[tuple[str, dict]]) -> str:
    """Where the reports' thresholds came from, in one sentence (a threshold picked on the
    test images is named, never passed off as a validation one)."""
    on_test = [name for name, r in reports if r.get("threshold_source") == "test"]
    if not on_test:
        return "Each report's threshold was picked on its own validation data."
    return (f"The threshold of {', '.join(on_test)} was picked on its test images "
            "(--threshold-on-test), so its threshold metrics are optimistic; the others' "
            "on their own validation data.")


def render_comparison_html(reports: Sequence[tuple[str, dict]], roc_png: str | os.PathLike | None,
                           histograms: Sequence[tuple[str, str | os.PathLike]] = (),
                           differences: Sequence[tuple[str, str, float, float, float]] = ()
                           ) -> str:
    """One page for several reports: their metrics side by side, one ROC plot, and
    each report's score histogram.

    Args:
        reports: (name, report.json dict) pairs, in column order.
        roc_png: the shared ROC figure, or None.
        histograms: (name, histogram PNG) pairs.
        differences: (report a, report b, AUROC a - b, CI low, CI high) on the same images.
    """
    header = "".join(f'<th data-report="{html.escape(name)}">{html.escape(name)}</th>'
                     for name, _ in reports)
    rows = ['<tr><th class="name">model</th>'
            + "".join(f"<td>{html.escape(str(r.get('model', '')))}</td>" for _, r in reports)
            + "</tr>",
            '<tr><th class="name">images</th>'
            + "".join(f'<td data-key="n" data-value="{_text(r["n"])}">{_text(r["n"])}</td>'
                      for _, r in reports)
            + "</tr>"]
    for key, label in METRICS[:1] + [("auroc_ci95.0", "AUROC CI low"),
                                     ("auroc_ci95.1", "AUROC CI high")] + METRICS[1:]:
        cells = []
        for _, r in reports:
            value = r["auroc_ci95"][int(key[-1])] if key.startswith("auroc_ci95") else r.get(key)
            cells.append(_number(key, value))
        rows.append(f'<tr><th class="name">{label}</th>{"".join(cells)}</tr>')
    rows.append('<tr><th class="name">threshold from</th>' + "".join(
        f"<td>{html.escape(r['threshold_source'])}</td>" for _, r in reports) + "</tr>")
    paired = "".join(
        f"<li>AUROC {html.escape(a)} &minus; {html.escape(b)}: "
        f'<span data-key="auroc_difference" data-value="{_text(repr(d))}">{d:+.3f}</span> '
        f"(paired bootstrap 95% CI {low:+.3f} to {high:+.3f})</li>"
        for a, b, d, low, high in differences)
    paired = f"<ul>{paired}</ul>" if paired else (
        "<p class='note'>No paired AUROC difference: the reports did not score the same "
        "images.</p>" if len(reports) > 1 else "")
    roc = (f'<h2>ROC</h2><img alt="ROC" src="{png_data_uri(roc_png)}" style="height:28em">'
           if roc_png else "")
    hist = "".join(f'<figure><img alt="{html.escape(name)}" src="{png_data_uri(path)}">'
                   f"<figcaption>{html.escape(name)}</figcaption></figure>"
                   for name, path in histograms)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Comparison</title>
<style>{STYLE} figure {{ width: 24em; }}</style></head><body>
<h1>Comparison of {len(reports)} reports</h1>
<p class="note">{html.escape(threshold_note(reports))} The metrics below are on each
report's test images (compare them only on the same images).</p>
<table><tr><th class="name">report</th>{header}</tr>{"".join(rows)}</table>
{paired}
{roc}
<h2>Scores by class</h2><div class="gallery">{hist}</div>
</body></html>
"""

