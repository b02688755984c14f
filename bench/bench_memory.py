"""Scoring memory: peak RSS of ``score_files`` as the folder grows (it should stay flat).

For each count, fills a temporary folder with that many images (symbolic links to, or
copies of, the given images, cycling through them), scores it into a CSV in a fresh
Python process with anomaly.score_files.score_files, and reports that process's memory
(VmRSS before scoring, VmHWM peak, ru_maxrss) and images/second.

    python bench/bench_memory.py --model runs/cxr --data ../shared/data/chest_xray/test_dev \
        --counts 100,1000,10000
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


def proc_status_kib(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def child(args: argparse.Namespace) -> None:
    """Score one folder in this process and print one JSON line of measurements."""
    import resource

    import torch

    from anomaly.data import find_images
    from anomaly.score import Scorer
    from anomaly.score_files import score_files

    if args.threads:
        torch.set_num_threads(args.threads)
    options = dict(device=args.device, batch_size=args.batch_size)
    if args.iterations is not None:
        options["iterations"] = args.iterations
    scorer = Scorer.from_checkpoint(args.model, mode=args.mode, **options)
    paths = find_images(args.folder)
    rss_before = proc_status_kib("VmRSS")
    start = time.perf_counter()
    result = score_files(scorer, paths, args.out, progress=False)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "images": len(result.paths), "failures": len(result.failures), "seconds": seconds,
        "rss_before_kib": rss_before, "vm_hwm_kib": proc_status_kib("VmHWM"),
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "iterations": scorer.iterations, "device": str(scorer.device),
        "torch_threads": torch.get_num_threads(),
    }))


def _mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024


def fill_folder(folder: Path, sources: list[Path], count: int, copy: bool) -> None:
    """Put ``count`` images in ``folder``, cycling through ``sources``."""
    folder.mkdir(parents=True)
    for i in range(count):
        source = sources[i % len(sources)].resolve()
        target = folder / f"img_{i:07d}{source.suffix}"
        if copy:
            shutil.copyfile(source, target)
        else:
            os.symlink(source, target)


def run_child(args: argparse.Namespace, folder: Path, out_csv: Path) -> dict:
    """Score ``folder`` in a fresh interpreter; return its measurements."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", args.model,
               "--folder", str(folder), "--out", str(out_csv), "--mode", args.mode,
               "--device", args.device, "--batch-size", str(args.batch_size)]
    if args.iterations is not None:
        command += ["--iterations", str(args.iterations)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"scoring {folder} failed with exit code {done.returncode}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="run directory or checkpoint .pt")
    parser.add_argument("--data", help="folder of source images (found recursively)")
    parser.add_argument("--counts", default="100,1000", help="comma-separated folder sizes")
    parser.add_argument("--mode", default="encoder", help="search, encoder or encoder-search")
    parser.add_argument("--iterations", type=int, help="search steps (default: the mode's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in the scorer")
    parser.add_argument("--copy", action="store_true", help="copy files instead of symlinking")
    parser.add_argument("--tmp-dir", help="where the temporary folders go")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child and not args.data:
        parser.error("--data is required")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    import torch

    from anomaly.data import find_images
    from anomaly.device import resolve_device
    from bench.common import machine_info, markdown_table, print_machine

    if args.threads:
        torch.set_num_threads(args.threads)
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    sources = find_images(args.data)
    info = machine_info(resolve_device(args.device))
    print("# Scoring memory benchmark\n")
    print_machine(info)
    print(f"Model: {args.model}; mode {args.mode}; batch {args.batch_size}; folders of "
          f"{'copies' if args.copy else 'symbolic links'} cycling through {len(sources)} "
          f"files from {args.data}; each scored by score_files into a CSV in a fresh "
          "process.\n")
    rows, figures = [], []
    with tempfile.TemporaryDirectory(prefix="bench-memory-", dir=args.tmp_dir) as tmp:
        for count in counts:
            folder = Path(tmp) / f"images-{count}"
            fill_folder(folder, sources, count, args.copy)
            out_csv = Path(tmp) / f"scores-{count}.csv"
            measured = run_child(args, folder, out_csv)
            with open(out_csv, encoding="utf-8") as handle:
                csv_rows = sum(1 for _ in handle) - 1
            measured.update(count=count, csv_rows=csv_rows,
                            images_per_second=measured["images"] / measured["seconds"])
            figures.append(measured)
            before = measured["rss_before_kib"]
            peak = measured["vm_hwm_kib"]
            rows.append([count, csv_rows, measured["seconds"], measured["images_per_second"],
                         _mib(before), _mib(peak), _mib(measured["ru_maxrss_kib"]),
                         _mib(peak - before) if peak and before else None])
            shutil.rmtree(folder)
    print("## Results\n")
    print(markdown_table(
        ["images", "CSV rows", "seconds", "images/second", "RSS before scoring (MiB)",
         "peak RSS VmHWM (MiB)", "ru_maxrss (MiB)", "peak - before (MiB)"], rows))
    if len(figures) > 1 and all(f["vm_hwm_kib"] for f in figures):
        first, last = figures[0], figures[-1]
        print(f"\nPeak RSS from {first['count']} to {last['count']} images: "
              f"{(last['vm_hwm_kib'] - first['vm_hwm_kib']) / 1024:+.1f} MiB "
              f"for {last['count'] / first['count']:.0f}x the images.")
    if args.json:
        out = {"machine": info, "settings": vars(args), "results": figures}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
