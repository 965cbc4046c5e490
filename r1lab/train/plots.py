"""PNG plots of a run's ``metrics.jsonl``: one file per metric group (matplotlib, Agg backend).

Groups: a key ``group/name`` belongs to ``group`` (``eval/pass@1`` → ``eval.png``; GRPO can
name its metrics ``reward/accuracy``, ``length/mean`` …); otherwise losses go to
``loss.png`` (the balance loss, with the expert load, to ``balance.png``), ``tokens_per_s``
to ``throughput.png``, and any other numeric key to a plot of its own. Counters and clock
fields (``step``, ``time``, …) are not plotted. Each PNG is written atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

NOT_PLOTTED = frozenset({"step", "time", "step_time", "optimizer_steps", "tokens", "tokens_seen", "target_tokens",
                         "skipped_steps"})
FIGSIZE = (7.0, 4.0)
DPI = 100
LOG_SCALE_RATIO = 10.0   # losses spanning more than this factor are drawn on a log scale


def group_of(key: str) -> str | None:
    """The plot a metric belongs to (None: not plotted)."""
    if key in NOT_PLOTTED:
        return None
    if "/" in key:
        return key.split("/", 1)[0]
    if key == "balance_loss" or key.startswith("expert_load"):
        return "balance"
    if key.endswith("loss"):
        return "loss"
    if key == "tokens_per_s":
        return "throughput"
    return key


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics file (a torn last line is skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                out.append(rec)
    return out


def write_plots(metrics_path: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """One PNG per group into ``out_dir``; returns the files written."""
    metrics_path, out_dir = Path(metrics_path), Path(out_dir)
    if not metrics_path.is_file():
        return []
    records = read_metrics(metrics_path)
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = defaultdict(dict)
    for rec in records:
        for k, v in rec.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            g = group_of(k)
            if g is None:
                continue
            xs, ys = series[g].setdefault(k, ([], []))
            xs.append(rec["step"])
            ys.append(float(v))
    if not series:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for group, lines in sorted(series.items()):
        fig, ax = plt.subplots(figsize=FIGSIZE)
        for key, (xs, ys) in sorted(lines.items()):
            sparse = len(xs) < 0.5 * max(len(v[0]) for v in lines.values()) or len(xs) <= 20
            ax.plot(xs, ys, label=key, marker="o" if sparse else None, markersize=3)
        values = [y for _, ys in lines.values() for y in ys]
        if group == "loss" and min(values) > 0 and max(values) / min(values) > LOG_SCALE_RATIO:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(group)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / f"{group.replace(os.sep, '_')}.png"
        tmp = path.with_name(f".{path.stem}.tmp.png")
        fig.savefig(tmp, dpi=DPI)
        plt.close(fig)
        os.replace(tmp, path)
        written.append(path)
    return written


__all__ = ["group_of", "read_metrics", "write_plots"]
