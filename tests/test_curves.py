import io

import pytest
from PIL import Image

from raycolor.core.curves import render_curves


def test_curves_png_from_metrics_rows():
    pytest.importorskip("matplotlib")
    history = [
        {"epoch": e, "stage": "frozen" if e < 3 else "finetune", "train_loss": 1 / e, "val_loss": 1.2 / e,
         "val_psnr": 20 + e, "baseline_psnr": 21.0}
        for e in range(1, 5)
    ]
    png = render_curves(history)
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG" and im.size[0] > im.size[1] > 100
