"""--sign through the colorize stages without Ray (tests/test_stages.py's chain by hand: decode_block -> Predictor
-> finish_batch -> merge_shard): every output written is signed, the manifest's sha256 is the signed file's, a
worker that cannot build its Signer gives each image a sign_failed row and never fails its task, and the run's
check at start refuses JP2 and a bad key before anything starts."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from c2pa_pki import make_pki, write_toml
from test_stages import _config, _inputs, _run_stages, _shards

from raycolor.config import DerivativeSpec
from raycolor.core import checkpoint, formats
from raycolor.core.metadata import Provenance
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


def test_verify_c2pa_reads_each_outputs_credentials(tmp_path, tiny_ckpt, model, sign_toml):
    """`raycolor verify --c2pa`'s check (fixity.check_part, what each verify task runs): signed outputs pass; an
    unsigned output fails, and so does a signed one changed after signing even where its recorded sha256 was
    made to agree (the tampering the hash alone cannot see when the record is rewritten too)."""
    from raycolor.outputs import fixity

    m, meta = model
    manifest = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    config = _config(manifest, out, tiny_ckpt, format="jpeg", sign=str(sign_toml),
                     derivatives=(DerivativeSpec.parse("png:16"),))
    _run_stages(config, _shards(manifest, 2), m, meta)
    parts = fixity.part_uris(str(out))
    total = fixity.Report()
    for part in parts:
        total.merge(fixity.check_part(part, c2pa=True))
    assert total.problems == 0 and total.ok == total.checked > 0
    assert sum(fixity.check_part(p).counts["c2pa"] for p in parts) == 0  # without --c2pa: not asked

    table = pq.read_table(parts[0])
    row = next(r for r in table.to_pylist() if r["status"] == "ok")
    master, derivative = (Path(e["uri"]) for e in row["outputs"])
    data = bytearray(master.read_bytes())
    data[-200] ^= 0x01  # one byte of the JPEG's entropy-coded pixels
    master.write_bytes(bytes(data))
    unsigned = formats.encode(np.zeros((16, 16, 3), np.uint8), "png", None, Provenance(software="t", model_id="m"),
                              keep=False)[0]
    derivative.write_bytes(unsigned)
    outputs = [dict(e, sha256=hashlib.sha256((master if i == 0 else derivative).read_bytes()).hexdigest(),
                    bytes=len((master if i == 0 else derivative).read_bytes())) for i, e in enumerate(row["outputs"])]
    rows = table.to_pylist()
    rows[rows.index(row)] = dict(row, outputs=outputs)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), parts[0])
    report = fixity.check_part(parts[0], c2pa=True)
    assert report.counts["changed"] == 0 and report.counts["c2pa"] == 2, report.as_dict()
    named = " ".join(report.named["c2pa"])
    assert str(master) in named and "Invalid" in named and "dataHash.mismatch" in named
    assert str(derivative) in named and "no readable Content Credentials" in named
