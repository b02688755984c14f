"""Speed of ``anomaly serve``: one film from request to answer, and films per second
with concurrent clients (the model already loaded; uvicorn on this machine).

Usage:
    PYTHONPATH=. python bench/bench_serve.py [--model RUN] [--film FILE] [--repeats 20] \
        [--clients 8]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def post_film(url: str, film: Path, heatmap: bool) -> float:
    """Seconds for one ``POST /score`` of ``film`` (standard library client)."""
    import urllib.request

    boundary = "----bench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename="
            f"\"{film.name}\"\r\n\r\n").encode() + film.read_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{url}/score{'?heatmap=true' if heatmap else ''}", data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as answer:
        answer.read()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="run or exported model (default: the pretrained)")
    parser.add_argument("--film", default=str(next((ROOT / "examples/data/test/PNEUMONIA")
                                                   .glob("*.jpeg"))))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args(argv)

    import uvicorn

    from anomaly.serve import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(args.model, device="cpu"),
                                           host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url, film = f"http://127.0.0.1:{port}", Path(args.film)
    post_film(url, film, True)  # warm up
    rows = []
    for heatmap in (False, True):
        single = [post_film(url, film, heatmap) for _ in range(args.repeats)]
        count = args.repeats * args.clients
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(lambda _, h=heatmap: post_film(url, film, h), range(count)))
        rate = count / (time.perf_counter() - start)
        rows.append((heatmap, statistics.median(single), rate))
    server.should_exit = True
    print(f"machine: {cpu_model()}; film {film.name}; model {args.model or 'pretrained'}")
    print(f"| heat map in the answer | one film, request to answer (median of "
          f"{args.repeats}) | films/s with {args.clients} concurrent clients |")
    print("|---|---|---|")
    for heatmap, seconds, rate in rows:
        print(f"| {'yes' if heatmap else 'no'} | {1000 * seconds:.0f} ms | {rate:.1f} |")


if __name__ == "__main__":
    main()
