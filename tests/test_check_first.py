"""The colorize driver checks its config before it touches the checkpoint (issue 38, 7): a bad flag is named as
such, even when the checkpoint cannot be read either. Ray-free: the driver stops before connecting."""

from __future__ import annotations

import pytest

from raycolor.config import ColorizeConfig
from raycolor.pipelines.colorize import colorize


@pytest.mark.parametrize("bad, words", [
    ({"layout": "zip"}, "layout"),
    ({"retry_errors": "sometimes"}, "retry_errors"),
    ({"format": "gif"}, "gif"),
])
def test_a_bad_flag_is_refused_before_the_checkpoint_is_read(tmp_path, bad, words):
    missing = tmp_path / "no-such-model"  # read first, this would be a CheckpointError about the model
    config = ColorizeConfig(inputs=(str(tmp_path),), output=str(tmp_path / "out"), checkpoint=str(missing), **bad)
    with pytest.raises(ValueError, match=words) as caught:
        colorize(config)
    assert "no-such-model" not in str(caught.value)
    assert not (tmp_path / "out").exists()
