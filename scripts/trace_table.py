"""Markdown table of the AutoReLU traces in a folder (each run's autorelu_trace.csv and config.yaml).

    python scripts/trace_table.py results/autorelu-traces
"""
from __future__ import annotations

import sys
from pathlib import Path

from fernoise.runs import load_run
from fernoise.stats import trace_stats


def main(folder: str) -> None:
    print("| run | grad | init | w per | precision | seed | steps | first noisy step | switches | noisy steps | "
          "longest noisy stretch | noisy share per epoch | final w |")
    print("|" + "---|" * 13)
    for path in sorted(p.parent for p in Path(folder).glob("*/autorelu_trace.csv")):
        run = load_run(path)
        stats, cfg = trace_stats(run.trace), run.config
        shares = " ".join(f"{v:.2f}" for v in stats["noisy_share_per_epoch"].values())
        per = "channel" if cfg.get("autorelu_per_channel", True) else "unit"
        print(f"| {path.name} | {cfg['autorelu_grad']} | {cfg['autorelu_init']} | {per} | {cfg['precision']} | "
              f"{run.seed} | {stats['steps']} | {stats['first_noisy_step'] or 'never'} | {stats['switches']} | "
              f"{stats['noisy_steps']} ({stats['noisy_share']:.1%}) | {stats['longest_noisy_stretch']} | {shares} | "
              f"{stats['final_w']:.2g} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/autorelu-traces")
