"""--tiff-pyramid wired through: ColorizeConfig.tiff_pyramid, the CLI flag, the run's EncodeOptions, and
check_config refusing it with any format but TIFF. The pyramid itself: tests/test_tiff_pyramid.py. No Ray."""

from __future__ import annotations

import pytest

from raycolor.config import ColorizeConfig
from raycolor.pipelines.colorize import check_config
from raycolor.pipelines.stages import encode_options


def test_only_tiff_takes_a_pyramid():
    cfg = ColorizeConfig(inputs=("x",), output="o", checkpoint="c", format="tiff", tiff_pyramid=True)
    check_config(cfg)
    assert encode_options(cfg).tiff_pyramid
    with pytest.raises(ValueError, match="--tiff-pyramid is for --format tiff"):
        check_config(ColorizeConfig(inputs=("x",), output="o", checkpoint="c", format="png", tiff_pyramid=True))


def test_cli_flag(monkeypatch):
    from typer.testing import CliRunner

    from raycolor.cli import app
    from raycolor.pipelines import colorize as ray_colorize
    from raycolor.pipelines import runtime

    seen = {}

    def colorize(config, **kw):
        seen["config"] = config
        raise SystemExit(0)  # the config is all this test needs

    monkeypatch.setattr(runtime, "connect", lambda address, **kw: "connected")
    monkeypatch.setattr(ray_colorize, "colorize", colorize)
    runner = CliRunner()
    runner.invoke(app, ["colorize", "x", "--output", "o", "--checkpoint", "c", "--format", "tiff", "--tiff-pyramid"])
    assert seen["config"].tiff_pyramid is True
    assert "--tiff-pyramid" in runner.invoke(app, ["colorize", "--help"], terminal_width=200).output
