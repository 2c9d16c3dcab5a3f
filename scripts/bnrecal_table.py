"""Markdown table: how much of periodic noise's validation drop comes from BatchNorm statistics.

Compares a run with its twin trained with ``--bn-recalibrate N`` (issue 14, item 4):

    python scripts/bnrecal_table.py results/fer2013/periodic-seed0 results/fer2013-bnrecal/periodic-seed0
"""
from __future__ import annotations

import sys

from fernoise.reports import batchnorm_effect, load_run


def main(plain_dir: str, recalibrated_dir: str) -> None:
    effect = batchnorm_effect(load_run(plain_dir), load_run(recalibrated_dir))
    print("| epoch | noise on | val F1 | val F1, BatchNorm re-estimated | drop from the last clean epoch "
          "| drop, re-estimated |")
    print("|---|---|---|---|---|---|")
    for row in effect["epochs"]:
        drops = ["" if d is None else f"{d:+.4f}" for d in (row["drop"], row["drop_recalibrated"])]
        print(f"| {row['epoch']} | {row['noise_on']:.2f} | {row['val_f1']:.4f} | {row['val_f1_recalibrated']:.4f} | "
              f"{drops[0]} | {drops[1]} |")
    share, gain = effect["recovered_share"], effect["clean_gain"]
    print(f"\nNoisy epochs: total drop {effect['total_drop']:.4f}, of which re-estimating BatchNorm recovers "
          f"{effect['recovered']:.4f} ({'n/a' if share is None else f'{share:.0%}'}); in clean epochs "
          f"re-estimating gains {'n/a' if gain is None else f'{gain:+.4f}'} val F1 on average; largest difference "
          f"in train loss between the two runs {effect['max_train_loss_diff']:.2g} (0: the same training).")

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
