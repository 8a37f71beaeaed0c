"""`raycolor train --head classification` end to end on the session's local Ray (as tests/test_train.py): the
prior pass is made once and cached in OUTPUT/prior.json, the exported model is a classification checkpoint
carrying the bins and that prior, a resumed run reuses the cached prior, and the model colorizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support import SIZE, assert_finite_lines, base_config, make_images

from raycolor.core import abbins, checkpoint
from raycolor.core.colorize import colorize_rgb


@pytest.mark.slow
def test_classification_head_trains_caches_its_prior_and_resumes(ray_local, tmp_path):
    from raycolor.pipelines.training.driver import fit

    data = make_images(tmp_path / "data")
    out = tmp_path / "out"
    # one worker: the classification head under DDP (two workers, a node lost) is test_chaos's training scenario;
    # a second worker here would only start another process per fit
    first = fit(base_config(str(data), str(out), epochs=1, head="classification", workers=1), progress=False)
    prior = json.loads((out / "prior.json").read_text())
    bins = abbins.derive_bins()
    assert prior["bins"] == bins.tolist() and sum(prior["counts"]) > 0
    counts = torch.tensor(prior["counts"], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(prior["weights"]), abbins.rebalancing_weights(counts, bins))
    stamp = (out / "prior.json").stat().st_mtime_ns
    model, meta = checkpoint.load(first.model_uri)
    assert (meta.head, meta.n_bins) == ("classification", len(bins))
    assert torch.equal(model.prior_weights, torch.tensor(prior["weights"]))
    second = fit(base_config(str(data), str(out), epochs=2, head="classification", workers=1), progress=False)
    assert (out / "prior.json").stat().st_mtime_ns == stamp  # the resumed run read the cached pass
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and second.epochs_run == 1
    assert_finite_lines(lines)
    model, meta = checkpoint.load(second.model_uri)
    img = (np.random.default_rng(0).random((SIZE + 8, SIZE, 3)) * 255).astype(np.uint8)
    got = colorize_rgb(model, [img], render_size=meta.render_size)[0]
    assert got.shape == img.shape and got.dtype == np.uint8
