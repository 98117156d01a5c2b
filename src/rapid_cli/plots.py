"""PNG curves: training reward and eval accuracy against wall-clock time."""

from __future__ import annotations

from pathlib import Path


def wrap_title(title: str, width: int = 90) -> str:
    """Run names are override lists of any length; wrapped, they fit the figure instead of being cut."""
    import textwrap

    return "\n".join(textwrap.wrap(title.replace(",", ", "), width)) if title else ""


def plot_run(history: list[dict], path: Path, title: str = "") -> Path | None:
    rounds = [h for h in history if "reward/mean" in h]
    evals = [h for h in history if "eval/pass@1" in h]
    if not rounds and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if rounds:
        ax.plot([h["time/elapsed"] / 60 for h in rounds], [h["reward/mean"] for h in rounds], "o-", ms=3,
                label="train reward (mean)")
    if evals:
        ax.plot([h["time/elapsed"] / 60 for h in evals], [h["eval/pass@1"] for h in evals], "s--", ms=5,
                label="eval pass@1")
    ax.set_xlabel("wall-clock (minutes)")
    ax.set_ylabel("reward / accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    # Below the axes: inside, the legend hid the low rewards an RL run starts from.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False, fontsize=8)
    ax.set_title(wrap_title(title), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
