"""anomaly serve: the JSON endpoint, its refusals, concurrent clients, and the page driven
in a real headless browser."""

from __future__ import annotations

import concurrent.futures
import csv
import json
import socket
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from anomaly.score_files import regions_path
from anomaly.serve import create_app, decode_panel
from cli.anomaly_cli import main as anomaly_main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples" / "data" / "test").rglob("*.jpeg"))
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def client(default_run):
    from fastapi.testclient import TestClient

    return TestClient(create_app(default_run, device="cpu"))


@pytest.fixture(scope="module")
def cli_rows(default_run, tmp_path_factory) -> dict[str, dict]:
    """``anomaly score --regions``'s row of each bundled example film, by file name, with
    its regions (the JSONL beside the CSV) under ``boxes``."""
    out = tmp_path_factory.mktemp("cli") / "scores.csv"
    done = CliRunner().invoke(anomaly_main, ["score", "--model", str(default_run), "--dir",
                                             str(ROOT / "examples/data/test"), "--out",
                                             str(out), "--regions", "--no-progress"])
    assert done.exit_code == 0, done.output
    rows = {Path(row["path"]).name: row for row in csv.DictReader(open(out))}
    for line in open(regions_path(out)):
        record = json.loads(line)
        rows[Path(record["path"]).name]["boxes"] = record["regions"]
    return rows


@pytest.fixture(scope="module")
def cli_scores(cli_rows) -> dict[str, float]:
    """``anomaly score``'s score of each bundled example film, by file name."""
    return {name: float(row["score"]) for name, row in cli_rows.items()}


def post(client, path: Path, **params):
    return client.post("/score", params=params,
                       files={"file": (path.name, path.read_bytes())})


def test_health_names_the_model_and_its_threshold(client):
    answer = client.get("/health").json()
    assert answer["status"] == "ok" and answer["mode"] == "critic"
    assert answer["score_kind"] == "density" and answer["threshold"] > 0
    assert answer["threshold_source"] == "heldout-normal-quantile"


def test_score_answers_what_anomaly_score_writes(client, cli_rows):
    for path in EXAMPLES[:3]:
        answer = post(client, path, heatmap="true").json()
        row = cli_rows[path.name]
        assert answer["file"] == path.name
        assert answer["score"] == pytest.approx(float(row["score"]), rel=1e-5)
        assert answer["label"] == row["label"]
        assert answer["p_value"] == pytest.approx(float(row["p_value"]), rel=1e-5)
        assert set(answer["components"]) == {"density", "logit", "quiet", "map", "brightness"}
        assert answer["shape"] == [224, 224]
        boxes = [(r["x"], r["y"], r["w"], r["h"]) for r in answer["regions"]]
        assert boxes == [(r["x"], r["y"], r["w"], r["h"]) for r in row["boxes"]]
        panel = decode_panel(answer)
        assert panel is not None and panel.shape[0] == 256 and panel.shape[2] == 3
    assert "heatmap_png" not in post(client, EXAMPLES[0]).json()


@pytest.mark.parametrize("name, content, status, words", [
    ("film.png", b"this is not an image", 415, "not a readable image"),
    ("film.dcm", b"DICM" * 40, 415, "film.dcm"),
    ("film.png", b"", 400, "empty"),
])
def test_bad_uploads_get_a_json_message_and_a_4xx(client, name, content, status, words):
    answer = client.post("/score", files={"file": (name, content)})
    assert answer.status_code == status
    assert words in answer.json()["error"] and "Traceback" not in answer.text


def test_missing_field_unknown_page_and_too_large_are_json_4xx(default_run, client):
    from fastapi.testclient import TestClient

    missing = client.post("/score")
    assert missing.status_code == 422 and "file" in missing.json()["error"]
    unknown = client.get("/nowhere")
    assert unknown.status_code == 404 and "error" in unknown.json()
    small = TestClient(create_app(default_run, device="cpu", max_upload_mb=0.001))
    large = small.post("/score", files={"file": ("big.png", b"0" * 5000)})
    assert large.status_code == 413 and "limit" in large.json()["error"]
    with pytest.raises(ValueError, match="upload limit"):
        create_app(default_run, max_upload_mb=float("nan"))


def test_uploads_leave_no_file_behind(client):
    before = set(Path(tempfile.gettempdir()).glob("cxr-anomaly-*"))
    post(client, EXAMPLES[0])
    client.post("/score", files={"file": ("x.png", b"junk")})
    assert set(Path(tempfile.gettempdir()).glob("cxr-anomaly-*")) == before


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(default_run):
    """The app served by uvicorn on a free local port, in a thread."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(create_app(default_run, device="cpu"), host="127.0.0.1",
                            port=port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    for _ in range(200):
        if running.started:
            break
        time.sleep(0.05)
    assert running.started, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(timeout=10)


def http_score(url: str, path: Path) -> dict:
    """POST a film as multipart/form-data with the standard library alone."""
    boundary = "----cxr-anomaly-test"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{path.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}/score", data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def test_eight_concurrent_clients_get_the_sequential_answers(server):
    films = [EXAMPLES[i % len(EXAMPLES)] for i in range(8)]
    sequential = [http_score(server, path)["score"] for path in films]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        concurrent_scores = [a["score"] for a in pool.map(lambda p: http_score(server, p),
                                                          films)]
    np.testing.assert_allclose(concurrent_scores, sequential, rtol=1e-6)
    assert len(set(np.round(sequential, 4))) > 1  # different films, different scores


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="Debian's Chromium is not installed (apt-get install chromium)")
def test_the_page_shows_the_score_and_the_overlay_in_a_real_browser(server, cli_scores,
                                                                     tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    film = EXAMPLES[-1]
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('about').textContent"
                                   ".includes('threshold')")
            page.set_input_files("#file", str(film))
            page.wait_for_function("document.getElementById('score').textContent !== ''")
            shown = float(page.text_content("#score"))
            assert shown == pytest.approx(cli_scores[film.name], rel=1e-5)
            assert page.text_content("#verdict") in ("normal", "anomalous")
            page.wait_for_function("document.getElementById('panel').naturalWidth > 0")
            assert page.get_attribute("#panel", "src").startswith("data:image/png;base64,")
            page.set_input_files("#file", [str(EXAMPLES[0]), str(EXAMPLES[1])])
            page.wait_for_function("document.querySelectorAll('#films tr').length === 3")
            rows = page.query_selector_all("#films tr")
            assert rows[1].text_content().startswith(EXAMPLES[0].name)
            page.screenshot(path=str(tmp_path / "page.png"))
        finally:
            browser.close()
