"""Compare checkpoint-selection criteria on scripts/ema_selection.py's logs (ROOT/seed*/epochs.jsonl).

Usage: python scripts/ema_selection_report.py ROOT [EPOCHS] (seeds with fewer epochs are left out).

A criterion sees only Val (6 images); it is judged by the held-out Dice (6 Train images no run
trained on) of the weights it picks. Criteria: best raw Val (today's rule), best trailing mean of
raw Val over 3 epochs, best EMA Val (EMA weights), and the last epoch (raw, EMA).
"""

import json
import statistics
import sys
from pathlib import Path

root = Path(sys.argv[1])
window = 3
need = int(sys.argv[2]) if len(sys.argv) > 2 else 1  # seeds with fewer epochs are left out; others cut to this many
rows = {}
for folder in sorted(root.glob("seed*")):
    if folder.is_dir() and (folder / "epochs.jsonl").exists():
        epochs = [json.loads(line) for line in (folder / "epochs.jsonl").read_text().splitlines() if line]
        if len(epochs) >= need:
            rows[folder.name] = epochs[:need] if need > 1 else epochs

criteria = {}
for seed, epochs in rows.items():
    val_raw = [r["val"]["raw"] for r in epochs]
    val_ema = [r["val"]["ema_p0.67"] for r in epochs]
    hold_raw = [r["holdout"]["raw"] for r in epochs]
    hold_ema = [r["holdout"]["ema_p0.67"] for r in epochs]
    smooth = [statistics.fmean(val_raw[max(0, i - window + 1): i + 1]) for i in range(len(val_raw))]
    pick = lambda scores: max(range(len(scores)), key=lambda i: (scores[i], -i))  # first best, as training does
    chosen = {
        "best raw Val": (pick(val_raw), val_raw, hold_raw),
        f"best raw Val, trailing mean of {window}": (pick(smooth), val_raw, hold_raw),
        "best EMA Val (EMA weights)": (pick(val_ema), val_ema, hold_ema),
        "last epoch, raw": (len(epochs) - 1, val_raw, hold_raw),
        "last epoch, EMA": (len(epochs) - 1, val_ema, hold_ema),
        "oracle: best held-out, raw": (pick(hold_raw), val_raw, hold_raw),
    }
    print(f"{seed}: {len(epochs)} epochs")
    for name, (i, val, hold) in chosen.items():
        criteria.setdefault(name, []).append((val[i], hold[i], i + 1))
        print(f"  {name:42s} epoch {i + 1:3d}  Val {val[i]:.4f}  held-out {hold[i]:.4f}")

print(f"\nover {len(rows)} seeds: mean (spread = max - min; sd)")
for name, values in criteria.items():
    val = [v for v, _, _ in values]
    hold = [h for _, h, _ in values]
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
    print(f"  {name:42s} Val {statistics.fmean(val):.4f} (spread {max(val) - min(val):.4f}; sd {sd(val):.4f})  "
          f"held-out {statistics.fmean(hold):.4f} (spread {max(hold) - min(hold):.4f}; sd {sd(hold):.4f})")
sys.exit(0)
