"""--sign through the colorize stages without Ray (tests/test_stages.py's chain by hand: decode_block -> Predictor
-> finish_batch -> merge_shard): every output written is signed, the manifest's sha256 is the signed file's, a
worker that cannot build its Signer gives each image a sign_failed row and never fails its task, and the run's
check at start refuses JP2 and a bad key before anything starts."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from c2pa_pki import make_pki, write_toml
from test_stages import _config, _inputs, _run_stages, _shards

from raycolor.config import DerivativeSpec
from raycolor.core import checkpoint, formats
from raycolor.core.signing import UNTRUSTED, SignError, verify
from raycolor.outputs import ledger
from raycolor.pipelines.colorize import check_config


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return checkpoint.load(tiny_ckpt)


@pytest.fixture(scope="module")
def sign_toml(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    chain, key, _ = make_pki(d)
    return write_toml(d / "sign.toml", chain.name, key.name)


def _rows(out: Path) -> list[dict]:
    return [r for p in sorted((out / "manifest").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_every_output_is_signed_and_hashed_after_signing(tmp_path, tiny_ckpt, model, sign_toml):
    m, meta = model
    manifest = _inputs(tmp_path / "in")
    config = _config(manifest, tmp_path / "out", tiny_ckpt, format="tiff", sign=str(sign_toml),
                     derivatives=(DerivativeSpec.parse("jpeg:16"),))
    check_config(config)
    _run_stages(config, _shards(manifest, 2), m, meta)
    rows = _rows(tmp_path / "out")
    assert rows and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert len(r["outputs"]) == 2  # the master and its derivative, each signed
        for out in r["outputs"]:
            data = Path(out["uri"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == out["sha256"]  # hashed after signing
            assert verify(data, out["format"]) == ("Valid", [UNTRUSTED])
        assert r["sha256"] == r["outputs"][0]["sha256"]


def test_a_worker_without_the_key_gives_sign_failed_rows(tmp_path, tiny_ckpt, model, sign_toml):
    """The key is missing on this worker (not mounted on one node): every image is its own sign_failed row
    and nothing is written; the task itself ends normally and the shards merge."""
    m, meta = model
    manifest = _inputs(tmp_path / "in")
    toml = tmp_path / "elsewhere.toml"
    toml.write_text(sign_toml.read_text().replace('"key.pem"', f'"{tmp_path / "not-mounted.pem"}"')
                    .replace('"chain.pem"', f'"{sign_toml.parent / "chain.pem"}"'))
    config = _config(manifest, tmp_path / "out", tiny_ckpt, format="png", sign=str(toml))
    finished, _ = _run_stages(config, _shards(manifest, 2), m, meta)
    rows = _rows(tmp_path / "out")
    assert rows and all(r["status"] == "error" for r in rows)
    assert {ledger.reason_of(r["error"]) for r in rows} == {ledger.SIGN_FAILED}
    assert "not-mounted.pem" in rows[0]["error"]
    assert not list((tmp_path / "out").glob("images/**/*.png"))


def test_the_run_refuses_jp2_and_bad_keys_at_start(tmp_path, sign_toml):
    from raycolor.config import ColorizeConfig

    base = ColorizeConfig(inputs=("x",), output=str(tmp_path / "o"), checkpoint="c", sign=str(sign_toml))
    check_config(base)
    for config in (dataclasses.replace(base, format="jp2"),
                   dataclasses.replace(base, derivatives=(DerivativeSpec.parse("jp2:100"),))):
        with pytest.raises(SignError, match="cannot sign jp2 outputs"):
            check_config(config)
    (sign_toml.parent / "key.pem").chmod(0o644)
    try:
        with pytest.raises(SignError, match="readable or writable by group or others"):
            check_config(base)
    finally:
        (sign_toml.parent / "key.pem").chmod(0o600)
    assert formats.get("jp2").mime == "image/jp2"
