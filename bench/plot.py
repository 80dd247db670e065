"""Plot a compare.py result: submit->consumer latency CDF per system, and throughput bars.

    python bench/plot.py [bench/results/latest.json] [out.png]

Reads only the results JSON (quantiles, not raw samples), so it can redraw any saved run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def colour(system: dict) -> str:
    """Bar colour by what the submit ack promised."""
    what = (system.get("durability") or "").lower()
    if not system.get("durable", True) or what.startswith("none"):
        return "tab:gray"
    return "tab:blue" if what.startswith("fsynced") else "tab:orange"


def plot(result: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [s for s in result["systems"] if s["available"]]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 5))

    for s in systems:
        if s["e2e_cdf_ms"]:
            q, ms = zip(*s["e2e_cdf_ms"])
            ax1.plot(ms, q, marker=".", label=s["name"])
        if s.get("paced_cdf_ms"):
            q, ms = zip(*s["paced_cdf_ms"])
            ax2.plot(ms, q, marker=".", label=s["name"])
    for ax, title in ((ax1, "submit→consumer, one at a time (median run)"),
                      (ax2, f"due→consumer at {result.get('rate') or 0:,.0f} tasks/s offered (median run)")):
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("percentile")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()

    with_tp = [s for s in systems if s["figures"] and s["figures"]["throughput"]]
    names = [s["name"] for s in with_tp]
    vals = [s["figures"]["throughput"] for s in with_tp]
    bars = ax3.bar(names, vals, color=[colour(s) for s in with_tp])
    ax3.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], fontsize=8)
    ax3.set_yscale("log")
    ax3.set_ylabel("tasks/s (log)")
    ax3.set_title("pipelined throughput (blue: fsynced, orange: OS only, grey: none)", fontsize=10)
    m = result["machine"]
    fig.suptitle(f"mesh bench {result['date']} — {m['nproc']} × {m['cpu']}, disk {m['disk']}"
                 + (" — QUICK" if result.get("quick") else ""), fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results" / "latest.json"
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_suffix(".png")
    print(plot(json.loads(src.read_text()), dst))
