"""`raycolor verify` on the session's local Ray: a clean run passes; one flipped byte, one deleted output and one
stray file each fail it, named; --sources checks the inputs; an OUTPUT with a derivative on moto's S3 server
(both layouts)."""

from __future__ import annotations

import pytest
from support import jpeg_bytes, one_row_each
from typer.testing import CliRunner

from raycolor.cli import app
from raycolor.config import ColorizeConfig, DerivativeSpec
from raycolor.pipelines import runtime
from raycolor.pipelines.colorize import colorize
from raycolor.pipelines.verify import verify

pytestmark = pytest.mark.slow


def _verify_cli(monkeypatch, *args: str):
    monkeypatch.setattr(runtime, "connect", lambda address, **kw: "local")  # the session's Ray
    return CliRunner().invoke(app, ["verify", *args])


def test_verify_passes_then_names_a_flipped_byte_a_deleted_file_and_a_stray(ray_local, tiny_ckpt, tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(5):
        (src / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    s = colorize(ColorizeConfig(inputs=(str(src),), output=str(out), checkpoint=tiny_ckpt, batch_size=2, shard_size=2))
    assert s.ok == 5
    r = _verify_cli(monkeypatch, str(out))
    assert r.exit_code == 0, r.output
    assert "checked" in r.output and "missing" in r.output
    assert _verify_cli(monkeypatch, str(out), "--sources").exit_code == 0

    flipped = out / "images" / "1.png"
    data = bytearray(flipped.read_bytes())
    data[100] ^= 0x10
    flipped.write_bytes(bytes(data))
    r = _verify_cli(monkeypatch, str(out))
    assert r.exit_code == 1 and f"changed: {flipped}" in r.output, r.output

    (out / "images" / "3.png").unlink()
    (out / "images" / "extra.png").write_bytes(b"x")
    r = _verify_cli(monkeypatch, str(out))
    assert r.exit_code == 1 and f"missing: {out / 'images' / '3.png'}" in r.output, r.output
    assert f"unexpected: {out / 'images' / 'extra.png'}" in r.output and f"changed: {flipped}" in r.output

    (src / "4.jpg").write_bytes(jpeg_bytes(99))
    r = _verify_cli(monkeypatch, str(out), "--sources")
    assert r.exit_code == 1 and f"changed: {src / '4.jpg'}" in r.output, r.output
    r = _verify_cli(monkeypatch, str(tmp_path / "nothing"))
    assert r.exit_code == 2 and "holds no manifest" in r.output


@pytest.mark.parametrize("layout", ["files", "webdataset"])
def test_verify_an_s3_output(ray_local, s3_env, tiny_ckpt, layout):
    fs, bucket = s3_env.fs(), s3_env.bucket(f"verify-{layout}")
    for i in range(4):
        fs.pipe_file(f"{bucket}/in/{i}.jpg", jpeg_bytes(10 + i))
    src, out = f"s3://{bucket}/in", f"s3://{bucket}/out"
    colorize(ColorizeConfig(inputs=(src,), output=out, checkpoint=tiny_ckpt, batch_size=2, shard_size=2, layout=layout,
                            derivatives=(DerivativeSpec("jpeg", 12),)))
    clean = verify(out)
    assert clean.ok and clean.report.ok == 8 and clean.parts >= 1, clean.report.as_dict()  # 4 masters, 4 derivatives
    assert verify(out, sources=True).report.ok == 4
    rows = one_row_each(out, [f"{src}/{i}.jpg" for i in range(4)])
    victim = rows[f"{src}/0.jpg"]["output"]
    if layout == "files":
        fs.rm(victim)
        stray = f"s3://{bucket}/out/derivatives/jpeg-12/stray.jpg"
        fs.pipe_file(stray, b"x")
        r = verify(out)
        assert r.report.named["missing"] == [victim] and r.report.named["unexpected"] == [stray], r.report.as_dict()
        assert r.report.problems == 2
    else:  # the shard's tar rewritten without one of its members
        import io
        import tarfile

        tar_uri, member = victim.split("#", 1)
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(tar_uri))) as tf:
            kept = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.name != member}
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for name, data in kept.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        fs.pipe_file(tar_uri, buf.getvalue())
        r = verify(out)
        assert r.report.named["missing"] == [victim] and r.report.problems == 1, r.report.as_dict()
