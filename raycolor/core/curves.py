"""Training curves (loss and validation PSNR per epoch, grey baseline as a line) as a PNG.

matplotlib is optional (the `plots` extra): without it the curves are skipped with a message.
"""

from __future__ import annotations

import io
from collections.abc import Sequence


def render_curves(history: Sequence[dict]) -> bytes | None:
    """history: metrics.jsonl rows -> PNG bytes, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on cluster nodes
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        ax_loss.plot(epochs, [row.get(key) for row in history], marker="o", label=key.replace("_", " "))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_psnr.plot(epochs, [row.get("val_psnr") for row in history], marker="o", label="model")
    ax_psnr.plot(epochs, [row.get("baseline_psnr") for row in history], linestyle="--", label="grey baseline (ab = 0)")
    ax_psnr.set(xlabel="epoch", ylabel="dB", title="validation PSNR")
    for ax in (ax_loss, ax_psnr):
        ax.legend()
        ax.grid(alpha=0.3)
    finetune = [row["epoch"] for row in history if row.get("stage") == "finetune"]
    if finetune:
        for ax in (ax_loss, ax_psnr):
            ax.axvline(min(finetune) - 0.5, color="grey", alpha=0.4)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
