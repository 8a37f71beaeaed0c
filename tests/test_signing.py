"""raycolor.core.signing: C2PA Content Credentials on every format raycolor writes, read back by c2pa's Reader.

Fast, no Ray. The test CA and its ES256 signer are made in the run (tests/c2pa_pki.py, a session fixture, in a
temporary folder): no key is committed. No trust list names the test CA, so ``signingCredential.untrusted`` is
the one failure a good signature may show.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import struct

import c2pa  # the sign extra; dev installs it
import numpy as np
import pytest
from c2pa_pki import make_pki, write_toml
from support import EXIFTOOL, NO_EXIFTOOL, TAGS, encoded, exiftool_read, exiftool_write, noise

from raycolor.core import formats, metadata
from raycolor.core.formats import EncodeOptions
from raycolor.core.images import decode
from raycolor.core.metadata import DIGITAL_SOURCE_TYPE, Provenance
from raycolor.core.signing import (
    UNTRUSTED,
    SignConfig,
    SignError,
    SignFailed,
    Signer,
    acceptable,
    check_format,
    failure_codes,
    signable,
    signer_for,
    verify,
)

PROV = Provenance(metadata.SOFTWARE, "ckpt-sign-0123")
SOURCE_SHA = hashlib.sha256(b"the source's bytes").hexdigest()
# (name, format, EncodeOptions, bits): every form the finish stage writes
CASES = [
    ("jpeg", "jpeg", EncodeOptions(), 8),
    ("png", "png", EncodeOptions(), 8),
    ("png16", "png", EncodeOptions(), 16),
    ("tiff", "tiff", EncodeOptions(), 8),
    ("tiff16", "tiff", EncodeOptions(), 16),
    ("tiff_pyramid", "tiff", EncodeOptions(tiff_pyramid=True), 8),
    ("webp", "webp", EncodeOptions(), 8),
]

# --------------------------------------------------------------------------- the test CA and signer


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """The test signer's folder: chain.pem, key.pem, sign.toml (relative paths); and the key's PEM bytes."""
    d = tmp_path_factory.mktemp("pki")
    chain, key, pem = make_pki(d)
    toml = write_toml(d / "sign.toml", chain.name, key.name)
    return d, toml, pem


@pytest.fixture(scope="session")
def signer(pki):
    return Signer(SignConfig.load(pki[1]))


def _key_lines(pem: bytes) -> list[str]:
    """The key's base64 lines: none may appear in any text the module makes."""
    return [line for line in pem.decode().splitlines() if "-----" not in line]


def _no_key_in(text: str, pem: bytes) -> None:
    assert not any(line in text for line in _key_lines(pem))


# --------------------------------------------------------------------------- every format, read back


def _image(name: str, fmt: str, options: EncodeOptions, bits: int, meta=None) -> bytes:
    rgb = noise(*((600, 400) if options.tiff_pyramid else (96, 64)), seed=len(name))  # a pyramid needs > 256 px
    if bits == 16:
        rgb = rgb.astype(np.uint16) * 257 + np.uint16(3)  # 16 significant bits, not 8 widened
    return formats.encode(rgb, fmt, meta, PROV, options=options)[0]


def _read(data: bytes, fmt: str):
    reader = c2pa.Reader(formats.get(fmt).mime, io.BytesIO(data))
    return reader, reader.get_active_manifest()


@pytest.mark.parametrize(("name", "fmt", "options", "bits"), CASES, ids=[c[0] for c in CASES])
def test_every_output_form_carries_a_valid_manifest(signer, name, fmt, options, bits):
    data = _image(name, fmt, options, bits)
    signed = signer.sign(data, fmt, source_sha256=SOURCE_SHA, source_name="scan 0001.tif", model_id=PROV.model_id)
    reader, manifest = _read(signed, fmt)
    assert reader.get_validation_state() == "Valid"
    assert failure_codes(reader) == [UNTRUSTED]  # the test CA is on no trust list; nothing else fails
    assert verify(signed, fmt) == ("Valid", [UNTRUSTED]) and acceptable(*verify(signed, fmt))
    assert not acceptable(*verify(signed, fmt), trust_list=True)  # a trust list would have to name the test CA
    actions = next(a["data"]["actions"] for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))
    assert [a["action"] for a in actions] == ["c2pa.opened", "c2pa.color_adjustments"]
    edit = actions[1]
    assert edit["digitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert edit["softwareAgent"] == {"name": "raycolor", "version": metadata.SOFTWARE.split()[-1]}
    assert edit["parameters"]["model_id"] == PROV.model_id
    (ingredient,) = manifest["ingredients"]
    assert ingredient["relationship"] == "parentOf" and ingredient["title"] == "scan 0001.tif"
    assert ingredient["format"] == "image/tiff"
    assert ingredient["instance_id"] == f"sha256:{SOURCE_SHA}"
    assert ingredient["metadata"]["raycolor:source_sha256"] == SOURCE_SHA
    assert "data" not in ingredient and "thumbnail" not in ingredient and "thumbnail" not in manifest
    assert manifest["signature_info"]["common_name"] == "raycolor test signer"
    # the pixels are untouched: the signed file decodes to what was signed
    assert np.array_equal(decode(signed).rgb, decode(data).rgb)
    if options.tiff_pyramid:  # the SDK rewrites a TIFF's IFD0: the SubIFD levels must survive it
        import tifffile

        def levels(b):
            with tifffile.TiffFile(io.BytesIO(b)) as t:
                return [lv.shape for lv in t.series[0].levels]

        assert levels(signed) == levels(data) and len(levels(data)) > 1


def test_the_manifest_is_small(signer):
    """No thumbnail and no embedded source: a manifest is a few kB whatever the image (the SDK's defaults added
    470 kB to a 640x480 JPEG)."""
    data = _image("jpeg", "jpeg", EncodeOptions(), 8)
    signed = signer.sign(data, "jpeg", source_sha256=SOURCE_SHA, source_name="a.tif", model_id="m")
    assert 0 < len(signed) - len(data) < 8_000


def test_without_a_source_hash_the_ingredient_is_still_named(signer):
    data = _image("png", "png", EncodeOptions(), 8)
    reader, manifest = _read(signer.sign(data, "png", source_sha256=None, source_name="a.bmp", model_id="m"), "png")
    assert failure_codes(reader) == [UNTRUSTED]
    (ingredient,) = manifest["ingredients"]
    assert ingredient["title"] == "a.bmp" and "metadata" not in ingredient


def _pixel_offset(data: bytes, fmt: str) -> int:
    """An offset inside the image data (not metadata, not the manifest)."""
    if fmt == "tiff":
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as t:
            return t.pages[0].dataoffsets[0] + 10
    marker = {"jpeg": b"\xff\xda", "png": b"IDAT", "webp": b"VP8"}[fmt]
    return data.rindex(marker) + 24


@pytest.mark.parametrize(("name", "fmt", "options", "bits"), CASES, ids=[c[0] for c in CASES])
def test_one_changed_pixel_byte_fails_validation(signer, name, fmt, options, bits):
    signed = bytearray(signer.sign(_image(name, fmt, options, bits), fmt, source_sha256=SOURCE_SHA,
                                   source_name="a.tif", model_id="m"))
    i = _pixel_offset(bytes(signed), fmt)
    signed[i] = 0x10 if signed[i] != 0x10 else 0x11
    reader, _ = _read(bytes(signed), fmt)
    assert reader.get_validation_state() == "Invalid"
    assert "assertion.dataHash.mismatch" in failure_codes(reader)
    assert not acceptable(*verify(bytes(signed), fmt))


def test_jp2_is_refused_at_start():
    """c2pa-python 0.38.1 (c2pa-rs 0.91) embeds no manifest in JPEG 2000: the run refuses --sign with --format jp2
    before any image, naming the formats it can sign."""
    assert not signable("jp2")
    assert all(signable(f) for f in ("jpeg", "png", "tiff", "webp"))
    with pytest.raises(SignError, match=r"cannot sign jp2 outputs.*jpeg, png, tiff, webp"):
        check_format("jp2")
    check_format("tif")  # aliases are the registry's


@pytest.mark.skipif(EXIFTOOL is None, reason=NO_EXIFTOOL)
def test_exiftool_still_reads_the_provenance_and_metadata(signer, tmp_path):
    """The manifest goes in beside raycolor's XMP/IPTC/EXIF, which exiftool still reads."""
    inputs = []
    for fmt in ("jpeg", "png", "tiff", "webp"):
        p = tmp_path / f"in{formats.extension(fmt)}"
        p.write_bytes(encoded(noise(64, 48), fmt.upper()))
        inputs.append(p)
    exiftool_write(inputs, *(f"-{k}={v}" for k, v in TAGS.items()))
    outputs, unsigned = [], {}
    for p in inputs:
        dec, fmt = decode(p.read_bytes()), formats.sniff(p.read_bytes()[:16]).name
        data = unsigned[fmt] = formats.encode(dec.rgb, fmt, dec.meta, PROV)[0]
        out = tmp_path / f"out{p.suffix}"
        out.write_bytes(signer.sign(data, fmt, source_sha256=SOURCE_SHA, source_name=p.name, model_id="m"))
        outputs.append(out)
    tool = exiftool_read(outputs)
    for out in outputs:
        t = tool[out.name]
        # exiftool sees the manifest too: a JUMBF box (JPEG APP11, PNG caBX), TIFF tag 0xcd41, WebP chunk C2PA
        manifest_tag = {".tif": "IFD0:Exif_0xcd41", ".webp": "RIFF:Unknown_C2PA"}.get(out.suffix, "JUMBF:JUMDLabel")
        assert t[manifest_tag], out.name
        assert t["XMP-iptcExt:DigitalSourceType"] == DIGITAL_SOURCE_TYPE, out.name
        assert t["XMP-xmp:CreatorTool"] == PROV.software
        assert t["XMP-dc:Description"] == TAGS["XMP-dc:Description"]
        if out.suffix != ".webp":  # WebP has no IPTC-IIM container (raycolor.core.formats.webp)
            assert t["IPTC:Caption-Abstract"] == TAGS["IPTC:Caption-Abstract"]
        if out.suffix == ".png":
            # The SDK puts its caBX chunk right after IHDR, before eXIf; exiftool 12.57 reads both chunks' boxes
            # at the same address and skips the second as a loop ("IFD0 pointer references previous JUMBFBox
            # directory"). The EXIF is in the file unchanged: its chunk is byte for byte the unsigned one's.
            assert _png_chunk(out.read_bytes(), b"eXIf") == _png_chunk(unsigned["png"], b"eXIf") is not None
        else:
            assert t["IFD0:Artist"] == TAGS["EXIF:Artist"]


def _png_chunk(data: bytes, kind: bytes) -> bytes | None:
    pos = 8
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == kind:
            return data[pos + 8 : pos + 8 + n]
        pos += 12 + n
    return None


# --------------------------------------------------------------------------- keys


def test_a_key_readable_by_others_is_refused(pki, tmp_path):
    d, _, pem = pki
    key = tmp_path / "key.pem"
    key.write_bytes(pem)
    toml = write_toml(tmp_path / "sign.toml", d / "chain.pem", key)
    for mode in (0o640, 0o604, 0o660):
        key.chmod(mode)
        with pytest.raises(SignError, match=rf"readable or writable by group or others \(mode {mode:o}\).*chmod 600"):
            Signer(SignConfig.load(toml))
    key.chmod(0o400)
    Signer(SignConfig.load(toml))  # owner-only read is the form a secret volume (defaultMode 0400) gives


def test_a_key_that_is_not_the_certificates_is_refused_at_load(pki, tmp_path):
    """Another CA's key with this certificate: the tiny image signed at load does not verify."""
    d, _, pem = pki
    _, other_key, other_pem = make_pki(tmp_path / "other", name="other")
    with pytest.raises(SignError, match=r"does not verify \(Invalid: .*claimSignature.mismatch") as e:
        Signer(SignConfig.load(write_toml(tmp_path / "sign.toml", d / "chain.pem", other_key)))
    _no_key_in(str(e.value), other_pem)
    _no_key_in(str(e.value), pem)


@pytest.mark.parametrize("case", ["wrong alg", "damaged key", "no key", "not a key", "no cert"])
def test_bad_keys_and_certificates_are_refused_without_showing_the_key(pki, tmp_path, case):
    d, _, pem = pki
    key, cert, alg = d / "key.pem", d / "chain.pem", "es256"
    if case == "wrong alg":
        alg = "es384"  # a P-256 key
    elif case == "damaged key":
        key = tmp_path / "key.pem"
        lines = pem.decode().splitlines()
        key.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # a line of the base64 lost: the DER is cut
        key.chmod(0o600)
    elif case == "no key":
        key = tmp_path / "missing.pem"
    elif case == "not a key":
        key = tmp_path / "cert-as-key.pem"
        key.write_bytes(cert.read_bytes())
        key.chmod(0o600)
    elif case == "no cert":
        cert = tmp_path / "missing-chain.pem"
    with pytest.raises(SignError) as e:
        Signer(SignConfig.load(write_toml(tmp_path / "sign.toml", cert, key, alg)))
    text = str(e.value)
    assert str(key) in text or str(cert) in text  # names what is wrong
    _no_key_in(text, pem)
    # the SDK's own exception is not chained to ours (a traceback would print its text)
    assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)


def test_a_key_in_the_toml_itself_is_refused(pki, tmp_path):
    d, _, pem = pki
    toml = tmp_path / "sign.toml"
    toml.write_text(f'alg = "es256"\nsign_cert = "{d / "chain.pem"}"\nprivate_key = """{pem.decode()}"""\n')
    with pytest.raises(SignError, match="holds a private key itself") as e:
        SignConfig.load(toml)
    _no_key_in(str(e.value), pem)


def test_env_key(pki, monkeypatch):
    d, _, pem = pki
    toml = d / "sign-env.toml"
    toml.write_text('alg = "es256"\nsign_cert = "chain.pem"\nprivate_key = "env:RAYCOLOR_TEST_SIGN_KEY"\n')
    config = SignConfig.load(toml)
    assert config.private_key == "env:RAYCOLOR_TEST_SIGN_KEY"
    monkeypatch.delenv("RAYCOLOR_TEST_SIGN_KEY", raising=False)
    with pytest.raises(SignError, match="RAYCOLOR_TEST_SIGN_KEY .* is not set .*not in Ray's runtime_env"):
        Signer(config)
    monkeypatch.setenv("RAYCOLOR_TEST_SIGN_KEY", pem.decode())
    data = _image("jpeg", "jpeg", EncodeOptions(), 8)
    reader, _ = _read(Signer(config).sign(data, "jpeg", source_sha256=None, source_name="a", model_id="m"), "jpeg")
    assert failure_codes(reader) == [UNTRUSTED]


def test_the_key_appears_in_no_repr_pickle_log_or_manifest(pki, caplog):
    d, toml, pem = pki
    with caplog.at_level(logging.DEBUG):
        config = SignConfig.load(toml)
        signer = Signer(config)
        signed = signer.sign(_image("jpeg", "jpeg", EncodeOptions(), 8), "jpeg", source_sha256=SOURCE_SHA,
                             source_name="a.tif", model_id="m")
    from cryptography.hazmat.primitives import serialization

    der = serialization.load_pem_private_key(pem, None).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    scalar = serialization.load_pem_private_key(pem, None).private_numbers().private_value.to_bytes(32, "big")
    for text in (repr(config), repr(signer), caplog.text, _read(signed, "jpeg")[0].json()):
        _no_key_in(text, pem)
    for blob in (pickle.dumps(config), signed):  # what Ray ships (the config) and what we write
        assert der not in blob and scalar not in blob and pem not in blob
    assert config.private_key == str(d / "key.pem")  # the path, resolved from the TOML's folder
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(signer)


@pytest.mark.parametrize(("text", "message"), [
    ('alg = "es256"\nsign_cert = "c.pem"\n', "needs private_key"),
    ('alg = "rs1"\nsign_cert = "c.pem"\nprivate_key = "k.pem"\n', "alg 'rs1' is not one of"),
    ('alg = "es256"\nsign_cert = "c.pem"\nprivate_key = "k.pem"\nkey = "x"\n', r"unknown keys \['key'\]"),
    ('alg = "es256"\nsign_cert = "c.pem"\nprivate_key = "env:"\n', "variable name after env:"),
    ('alg = "es256"\nsign_cert = "c.pem"\nprivate_key = "k.pem"\nta_url = "file:///x"\n', "http"),
    ("alg = es256\n", "not valid TOML"),
])
def test_config_errors(tmp_path, text, message):
    p = tmp_path / "sign.toml"
    p.write_text(text)
    with pytest.raises(SignError, match=message):
        SignConfig.load(p)


def test_a_file_the_sdk_cannot_sign_is_that_images_failure(signer):
    """SignFailed (the finish stage's sign_failed row), with the SDK's reason; the Signer still signs the next."""
    data = _image("png", "png", EncodeOptions(), 8)
    for bad, fmt in ((b"not an image at all", "jpeg"), (data[: len(data) // 2], "png"), (data, "tiff")):
        with pytest.raises(SignFailed) as e:
            signer.sign(bad, fmt, source_sha256=SOURCE_SHA, source_name="a.tif", model_id="m")
        assert str(e.value) and e.value.__cause__ is None
    reader, _ = _read(signer.sign(data, "png", source_sha256=None, source_name="a", model_id="m"), "png")
    assert failure_codes(reader) == [UNTRUSTED]


def test_one_signer_per_process_and_config(pki):
    config = SignConfig.load(pki[1])
    assert signer_for(config) is signer_for(SignConfig.load(pki[1]))  # equal configs: the same Signer
