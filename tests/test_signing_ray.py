"""`raycolor colorize --sign` on the session's local Ray: every output (master and derivative) signed and valid,
the rows' hashes those of the signed files, the key in no log of the Ray session, no runtime_env, no manifest;
and `--sign` with a JP2 output refused at start, before OUTPUT exists."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from c2pa_pki import make_pki, write_toml
from support import encoded, noise, one_row_each
from typer.testing import CliRunner

from raycolor.cli import app
from raycolor.core.signing import UNTRUSTED, verify
from raycolor.pipelines import runtime

pytestmark = pytest.mark.slow


def test_colorize_sign_on_ray(ray_local, tiny_ckpt, tmp_path, monkeypatch):
    import ray

    monkeypatch.setattr(runtime, "connect", lambda address, **kw: "local")  # the session's Ray
    chain, key, pem = make_pki(tmp_path / "pki")
    toml = write_toml(tmp_path / "pki" / "sign.toml", chain.name, key.name)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    sources = []
    for k, name in enumerate(("a.jpg", "b.png", "c.jpg")):
        (src / name).write_bytes(encoded(noise(40 + 8 * k, 30, k), "JPEG" if name.endswith(".jpg") else "PNG"))
        sources.append(str(src / name))
    r = CliRunner().invoke(app, ["colorize", str(src), "--output", str(out), "--checkpoint", tiny_ckpt,
                                 "--format", "tiff", "--derivative", "webp:32", "--sign", str(toml)])
    assert r.exit_code == 0, r.output
    rows = one_row_each(out, sources)
    for source, row in rows.items():
        assert row["status"] == "ok", row["error"]
        assert [e["format"] for e in row["outputs"]] == ["tiff", "webp"]
        for e in row["outputs"]:
            data = Path(e["uri"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == e["sha256"]
            assert verify(data, e["format"]) == ("Valid", [UNTRUSTED])
        assert row["source_sha256"] == hashlib.sha256(Path(source).read_bytes()).hexdigest()
    # raycolor verify --c2pa: the same checks in Ray tasks, from the bytes verify reads anyway
    v = CliRunner().invoke(app, ["verify", str(out), "--c2pa"])
    assert v.exit_code == 0 and "c2pa" in v.output, v.output

    key_lines = [line for line in pem.decode().splitlines() if "-----" not in line]
    texts = [r.output, str(ray.get_runtime_context().runtime_env)]
    session = Path(ray._private.worker._global_node.get_session_dir_path())  # the session's logs
    texts += [p.read_text(errors="replace") for p in session.rglob("*") if p.is_file() and p.stat().st_size < 50 << 20
              and p.suffix in (".log", ".out", ".err", ".json", ".txt")]
    assert len(texts) > 10  # the session's logs were found and read
    texts += [p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file()]  # manifests, images, stats
    assert not any(line in text for text in texts for line in key_lines)

    bad = tmp_path / "out-jp2"
    r = CliRunner().invoke(app, ["colorize", str(src), "--output", str(bad), "--checkpoint", tiny_ckpt,
                                 "--format", "jp2", "--sign", str(toml)])
    assert r.exit_code == 2 and "cannot sign jp2 outputs" in r.output, r.output
    assert not bad.exists()
