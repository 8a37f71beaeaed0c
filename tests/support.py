"""Helpers shared by more than one test file. A test file imports from here (``from support import ...``),
never from another test file. Fixtures live in conftest.py; tests/badimages.py (the bad-input corpus),
tests/drivers.py (subprocess drivers) and tests/faultproxy.py (the S3 fault proxy) are helpers of their own.

* inputs: `noise`, `encoded`, `write_image`, `jpeg_bytes`;
* exiftool, the independent reader/writer of the metadata tests: `EXIFTOOL`, `needs_exiftool`, `TAGS`,
  `exiftool_write`, `exiftool_read`;
* the bad-metadata corpus of issue 21: `bad_metadata_inputs` and the pieces it is built from;
* what an archival output must say: `check_carried_groups`, `check_provenance`;
* a colorize OUTPUT: `one_row_each`, `lightness_rounding_bound`;
* training: `make_images`, `base_config`, `manifest_shards`, `assert_finite_lines`;
* subprocesses: `subprocess_env`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------- inputs


def noise(w: int, h: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 uniform noise."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_tar(path, members: dict[str, bytes]):
    """An uncompressed tar at ``path`` (its folder made) holding ``members`` {name: bytes}, in that order."""
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def encoded(arr_or_im, fmt: str, **kw) -> bytes:
    """An array or Pillow image saved by Pillow in `fmt` ("PNG", "JPEG", "TIFF", ...), as bytes."""
    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_image(path: Path, seed: int, size=(24, 32)) -> None:
    """Noise of `size` (h, w) saved at `path` (format from the suffix), parent folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def jpeg_bytes(seed: int) -> bytes:
    """A small (18 x 14) noise JPEG."""
    return encoded(np.random.default_rng(seed).integers(0, 256, (14, 18, 3), dtype=np.uint8), "JPEG")


# --------------------------------------------------------------------------------------------- exiftool

EXIFTOOL = shutil.which("exiftool")
NO_EXIFTOOL = "exiftool is not installed (the independent reader/writer)"
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason=NO_EXIFTOOL)

# what exiftool writes into every tagged input
TAGS = {
    "IPTC:Caption-Abstract": "Harbour at dawn, 1950",
    "IPTC:By-line": "Jane Doe",
    "XMP-dc:Description": "Harbour at dawn (xmp)",
    "XMP-dc:Creator": "Jane Doe",
    "EXIF:ImageDescription": "Harbour at dawn (exif)",
    "EXIF:Artist": "Jérôme Müller",  # UTF-8 bytes in an ASCII tag: must come back byte for byte
    "EXIF:Copyright": "(c) 1950 City Archive",
    "EXIF:DateTimeOriginal": "1950:06:01 05:30:00",
    "GPSLatitude": "48.85",
    "GPSLatitudeRef": "N",
    "GPSLongitude": "2.35",
    "GPSLongitudeRef": "E",
    "XResolution": "600",
    "YResolution": "600",
    "ResolutionUnit": "inches",
}


def exiftool_write(paths: list[Path], *args: str) -> None:
    subprocess.run([EXIFTOOL, "-q", "-q", "-overwrite_original", *args, *map(str, paths)], check=True)


def exiftool_read(paths: list[Path]) -> dict[str, dict]:
    """exiftool's view of each file: -n numbers, -G1 groups, -a duplicates, -u unknown (IPTC 2025 AI tags)."""
    out = subprocess.run([EXIFTOOL, "-j", "-G1", "-a", "-n", "-u", *map(str, paths)], capture_output=True)
    return {Path(d["SourceFile"]).name: d for d in json.loads(out.stdout)}


# --------------------------------------------------------------------------------------------- bad metadata


def jpeg_with_segment(rgb: np.ndarray, marker: int, payload: bytes) -> bytes:
    """A JPEG of `rgb` with one more APPn segment (`marker`) holding `payload`, right after SOI."""
    jpeg = encoded(rgb, "JPEG")
    return jpeg[:2] + bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def iim(*datasets: tuple[int, int, bytes]) -> bytes:
    """An IPTC-IIM block of (record, dataset, value) entries."""
    return b"".join(b"\x1c" + bytes((r, n)) + struct.pack(">H", len(v)) + v for r, n, v in datasets)


def xmp_packet(description: str) -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:my="http://example.org/my/1.0/" '
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/" tiff:Orientation="6" xmp:CreatorTool="Scanner 9000">'
        f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(description)}</rdf:li>'
        "</rdf:Alt></dc:description>"
        "<my:Box>B-17 &amp; C</my:Box>"
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def png_with_xmp(rgb: np.ndarray, packet: bytes) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", packet.decode("utf-8", "replace"))
    return encoded(rgb, "PNG", pnginfo=info)


def bad_metadata_inputs(rgb: np.ndarray, exif: bytes) -> tuple[dict[str, tuple[bytes, str]], bytes]:
    """Issue 21's bad-metadata corpus around `rgb`: name -> (file bytes, output format), and the IPTC block
    in a wrong encoding that must come back verbatim. `exif`: a valid EXIF block to cut short."""
    from raycolor.core import metadata

    maker = Image.Exif()
    maker[0x010F] = "Acme"
    maker[0x8769] = {0x9003: "1950:06:01 05:30:00", 0x927C: bytes(range(7, 250)) * 2}
    wrong_iim = iim((1, 90, b"\x1b%G"), (2, 0, b"\0\x04"), (2, 120, "Café au lait".encode("latin-1")))
    inputs = {
        "corrupt_exif": (jpeg_with_segment(rgb, 0xE1, b"Exif\0\0" + b"this is no TIFF header" * 3), "jpeg"),
        "makernote": (encoded(rgb, "JPEG", exif=maker.tobytes()), "jpeg"),
        "big_xmp": (png_with_xmp(rgb, xmp_packet("x" * 70_000)), "jpeg"),
        "wrong_iptc": (jpeg_with_segment(rgb, 0xED, b"Photoshop 3.0\0" + metadata._irb(0x0404, wrong_iim)), "jpeg"),
        "refused_icc": (encoded(rgb, "JPEG", icc_profile=b"not an ICC profile at all " * 8), "jpeg"),
        "truncated_exif": (jpeg_with_segment(rgb, 0xE1, exif[: len(exif) * 3 // 5]), "jpeg"),
        "unparseable_xmp": (png_with_xmp(rgb, b"<x:xmpmeta><rdf:RDF>unclosed"), "png"),
    }
    return inputs, wrong_iim


# --------------------------------------------------------------------------------------------- archival outputs


def check_carried_groups(t: dict, *, fmt: str) -> None:
    """What every output of an input tagged with TAGS (and Orientation 6) must say, in exiftool's names."""
    assert t["IFD0:Orientation"] == 1
    assert t["IFD0:ImageDescription"] == TAGS["EXIF:ImageDescription"]
    assert t["IFD0:Artist"] == TAGS["EXIF:Artist"]
    assert t["IFD0:Copyright"] == TAGS["EXIF:Copyright"]
    assert t["ExifIFD:DateTimeOriginal"] == TAGS["EXIF:DateTimeOriginal"]
    assert t["GPS:GPSLatitude"] == pytest.approx(48.85)
    assert t["IPTC:Caption-Abstract"] == TAGS["IPTC:Caption-Abstract"]
    assert t["IPTC:By-line"] == TAGS["IPTC:By-line"]
    assert t["XMP-dc:Description"] == TAGS["XMP-dc:Description"]
    assert t["XMP-dc:Creator"] == TAGS["XMP-dc:Creator"]
    assert t["IFD0:XResolution"] == 600 and t["IFD0:ResolutionUnit"] == 2
    if fmt == "jpeg":
        assert (t["JFIF:XResolution"], t["JFIF:ResolutionUnit"]) == (600, 1)
    assert t["ExifIFD:ColorSpace"] == 1 and "sRGB" in t["ICC_Profile:ProfileDescription"]
    assert not any(k.startswith("IFD1:") for k in t), "the grey thumbnail must not be carried"


def check_provenance(t: dict, model_id: str) -> None:
    """The output says a model made its colour, and which."""
    from raycolor.core import metadata

    assert t["XMP-iptcExt:DigitalSourceType"] == metadata.DIGITAL_SOURCE_TYPE
    assert t["XMP-xmp:CreatorTool"] == metadata.SOFTWARE and t["IFD0:Software"] == metadata.SOFTWARE
    assert t["XMP-iptcExt:AISystemVersionUsed"] == model_id


# --------------------------------------------------------------------------------------------- colorize OUTPUT


def one_row_each(out, expected) -> dict:
    """OUTPUT's manifest rows by source, after checking there is exactly one row per expected source."""
    from raycolor.outputs.ledger import read_manifest

    rows = read_manifest(str(out)).to_pylist()
    srcs = [r["source"] for r in rows]
    assert len(srcs) == len(set(srcs)) and set(srcs) == set(expected), (sorted(srcs), sorted(expected))
    return {r["source"]: r for r in rows}


def lightness_rounding_bound() -> float:
    """The most that rounding an sRGB colour to 8 bits per channel can move its CIE L.

    With Y = sum_i w_i lin(v_i) and L = 116 f(Y) - 16: dL/dv_i = L'(Y) w_i lin'(v_i), where L'(Y) is 903.3 below
    Y = (6/29)^3 and 116/3 Y^(-2/3) above (never more than 903.3), and Y >= w_i lin(v_i). Each channel moves by at
    most half a code, so |dL| <= 0.5 sum_i max_v min(903.3, 116/3 (w_i lin(v))^(-2/3)) w_i lin'(v) (mean value
    theorem); the max is taken on a 0.01-code grid of the (smooth) bound. About 0.4 L units."""
    v = np.linspace(0, 255, 25_501)
    c = v / 255
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    dlin = np.where(c <= 0.04045, 1 / 12.92, 2.4 / 1.055 * ((c + 0.055) / 1.055) ** 1.4) / 255  # per code
    linear_slope = 116 / (3 * (6 / 29) ** 2)  # 903.3
    total = 0.0
    for w in (0.212671, 0.715160, 0.072169):
        with np.errstate(divide="ignore"):
            slope = np.minimum(linear_slope, 116 / 3 * np.power(w * lin, -2 / 3))
        total += float(np.max(slope * w * dlin))
    return 0.5 * total


# --------------------------------------------------------------------------------------------- training

N_IMAGES = 24
SIZE = 32


VAL_FRACTION = 0.15  # base_config's


def hold_out_has_a_readable_image(uris, val_fraction: float = VAL_FRACTION) -> bool:
    """Whether training's hold-out over the images at `uris` (split_items: a hash of each source URI) keeps an image
    that decodes. The URIs hold a random tmp folder or bucket name, and about one set in 250 (25 images at 0.15)
    leaves broken.png alone in it: then validation has nothing to measure and the run's val_loss is None."""
    from raycolor.inputs import list_items
    from raycolor.pipelines.training.split import split_items

    _, val = split_items(list_items([str(u) for u in uris]), val_fraction)
    return any(not i.source.endswith("broken.png") for i in val)


def make_images(folder: Path, n: int = N_IMAGES, size: int = SIZE, seed: int = 0) -> Path:
    """`n` learnable PNGs (light red over dark blue under grey texture) and one broken file, in `folder`; where
    `folder`'s name would leave broken.png alone in training's hold-out, in the first `folder`-k that does not. The
    folder written is returned."""
    name = folder.name
    for k in range(1, 100):
        _write_images(folder, n, size, seed)
        if n < 2 or hold_out_has_a_readable_image([folder]):
            return folder
        folder = folder.parent / f"{name}-{k}"
    raise AssertionError("no folder name gives a hold-out with a readable image")


def _write_images(folder: Path, n: int, size: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.empty((size, size, 3), np.float32)
        img[: size // 2] = (225, 95, 85)  # light red
        img[size // 2 :] = (35, 45, 150)  # dark blue
        img += rng.uniform(-25, 25, (size, size, 1))  # grey texture: the same offset on R, G and B
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"img{i:02d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")  # dropped, never fatal


def base_config(data: str, output: str, **kw):
    """The tiny TrainConfig the training tests run (2 CPU workers, weights=None), with `kw` changed."""
    from raycolor.config import TrainConfig

    args = dict(
        data=(data,),
        output=output,
        val_fraction=VAL_FRACTION,
        epochs=2,
        image_size=SIZE,
        batch_size=4,
        workers=2,
        weights=None,
        freeze_encoder_epochs=1,
        finetune_blocks=2,
        lr=1e-3,
        finetune_lr=1e-4,
        num_to_keep=2,
        max_failures=1,
        seed=0,
    )
    args.update(kw)
    return TrainConfig(**args)


def manifest_shards(manifest: Path, shard_size: int) -> list:
    """A .txt manifest's shards (inputs.Shard), as planning cuts them (one root, so no namespace); no Ray."""
    from raycolor import inputs

    plan = inputs.classify(str(manifest))
    [(kind, uri, tag)] = plan.objects
    return inputs.size_object(kind, uri, tag, root=plan.root, shard_size=shard_size)


def assert_finite_lines(lines: list[dict]) -> None:
    import math

    for m in lines:
        for key in ("train_loss", "val_loss", "val_psnr", "baseline_psnr", "images_per_s"):
            assert isinstance(m[key], float) and math.isfinite(m[key]), (key, m)


# --------------------------------------------------------------------------------------------- subprocesses


def subprocess_env(**extra) -> dict:
    """A driver subprocess's environment: this tree first on the path, and a private Ray temp dir. Without it a
    plain ``ray.init()`` joins whatever local cluster /tmp/ray/ray_current_cluster names (another test
    session's), and a ``Cluster`` head would point everyone else's ``ray.init()`` at ours. Short: the
    raylet's socket paths must fit in 107 bytes."""
    import tempfile

    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "RAY_DEDUP_LOGS": "0", "RAY_TMPDIR": tempfile.mkdtemp(prefix="rc", dir="/tmp")}
    env.pop("RAY_ADDRESS", None)
    return {**env, **extra}
