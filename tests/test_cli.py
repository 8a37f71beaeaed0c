"""The CLI is a thin layer: flags map onto config dataclasses (heavy functions patched, as fastapi-cli
tests do), user errors exit 2 with one line, and one real end-to-end run on tiny data."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from raycolor import __version__
from raycolor.cli import app
from raycolor.config import ColorizeConfig, EvaluateConfig, StorageConfig, TrainConfig
from raycolor.pipelines import colorize as ray_colorize
from raycolor.pipelines import evaluate as ray_evaluate
from raycolor.pipelines import runtime
from raycolor.pipelines.training import driver as ray_train

runner = CliRunner()


@pytest.fixture
def calls(monkeypatch):
    """Record what each heavy function receives; connect to nothing."""
    seen: dict[str, object] = {}
    def connect(address, **kw):
        seen["connect"] = kw
        return f"connected {address}"

    monkeypatch.setattr(runtime, "connect", connect)

    def fit(config, **kw):
        seen["train"] = config
        return SimpleNamespace(
            epochs_run=1, metrics={"val_psnr": 20.0}, images_per_s=1.0, elapsed_s=1.0, model_uri="m", metrics_uri="j"
        )

    def colorize(config, **kw):
        seen["colorize"] = config
        return ray_colorize.ColorizeSummary(
            inputs=3, ok=2, error=1, skipped=0, processed=3, elapsed_s=1.0, images_per_s=3.0,
            first_output_s=0.5, output="out", model_id="abc",
        )

    def evaluate(config, **kw):
        seen["evaluate"] = config
        return ray_evaluate.EvaluateReport(
            model_id="abc", images=2, errors=0, model={"psnr": 25.0}, baseline={"psnr": 22.0}, per_image=[]
        )

    monkeypatch.setattr(ray_train, "fit", fit)
    monkeypatch.setattr(ray_colorize, "colorize", colorize)
    monkeypatch.setattr(ray_evaluate, "evaluate", evaluate)
    return seen


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"raycolor {__version__}"


def test_help_lists_commands_with_examples():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("train", "colorize", "evaluate", "demo"):
        assert cmd in r.output
    assert "Example" in runner.invoke(app, ["colorize", "--help"]).output


def test_train_flags_map_onto_train_config(calls):
    r = runner.invoke(
        app,
        [
            "train", "--data", "a/", "--data", "s3://b/c", "--output", "s3://runs/x", "--val", "v/",
            "--epochs", "3", "--image-size", "64", "--batch-size", "8", "--workers", "2", "--gpu",
            "--weights", "none", "--no-skips", "--freeze-encoder-epochs", "1", "--finetune-blocks", "3",
            "--lr", "0.01", "--finetune-lr", "0.001", "--loss", "mse", "--num-to-keep", "4",
            "--max-failures", "2", "--seed", "7", "--s3-endpoint", "http://127.0.0.1:9000", "--address", "ray://h:1",
        ],
    )
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == "connected ray://h:1"
    assert calls["connect"]["store"].s3_endpoint == "http://127.0.0.1:9000"  # exported to the workers
    assert calls["train"] == TrainConfig(
        data=("a/", "s3://b/c"), output="s3://runs/x", val=("v/",), epochs=3, image_size=64, batch_size=8,
        workers=2, use_gpu=True, weights=None, skips=False, freeze_encoder_epochs=1, finetune_blocks=3,
        lr=0.01, finetune_lr=0.001, loss="mse", num_to_keep=4, max_failures=2, seed=7,
        storage=StorageConfig(s3_endpoint="http://127.0.0.1:9000"),
    )


def test_colorize_flags_map_onto_colorize_config(calls):
    r = runner.invoke(
        app,
        [
            "colorize", "in1/", "list.txt", "--output", "out/", "--checkpoint", "ck/", "--render-size", "256",
            "--format", "jpeg", "--jpeg-quality", "80", "--batch-size", "64", "--gpus", "2", "--parquet-images",
            "--max-pixels", "1000", "--retries", "3", "--io-concurrency", "5", "--shard-size", "500", "--retry-errors",
            "--force-unlock", "--shared-output",
        ],
    )
    assert r.exit_code == 0, r.output
    assert calls["colorize"] == ColorizeConfig(
        inputs=("in1/", "list.txt"), output="out/", checkpoint="ck/", render_size=256, format="jpeg",
        jpeg_quality=80, batch_size=64, gpus=2, parquet_images=True, max_pixels=1000,
        shard_size=500, retry_errors="transient", force_unlock=True,
        storage=StorageConfig(retries=3, io_concurrency=5, shared_output=True),
    )
    r = runner.invoke(app, ["colorize", "x", "--output", "o", "--checkpoint", "c", "--retry-errors", "--retry-all-errors"])
    assert r.exit_code == 0 and calls["colorize"].retry_errors == "all"
    r = runner.invoke(app, ["colorize", "x", "--output", "o", "--checkpoint", "c"])
    assert calls["colorize"] == ColorizeConfig(inputs=("x",), output="o", checkpoint="c")  # defaults from config.py
    r = runner.invoke(app, ["colorize", "x", "--output", "o", "--checkpoint", "c", "--layout", "webdataset"])
    assert r.exit_code == 0 and calls["colorize"].layout == "webdataset"
    assert "images/s" in r.output and "errors" in r.output


def test_evaluate_json_has_model_and_baseline(calls):
    r = runner.invoke(app, ["evaluate", "--checkpoint", "ck", "--data", "d1", "--data", "d2", "--json", "--gallery", "g.png"])
    assert r.exit_code == 0, r.output
    assert calls["evaluate"] == EvaluateConfig(checkpoint="ck", data=("d1", "d2"), gallery="g.png")
    report = json.loads(r.stdout)
    assert report["model"]["psnr"] == 25.0 and report["baseline"]["psnr"] == 22.0


@pytest.mark.parametrize("flag", [[], ["--verbose"], ["-v"]])
def test_verbose_reaches_connect_and_quiet_is_the_default(calls, flag):
    r = runner.invoke(app, ["colorize", "x", "--output", "o", "--checkpoint", "c", *flag])
    assert r.exit_code == 0, r.output
    assert calls["connect"]["verbose"] is bool(flag)
    r = runner.invoke(app, ["evaluate", "--checkpoint", "c", "--data", "d", *flag])
    assert r.exit_code == 0 and calls["connect"]["verbose"] is bool(flag)


def test_bad_flag_values_are_usage_errors(calls):
    r = runner.invoke(app, ["colorize", "x", "--output", "o", "--checkpoint", "c", "--format", "gif"])
    assert r.exit_code == 2
    assert "colorize" not in calls


@pytest.mark.parametrize("connected_before", [False, True])
def test_a_handled_failure_leaves_ray_only_when_the_cli_connected(calls, monkeypatch, connected_before):
    """On a handled failure the CLI leaves Ray before its last line (so Ray's core cannot log after it), but
    only a connection it made itself: a job script or a test that connected first keeps its connection."""
    left = []
    monkeypatch.setattr(runtime, "connected", lambda: connected_before)
    monkeypatch.setattr(runtime, "disconnect", lambda: left.append(True))

    def refuse(config, **kw):
        raise ValueError("refused")

    monkeypatch.setattr(ray_colorize, "colorize", refuse)
    r = runner.invoke(app, ["colorize", "in", "--output", "out", "--checkpoint", "ck"])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1] == "error: refused", r.output
    assert left == ([] if connected_before else [True])


# -- error paths through the real functions (no patching of the failing code) --------------------


# The real colorize / fit / evaluate import Ray's library first thing (nothing connects: runtime.connect is
# patched), so the tests below that go through them are marked `ray`: out of `make test-fast`.
needs_ray_library = pytest.mark.ray


@pytest.fixture
def no_connect(monkeypatch):
    monkeypatch.setattr(runtime, "connect", lambda address, **kw: "local")


def _one_line_error(r) -> str:
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, r.output
    return lines[0]


@needs_ray_library
def test_missing_checkpoint_is_exit_2(no_connect, tmp_path):
    r = runner.invoke(app, ["colorize", str(tmp_path), "--output", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "nope")])
    assert "no checkpoint" in _one_line_error(r)


@needs_ray_library
def test_unknown_input_is_exit_2(no_connect, tiny_ckpt, tmp_path):
    r = runner.invoke(app, ["colorize", str(tmp_path / "missing"), "--output", str(tmp_path / "o"), "--checkpoint", tiny_ckpt])
    assert "not found" in _one_line_error(r)


@needs_ray_library
def test_invalid_checkpoint_is_exit_2(no_connect, tmp_path):
    (tmp_path / "config.json").write_text("{oops")
    r = runner.invoke(app, ["colorize", str(tmp_path), "--output", str(tmp_path / "o"), "--checkpoint", str(tmp_path)])
    assert "invalid" in _one_line_error(r)


@pytest.mark.slow
def test_more_gpus_than_the_cluster_has_is_exit_2(ray_local, tiny_ckpt, tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    r = runner.invoke(
        app, ["colorize", str(tmp_path), "--output", str(tmp_path / "o"), "--checkpoint", tiny_ckpt, "--gpus", "4"]
    )
    assert r.output.splitlines()[0].startswith("Using the Ray runtime")
    assert "--gpus 4" in _one_line_error(r)


@pytest.mark.slow
def test_end_to_end_colorize_and_evaluate_through_the_cli(ray_local, tiny_ckpt, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(tmp_path / "in" / f"{i}.jpg")
    out = tmp_path / "out"
    r = runner.invoke(app, ["colorize", str(tmp_path / "in"), "--output", str(out), "--checkpoint", tiny_ckpt, "--format", "jpeg"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]
    assert json.loads((out / "_SUCCESS.json").read_text())["ok"] == 3
    r = runner.invoke(app, ["evaluate", "--checkpoint", tiny_ckpt, "--data", str(tmp_path / "in"), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)  # stdout holds exactly the JSON object
    assert report["images"] == 3 and set(report) >= {"model", "baseline"}


@pytest.mark.slow
def test_colorize_reports_what_it_did_not_take(ray_local, tiny_ckpt, tmp_path):
    """Never a silent skip: a folder of scans beside PDFs and XML (and a tar with an XML member) colorizes the
    scans, and _SUCCESS.json, the summary table and a re-run that skips everything say what was not taken;
    `raycolor list` says it too."""
    import io
    import tarfile

    rng = np.random.default_rng(1)
    src = tmp_path / "in"
    (src / "box" / "pages").mkdir(parents=True)
    for rel in ("0.jpg", "box/1.jpg", "box/pages/2.JPG"):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(src / rel, format="JPEG")
    for n in range(1001):  # a thousand, to show the separator
        (src / "box" / "pages" / f"{n}.pdf").write_bytes(b"%PDF-1.4")
    (src / "mets.xml").write_text("<mets/>")
    (src / "box" / "ALTO.XML").write_text("<alto/>")
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    with tarfile.open(tmp_path / "batch.tar", "w") as tar:
        for name, data in (("t.jpg", jpeg.getvalue()), ("t.xml", b"<x/>")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    args = ["colorize", str(src), str(tmp_path / "batch.tar"), "--output", str(out), "--checkpoint", tiny_ckpt,
            "--format", "jpeg"]
    for run in ("first", "again"):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        summary = json.loads((out / "_SUCCESS.json").read_text())
        assert (summary["ok"], summary["error"]) == (4, 0)
        assert summary["skipped"] == (0 if run == "first" else 4)
        assert summary["not_taken"] == {".pdf": 1001, ".xml": 3}
        assert list(summary["not_taken"]) == [".pdf", ".xml"]  # largest first
        (line,) = [x for x in r.output.splitlines() if x.strip().startswith("not taken")]
        assert line.split(None, 2)[2] == "1,001 .pdf, 3 .xml", r.output
    written = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.jpg"))
    assert written[:1] + written[2:] == ["0.jpg", "box/1.jpg", "box/pages/2.jpg"]  # the tar's in its own namespace
    assert written[1].endswith("/batch.tar/t.jpg")

    r = runner.invoke(app, ["list", str(src), "--output", str(tmp_path / "lists")])
    assert r.exit_code == 0, r.output
    assert "  not taken  " in r.output and "1,001 .pdf, 2 .xml" in r.output

    (tmp_path / "psd").mkdir()
    for name in ("a.psd", "b.psd"):
        (tmp_path / "psd" / name).write_bytes(b"8BPS")
    r = runner.invoke(app, ["colorize", str(tmp_path / "psd"), "--output", str(tmp_path / "o2"), "--checkpoint", tiny_ckpt])
    assert r.exit_code == 2 and "2 .psd files are not a kind raycolor reads" in _one_line_error(r)


def test_summary_table_names_what_was_not_taken_only_when_there_is_some():
    from raycolor.cli import _not_taken_rows

    assert _not_taken_rows({".pdf": 12000, ".xml": 345, "(none)": 2}) == {"not taken": "12,000 .pdf, 345 .xml, 2 (none)"}
    assert _not_taken_rows({}) == {} and _not_taken_rows({".pdf": 0}) == {}


@needs_ray_library
def test_imagenet_weights_while_offline_is_exit_2(no_connect, monkeypatch, tmp_path):
    # an empty hub cache and a proxy that refuses every connection: offline, deterministically
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.ones((8, 8, 3), np.uint8)).save(tmp_path / "b.png")
    r = runner.invoke(app, ["train", "--data", str(tmp_path), "--output", str(tmp_path / "run"), "--image-size", "32"])
    line = _one_line_error(r)
    assert "ImageNet VGG16 weights" in line and "--weights PATH" in line


@needs_ray_library
def test_unreachable_s3_endpoint_is_exit_2(no_connect, s3_env, tiny_ckpt, tmp_path):
    r = runner.invoke(
        app,
        ["colorize", "s3://photos/in/", "--output", str(tmp_path / "o"), "--checkpoint", tiny_ckpt,
         "--s3-endpoint", "http://127.0.0.1:9", "--retries", "1"],
    )
    line = _one_line_error(r)
    assert "s3://photos/in/" in line and "testing" not in line


# A local OUTPUT refused on a multi-node cluster: tests/test_chaos.py (it shares that file's 3-node cluster).


def test_memory_sizes_parse_like_a_person_writes_them():
    import typer

    from raycolor.cli import parse_bytes

    assert parse_bytes("4GB") == 4_000_000_000 and parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5G") == 1_500_000_000 and parse_bytes("2000000") == 2_000_000
    for bad in ("lots", "4 parsecs", "-1GB", "0"):
        with pytest.raises(typer.BadParameter):
            parse_bytes(bad)
