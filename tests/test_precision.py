"""Precision and layout (raycolor.core.precision; issue 35), Ray-free: what "auto" picks and who asks, that the
choice reaches the Predictor, evaluate and the records, that checkpoints cross precisions, and how far bf16 moves
ab (a bound derived below) while L does not move at all.

The bound. bf16 keeps 8 significant bits: rounding to nearest leaves a relative error of at most u = 2^-8,
uniform on [-u, u], so rms u / sqrt(3). Under autocast each convolution rounds its input activations, its weights
and its output (products accumulate in float32: 2^-24, negligible), three independent roundings: the output's
error is rms u relative to the output's own rms (for terms of random sign E[(sum a_i)^2] = sum a_i^2, so the
products' rounding errors add up like the products do). ReLU, max-pool and the skips' concatenation are exact;
each of the decoder's 4 bilinear upsamples rounds once more (rms u / sqrt(3)). Linear layers scale signal and
error alike, so relative errors add in quadrature along the longest path: 13 VGG convs, the 1x1 reduce, the 8
decoder convs and the 4 upsamples, K = 22 + 4/3 rounding units, rms sqrt(K) u (4.8 u = 1.9 %). The 1x1 head runs in
float32 (model.Colorizer.forward) on those features, so its pre-activation z - bias carries that same relative
error, and nothing after it is rounded:
  - regression: ab = 110 tanh(z), so |d ab| = 110 sech^2(z) |dz| and, by Cauchy-Schwarz over pixels,
    mean |d ab| <= 110 * rms(dz) * rms(sech^2 z) with rms(dz) = sqrt(K) u rms(z - bias);
  - classification: the annealed mean mu = sum_q p_q ab_q with p = softmax(z / T) has d mu = (1/T) sum_q p_q
    (ab_q - mu) dz_q, so |d mu| <= (1/T) * sqrt(sum_q p_q |ab_q - mu|^2) * sqrt(sum_q p_q dz_q^2) (Cauchy-Schwarz
    under p): per pixel, (1/T) * std_p(ab) * rms(dz), averaged over pixels.
Every quantity on the right is read off the float32 run. L never enters the model: it is the input's, and
compose keeps it, so it is bit-identical whatever ran.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raycolor.config import ColorizeConfig, EvaluateConfig, TrainConfig
from raycolor.core import checkpoint, color, precision
from raycolor.core.colorize import colorize_rgb, pack_l, predict_ab, prepare
from raycolor.core.model import build_colorizer
from raycolor.pipelines.stages import ModelStage, Predictor
from raycolor.pipelines.training.loop import train_one_epoch

U = 2.0**-8  # bf16's unit roundoff: 8 significant bits, round to nearest
K = 13 + 1 + 8 + 4 / 3  # rounding units on the longest path (module docstring)
CPU = torch.device("cpu")


def _seeded(head: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_colorizer(weights=None, head=head).eval()
    if head == "regression":
        with torch.no_grad():
            m.head.weight.mul_(20.0)  # a colourful output (|ab| up to ~100), so tanh's curve is in play
    return precision.to_layout(m)


def _pre_head(model, L: torch.Tensor) -> torch.Tensor:
    """z - bias: the float32 head's pre-activation without its bias, (N, C, H, W)."""
    feats = {}
    hook = model.head.register_forward_hook(lambda mod, inp, out: feats.setdefault("x", inp[0]))
    with torch.inference_mode():
        model(L)
    hook.remove()
    with torch.inference_mode():
        return torch.nn.functional.conv2d(feats["x"].float(), model.head.weight)


# --------------------------------------------------------------------------------------------------------------
# what "auto" picks
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_capability_probe(monkeypatch, native):
    """auto: bf16 where the probe reports native bf16, fp32 where not, whatever this machine has (the probe is
    monkeypatched); bf16 on CUDA either way; an explicit choice is honoured anywhere."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.resolve("auto", CPU) == ("bf16" if native else "fp32")
    assert precision.resolve("auto", "cpu") == ("bf16" if native else "fp32")
    assert precision.resolve("auto", torch.device("cuda")) == "bf16"
    for p in ("fp32", "bf16"):
        assert precision.resolve(p, CPU) == p == precision.resolve(p, "cuda")
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        precision.resolve("fp16", CPU)
    # training: auto is fp32 on any CPU (the demo's curve did not hold in bf16), bf16 on CUDA; asked for, honoured
    assert precision.resolve("auto", CPU, training=True) == "fp32"
    assert precision.resolve("auto", torch.device("cuda"), training=True) == "bf16"
    assert precision.resolve("bf16", CPU, training=True) == "bf16"
    # the Predictor asks the same probe, and its rows say what ran
    stage = ModelStage(checkpoint="c", render_size=32, batch_size=2)
    assert stage.precision == "auto"
    pred = Predictor.with_model(build_colorizer(weights=None).eval(), CPU, stage)
    assert pred.precision == ("bf16" if native else "fp32")
    out = pred(_batch(torch.rand(2, 1, 32, 32) * 100))
    assert list(out["precision"]) == [pred.precision] * 2


def test_the_probe_agrees_with_what_torch_reports_of_this_cpu():
    """Without a monkeypatch, on either kind of machine: native bf16 is AVX512_BF16 or AMX-BF16 as cpuinfo (torch's
    own capability table) reports them, on x86; the AVX-512 check alone (mkldnn's bf16 'support') is not enough."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the x86 capability table")
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else None
    if caps is None:
        pytest.skip("torch.cpu.get_capabilities is newer than this torch")
    native = bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    assert precision.cpu_has_native_bf16() is (native and torch.backends.mkldnn.is_available())


def test_every_config_defaults_to_auto_and_refuses_what_it_does_not_know():
    from raycolor.pipelines.colorize import check_config
    from raycolor.pipelines.training.driver import validate_config

    c = ColorizeConfig(inputs=("x",), output="o", checkpoint="c")
    t = TrainConfig(data=("d",), output="o")
    assert c.precision == t.precision == EvaluateConfig(checkpoint="c", data=("d",)).precision == "auto"
    assert ModelStage.for_colorize(ColorizeConfig(inputs=("x",), output="o", checkpoint="c", precision="fp32"),
                                   32).precision == "fp32"
    check_config(c)
    validate_config(t)
    with pytest.raises(ValueError, match="precision"):
        check_config(ColorizeConfig(inputs=("x",), output="o", checkpoint="c", precision="fp16"))
    with pytest.raises(ValueError, match="precision"):
        validate_config(TrainConfig(data=("d",), output="o", precision="half"))


def test_the_cli_maps_precision_onto_each_config(monkeypatch):
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from raycolor.cli import app
    from raycolor.pipelines import colorize as ray_colorize
    from raycolor.pipelines import evaluate as ray_evaluate
    from raycolor.pipelines import runtime
    from raycolor.pipelines.training import driver as ray_train

    seen = {}
    monkeypatch.setattr(runtime, "connect", lambda address, **kw: "local")
    monkeypatch.setattr(ray_colorize, "colorize", lambda config, **kw: seen.setdefault("c", config) and ray_colorize.ColorizeSummary(
        inputs=1, ok=1, error=0, skipped=0, processed=1, elapsed_s=1.0, images_per_s=1.0, first_output_s=0.5,
        output="o", model_id="m", precision={"bf16": 1}))
    monkeypatch.setattr(ray_evaluate, "evaluate", lambda config, **kw: seen.setdefault("e", config) and ray_evaluate.EvaluateReport(
        model_id="m", images=1, errors=0, model={"psnr": 1.0}, baseline={"psnr": 1.0}, per_image=[], precision="fp32"))
    monkeypatch.setattr(ray_train, "fit", lambda config, **kw: seen.setdefault("t", config) and SimpleNamespace(
        epochs_run=1, metrics={}, images_per_s=1.0, elapsed_s=1.0, model_uri="m", metrics_uri="j"))
    r = CliRunner()
    out = r.invoke(app, ["colorize", "x", "--output", "o", "--checkpoint", "c", "--precision", "fp32"])
    assert out.exit_code == 0 and seen["c"].precision == "fp32" and "bf16 (1)" in out.output
    out = r.invoke(app, ["evaluate", "--checkpoint", "c", "--data", "d", "--precision", "bf16"])
    assert out.exit_code == 0 and seen["e"].precision == "bf16" and "precision fp32" in out.output
    assert r.invoke(app, ["train", "--data", "d", "--output", "o", "--precision", "bf16"]).exit_code == 0
    assert seen["t"].precision == "bf16"
    assert r.invoke(app, ["colorize", "x", "--output", "o", "--checkpoint", "c", "--precision", "fp16"]).exit_code == 2


# --------------------------------------------------------------------------------------------------------------
# bf16 against fp32: the derived bound on ab, L untouched
# --------------------------------------------------------------------------------------------------------------


def _batch(L: torch.Tensor, l_full: list[bytes] | None = None) -> dict:
    n, r = len(L), L.shape[-1]
    err = np.empty(n, dtype=object)
    err[:] = [""] * n
    batch = {"error": err, "l_small": L.numpy(), "width": np.full(n, r), "height": np.full(n, r), "bits": np.full(n, 8)}
    if l_full is not None:
        batch["l_full"] = np.array(l_full, dtype=object)
    return batch


def test_bf16_regression_ab_is_within_the_derived_bound_of_fp32():
    m = _seeded("regression")
    L = torch.rand(4, 1, 64, 64) * 100
    a32, a16 = predict_ab(m, L, precision="fp32"), predict_ab(m, L, precision="bf16")
    z = torch.atanh((a32 / color.AB_NORM).clamp(-1 + 1e-6, 1 - 1e-6))
    rms_dz = math.sqrt(K) * U * float(_pre_head(m, L).square().mean().sqrt())
    bound = color.AB_NORM * rms_dz * float((1 / torch.cosh(z) ** 2).square().mean().sqrt())
    d = (a16 - a32).abs()
    assert a32.abs().max() > 60  # the bound is tested where it matters: saturated, colourful ab
    assert 0 < float(d.mean()) <= bound, (float(d.mean()), bound)


def test_bf16_classification_annealed_mean_is_within_the_derived_bound_of_fp32():
    m = _seeded("classification")
    L = torch.rand(4, 1, 64, 64) * 100
    T = 0.38
    a32, a16 = predict_ab(m, L, temperature=T, precision="fp32"), predict_ab(m, L, temperature=T, precision="bf16")
    with torch.inference_mode():
        logits = m(L).float()
    p = torch.softmax(logits / T, dim=1)  # (N, Q, H, W)
    bins = m.bins.view(1, -1, 2, 1, 1)
    spread = ((bins - a32.unsqueeze(1)).square().sum(2) * p).sum(1).sqrt()  # std_p of ab per pixel, (N, H, W)
    rms_dz = math.sqrt(K) * U * float(_pre_head(m, L).square().mean().sqrt())
    bound = float(spread.mean()) * rms_dz / T
    d = (a16 - a32).square().sum(1).sqrt()  # |d ab| per pixel
    assert 0 < float(d.mean()) <= bound, (float(d.mean()), bound)
    # the decode itself ran in float32 on float32 logits whatever the trunk ran in
    assert a16.dtype == torch.float32


def test_l_is_bit_identical_whatever_ran():
    """The Predictor's rows carry full-resolution L through untouched; only ab differs between precisions, and
    compose keeps L: both outputs have the input's lightness to within the same uint8 rounding."""
    m = _seeded("regression")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    L, small = prepare(rgb, 32)
    packed = bytes(pack_l(L))
    rows = {}
    for p in ("fp32", "bf16"):
        stage = ModelStage(checkpoint="c", render_size=32, batch_size=2, precision=p)
        b = _batch(small.unsqueeze(0), [packed])
        b["width"], b["height"] = np.array([80]), np.array([48])
        rows[p] = Predictor.with_model(m, CPU, stage)(b)
        assert rows[p]["precision"][0] == p and bytes(rows[p]["l_full"][0]) == packed
    assert not np.array_equal(rows["fp32"]["ab"], rows["bf16"]["ab"])
    outs = colorize_rgb(m, [rgb], render_size=32, precision="fp32") + colorize_rgb(m, [rgb], render_size=32, precision="bf16")
    for out in outs:  # L of the output against the input's L: compose's uint8 rounding, the same bound for both
        got = color.rgb_to_lab(torch.from_numpy(out).permute(2, 0, 1).float() / 255)[0]
        assert float((got - L[0]).abs().max()) < 1.0


# --------------------------------------------------------------------------------------------------------------
# checkpoints cross precisions
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["regression", "classification"])
def test_a_checkpoint_written_under_either_precision_colorizes_under_either(tmp_path, head):
    """Train two steps as the worker does (channels_last, autocast per precision), save, load, colorize under both
    precisions: weights float32 and contiguous in the file, the loaded model gives the in-memory model's output
    exactly under each precision."""
    torch.manual_seed(0)
    rgb = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    batches = [{"L": torch.rand(2, 1, 32, 32) * 100, "ab": (torch.rand(2, 2, 32, 32) - 0.5) * 80} for _ in range(2)]
    for trained_in in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = precision.to_layout(build_colorizer(weights=None, head=head))
        opt = model.configure_optimizers(lr=1e-3, finetune_lr=0.0)
        loss, images, steps = train_one_epoch(model, opt, batches, autocast=precision.autocast_args(trained_in, CPU))
        assert steps == 2 and math.isfinite(loss)
        model.eval()
        d = tmp_path / f"{head}-{trained_in}"
        checkpoint.save(str(d), model, render_size=32)
        state = torch.load(d / "weights.pt", weights_only=True)
        assert all(v.dtype == torch.float32 and v.is_contiguous() for v in state.values() if v.is_floating_point())
        loaded, meta = checkpoint.load(str(d))
        assert meta.head == head
        precision.to_layout(loaded)
        for run_in in ("fp32", "bf16"):
            got = colorize_rgb(loaded, [rgb], render_size=32, precision=run_in)[0]
            want = colorize_rgb(model, [rgb], render_size=32, precision=run_in)[0]
            assert got.shape == rgb.shape and got.dtype == np.uint8
            np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------------------------------
# what ran, on record: the manifest, the shard stats, _SUCCESS.json (local Ray)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_manifest_stats_and_summary_say_which_precision_ran_and_old_parts_resume(ray_local, tiny_ckpt, tmp_path):
    """Each ok row, each shard's stats and the summary name the precision the actor resolved; a manifest part
    written before the column existed reads back as null and its shard is not redone."""
    import json

    import pyarrow.parquet as pq
    from PIL import Image

    from raycolor.outputs import ledger
    from raycolor.pipelines.colorize import colorize

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(src / f"{i}.png")
    (src / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    s = colorize(ColorizeConfig(inputs=(str(src),), output=str(out), checkpoint=tiny_ckpt, precision="fp32"))
    assert s.precision == {"fp32": 3} and s.settings["precision"] == "fp32"
    assert json.loads((out / "_SUCCESS.json").read_text())["precision"] == {"fp32": 3}
    table = ledger.read_manifest(str(out))
    by_status = {(r["status"], r["precision"]) for r in table.to_pylist()}
    assert by_status == {("ok", "fp32"), ("error", None)}
    [stats] = [json.loads(p.read_text()) for p in (out / "_stats").iterdir()]
    assert stats["precision"] == {"fp32": 3}
    # an OUTPUT written before the column: its part lacks it, its stats have no precision; a re-run skips the shard
    # and the manifest reads the column back as null
    [part] = list((out / "manifest").iterdir())
    pq.write_table(pq.read_table(part).drop_columns(["precision"]), part)
    (out / "_stats" / f"{part.stem}.json").write_text(json.dumps({k: v for k, v in stats.items() if k != "precision"}))
    again = colorize(ColorizeConfig(inputs=(str(src),), output=str(out), checkpoint=tiny_ckpt))
    assert (again.processed, again.shards_skipped, again.precision) == (0, 1, {})
    assert set(ledger.read_manifest(str(out)).column("precision").to_pylist()) == {None}
