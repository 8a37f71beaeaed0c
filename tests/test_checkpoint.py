import json

import pytest
import torch

from raycolor.core import checkpoint
from raycolor.core.model import build_colorizer


def test_save_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    m = build_colorizer(weights=None, skips=False).eval()
    meta = checkpoint.save(str(tmp_path / "ckpt"), m, render_size=64, extra={"epoch": 3})
    loaded, meta2 = checkpoint.load(str(tmp_path / "ckpt"))
    assert meta2 == meta and meta.render_size == 64 and meta.skips is False and len(meta.model_id) == 16
    x = torch.rand(2, 1, 32, 32) * 100
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["normalization"] == {"l_cent": 50.0, "l_norm": 100.0, "ab_norm": 110.0}
    assert cfg["version"] == 1


def test_missing_partial_and_corrupt_checkpoints_are_refused(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.load(str(tmp_path / "nothing"))
    m = build_colorizer(weights=None)
    d = tmp_path / "c"
    checkpoint.save(str(d), m, render_size=32)
    w = (d / "weights.pt").read_bytes()
    (d / "weights.pt").write_bytes(w[: len(w) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(str(d))
    (d / "config.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="invalid"):
        checkpoint.load(str(d))
    (d / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(checkpoint.CheckpointError, match="not a raycolor"):
        checkpoint.load(str(d))


def test_weights_load_with_weights_only(tmp_path):
    m = build_colorizer(weights=None)
    checkpoint.save(str(tmp_path), m, render_size=32)
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert set(state) == set(m.state_dict())
