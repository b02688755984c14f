"""Default scoring speed, end to end: files in, scores out, with the run's default mode.

Times ``Scorer.score_paths`` (reading and decoding each file, CLAHE, resizing, batching,
the scoring network and the density) on real files, as ``anomaly score --dir`` does, and
the network alone on images preprocessed beforehand. Prints the machine, medians of
``--repeats`` runs and a Markdown table; ``--json OUT`` keeps the figures.

Usage:
    PYTHONPATH=. python bench/bench_critic.py --model RUN --data DIR [--images 256]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from anomaly.data import find_images, load_images, uint8_to_model  # noqa: E402
from anomaly.device import resolve_device  # noqa: E402
from anomaly.families.critic.scorer import CPU_PIECE  # noqa: E402
from anomaly.score import Scorer  # noqa: E402
from bench.common import machine_info, markdown_table, median_time, print_machine  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run directory or checkpoint")
    parser.add_argument("--data", required=True, help="folder of images (recursive)")
    parser.add_argument("--images", type=int, default=256, help="files scored per run")
    parser.add_argument("--mode", help="scoring mode (default: the run's default)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="bfloat16 autocast where the CPU runs it natively")
    parser.add_argument("--heat", choices=["map", "gradcam"],
                        help="the critic's heat map (default: the run's, map with a map head)")
    parser.add_argument("--cpu-piece", type=int,
                        help="films per network pass on the CPU (the critic's default: "
                             f"{CPU_PIECE})")
    parser.add_argument("--exported", help="also time this export of the model (anomaly "
                        "export: onnxruntime) from files to scores")
    parser.add_argument("--json", help="write the figures here")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    scorer = Scorer.from_checkpoint(args.model, mode=args.mode, device=str(device),
                                    batch_size=args.batch_size, cpu_bf16=args.cpu_bf16,
                                    **({"heat": args.heat} if args.heat else {}))
    if args.cpu_piece:
        scorer.family.cpu_piece = args.cpu_piece
    paths = find_images(args.data)
    paths = (paths * (args.images // len(paths) + 1))[: args.images]
    info = machine_info(device)
    print("# Default scoring benchmark\n")
    print_machine(info)
    print(f"Model: {args.model}, mode {scorer.mode}, score {scorer.score}, heat "
          f"{scorer.heat_name}, settings "
          f"{scorer.settings()}, "
          f"{scorer.preprocess_config.image_size} px, batch {args.batch_size}"
          f"{f', pieces of {scorer.family.cpu_piece}' if hasattr(scorer.family, 'cpu_piece') else ''}; "
          f"{len(paths)} files from {args.data}; medians of {args.repeats} runs.\n")

    scorer.score_paths(paths[: args.batch_size], progress=False)  # warm-up
    end_to_end, times = median_time(lambda: scorer.score_paths(paths, progress=False),
                                    device, args.repeats)
    with_heat, heat_times = median_time(
        lambda: scorer.score_paths(paths, progress=False, heatmaps=True), device, args.repeats)
    images = uint8_to_model(load_images(paths, scorer.preprocess_config,
                                        progress=False).images)

    def network_only() -> None:
        for start in range(0, len(images), args.batch_size):
            scorer.score_tensor(images[start: start + args.batch_size], heatmaps=False)

    network, network_times = median_time(network_only, device, args.repeats)
    with_maps, map_times = median_time(
        lambda: [scorer.score_tensor(images[s: s + args.batch_size])
                 for s in range(0, len(images), args.batch_size)], device, args.repeats)
    rows = [["files to scores (decode, CLAHE, network, density)", len(paths), end_to_end,
             len(paths) / end_to_end],
            ["files to scores and heat maps", len(paths), with_heat, len(paths) / with_heat],
            ["preprocessed images to scores", len(images), network, len(images) / network],
            ["the same, with heat maps", len(images), with_maps, len(images) / with_maps]]
    exported_times = None
    if args.exported:
        from anomaly.exported import ExportedScorer

        exported = ExportedScorer(args.exported, batch_size=args.batch_size)
        exported.score_paths(paths[: args.batch_size])  # warm-up
        seconds, exported_times = median_time(lambda: exported.score_paths(paths),
                                                 device, args.repeats)
        what = "files to scores, the export in onnxruntime" + (
            " (its one graph computes the heat maps too)" if exported.has_map else "")
        rows.append([what, len(paths), seconds, len(paths) / seconds])
    print(markdown_table(["what is timed", "images", "seconds", "images/second"], rows))
    if args.json:
        out = {"machine": info, "settings": vars(args), "mode": scorer.mode,
               "results": [{"what": r[0], "images": r[1], "seconds": r[2],
                            "images_per_second": r[3]} for r in rows],
               "run_seconds": {"end_to_end": times, "end_to_end_heatmaps": heat_times,
                               "network": network_times,
                               "heatmaps": map_times, "exported": exported_times}}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
