"""A local web app to look at films and their maps, and a JSON endpoint for scripts.

``anomaly serve`` runs :func:`create_app` with uvicorn. The model is loaded once; each
upload is streamed into a private temporary folder (never more than the size limit),
read by the toolkit's readers (PNG, JPEG, TIFF, DICOM, ...), scored, and removed. Every
error is a JSON message with a 4xx code (5xx only for a fault of the server itself, never
with a traceback).

Endpoints: ``GET /`` the page; ``GET /health``; ``POST /score`` (multipart field
``file``; ``?heatmap=true`` adds the panel as a base64 PNG) → score, label, p-value,
threshold and its source, components, regions.
"""

from __future__ import annotations

import base64
import math
import os
import shutil
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from anomaly.io import MAX_FILE_MB, ImageReadError, display_path

PAGE = Path(__file__).with_name("serve_page.html")
CHUNK = 1 << 20


class UploadError(Exception):
    """A request the app refuses: its HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class FilmScorer:
    """The loaded model behind the app: a run (torch) or an exported model (onnxruntime),
    with its decision rule; scores one film file at a time (one at a time across
    threads: the model is shared)."""

    def __init__(self, model: str | os.PathLike | None = None, threshold: float | None = None,
                 alpha: float | None = None, device: str = "auto"):
        from anomaly import pretrained
        from anomaly.exported import ExportedScorer, is_exported_model

        if pretrained.is_pretrained(model):
            self.description = pretrained.DESCRIPTION
            model = pretrained.bundled_checkpoint()
        else:
            self.description = display_path(Path(model))
        if is_exported_model(model):
            self.scorer = ExportedScorer(model, batch_size=1)
            self.has_map = self.scorer.has_map
        else:
            from anomaly.score import Scorer

            self.scorer = Scorer.from_checkpoint(model, batch_size=1, device=device)
            self.has_map = True
        self.decision = self.scorer.decision(threshold, alpha)
        self.region_threshold = getattr(self.scorer, "region_threshold", None)
        self.lock = threading.Lock()

    def about(self) -> dict:
        """What the app scores with."""
        return {"model": self.description, "mode": self.scorer.mode,
                "score_kind": self.scorer.score, "threshold": _finite(self.decision.threshold),
                "threshold_source": self.decision.source, "alpha": self.decision.alpha,
                "region_threshold": _finite(self.region_threshold)}

    def score_file(self, path: Path, name: str, heatmap: bool) -> dict:
        """Score one film file: the JSON answer of ``POST /score``."""
        batches = []
        with self.lock:
            result = self.scorer.score_paths(
                [path], on_batch=lambda _, scores: batches.append(scores),
                heatmaps=self.has_map, progress=False)
            if result.failures:
                raise UploadError(415, f"{name}: {result.failures[0][1]}")
            scores = batches[0]
            regions = (self.scorer.film_regions(scores, 0)
                       if self.region_threshold is not None and scores.heatmaps is not None
                       else None)
            panel = self.scorer.heatmap_panel(scores, 0) if heatmap and \
                scores.heatmaps is not None else None
        score = float(scores.score[0])
        answer = {
            "file": name, "score": _finite(score),
            "label": self.decision.labels([score])[0] if math.isfinite(score) else "not-finite",
            "p_value": _finite(float(self.decision.p_values([score])[0])),
            "components": {k: _finite(float(v[0])) for k, v in scores.components.items()},
            "regions": None if regions is None else [r.as_dict() for r in regions],
            "shape": None if scores.shapes is None or scores.shapes[0] is None
            else list(scores.shapes[0]),
            **{k: v for k, v in self.about().items() if k != "model"}}
        if panel is not None:
            ok, png = cv2.imencode(".png", panel)
            answer["heatmap_png"] = base64.b64encode(png.tobytes()).decode() if ok else None
        return answer


def _finite(value):
    """JSON has no NaN: a non-finite number is sent as None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def receive_upload(stream, name: str, folder: Path, max_bytes: int) -> Path:
    """Copy an upload's bytes into ``folder`` (never more than ``max_bytes``), keeping
    its suffix so the readers know the format; refuse an empty or too large file."""
    suffix = "".join(Path(name).suffixes[-2:])[-16:] if name else ""
    target = folder / f"film{suffix}"
    written = 0
    with open(target, "xb") as out:
        while True:
            block = stream.read(CHUNK)
            if not block:
                break
            written += len(block)
            if written > max_bytes:
                raise UploadError(413, f"{name}: larger than the limit of "
                                       f"{max_bytes / 2**20:g} MB")
            out.write(block)
    if written == 0:
        raise UploadError(400, f"{name}: empty file")
    return target


def create_app(model: str | os.PathLike | None = None, threshold: float | None = None,
               alpha: float | None = None, max_upload_mb: float = MAX_FILE_MB,
               device: str = "auto"):
    """The FastAPI app around one loaded model (see the module docstring)."""
    if not (max_upload_mb > 0 and math.isfinite(max_upload_mb)):
        raise ValueError(f"the upload limit must be a positive number of MB, not "
                         f"{max_upload_mb!r}")
    films = FilmScorer(model, threshold, alpha, device)
    max_bytes = int(max_upload_mb * 2**20)
    app = FastAPI(title="cxr-anomaly", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(UploadError)
    async def refused(request: Request, err: UploadError):
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        return JSONResponse({"error": "send the film as the multipart field 'file'"},
                            status_code=422)

    @app.exception_handler(Exception)
    async def fault(request: Request, err: Exception):
        return JSONResponse({"error": f"the server failed on this request "
                                      f"({type(err).__name__})"}, status_code=500)

    @app.middleware("http")
    async def limit_size(request: Request, call_next):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes + CHUNK:
            return JSONResponse({"error": f"request larger than the limit of "
                                          f"{max_upload_mb:g} MB"}, status_code=413)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.read_text(encoding="utf-8")

    @app.get("/health")
    def health():
        return {"status": "ok", **films.about()}

    @app.post("/score")
    def score(file: UploadFile = File(...), heatmap: bool = False):
        name = Path(file.filename or "upload").name
        folder = Path(tempfile.mkdtemp(prefix="cxr-anomaly-"))  # private: mode 0700
        try:
            path = receive_upload(file.file, name, folder, max_bytes)
            try:
                return films.score_file(path, name, heatmap)
            except ImageReadError as err:
                raise UploadError(415, f"{name}: {err.reason}") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    app.state.films = films
    return app


def serve(model=None, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(model, **options)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def decode_panel(answer: dict) -> np.ndarray | None:
    """The heat-map panel of a ``/score`` answer as a BGR array (None without one)."""
    data = answer.get("heatmap_png")
    if not data:
        return None
    return cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
