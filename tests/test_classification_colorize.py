"""--temperature reaches the Predictor's predict_ab through ModelStage (Ray-free): a classification model's ab
is its annealed mean at that T, a regression model ignores it."""

import numpy as np
import torch

from raycolor.config import ColorizeConfig
from raycolor.core import abbins, precision
from raycolor.core.model import build_colorizer
from raycolor.pipelines.stages import ModelStage, Predictor


def _batch(L):
    n = len(L)
    err = np.empty(n, dtype=object)
    err[:] = [""] * n
    return {"error": err, "l_small": L.numpy(), "width": np.full(n, 32), "height": np.full(n, 32), "bits": np.full(n, 8)}


def test_temperature_flows_from_the_config_to_the_annealed_mean():
    torch.manual_seed(0)
    L = torch.rand(2, 1, 32, 32) * 100
    model = precision.to_layout(build_colorizer(weights=None, head="classification").eval())  # as the Predictor has it
    with torch.no_grad():
        logits = model(L)
    assert ColorizeConfig(inputs=("x",), output="o", checkpoint="c").temperature == 0.38
    for T in (0.1, 0.38, 1.0):  # fp32, as the logits above (bf16 against fp32: tests/test_precision.py)
        stage = ModelStage.for_colorize(ColorizeConfig(inputs=("x",), output="o", checkpoint="c", temperature=T,
                                                       precision="fp32"), 32)
        assert stage.temperature == T
        got = Predictor.with_model(model, torch.device("cpu"), stage)(_batch(L))["ab"]
        want = abbins.annealed_mean(logits, model.bins, T).numpy().astype(np.float16)
        np.testing.assert_array_equal(got, want)
    reg = build_colorizer(weights=None).eval()
    outs = [Predictor.with_model(reg, torch.device("cpu"), ModelStage.for_colorize(
        ColorizeConfig(inputs=("x",), output="o", checkpoint="c", temperature=T), 32))(_batch(L))["ab"] for T in (0.1, 1.0)]
    np.testing.assert_array_equal(outs[0], outs[1])
