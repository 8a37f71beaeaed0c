"""C2PA signing's cost per output (raycolor.core.signing): ms per image and bytes added, on one core.

Why: signing runs in the finish stage next to encoding, once per written output, so its cost is paid on every
image of an archive. The target (issue 37) is at most 5 ms and 20 kB per 1 MP image on one core. The issue's
first try, with the SDK's defaults, took about 115 ms and added 470 kB to a 640x480 JPEG.

    /work/bin/rc-quiet .venv/bin/python bench/c2pa_cost.py [--reps 40] [--big-reps 5] [--no-big] [--json]

Cases: a 1 MP JPEG (1224x816, q 92) and a 39 MP TIFF (7216x5412, 8 bits, deflate), both photo-like and encoded
by raycolor's own format registry, signed by raycolor's Signer (no thumbnail, no verify after signing). The
process is pinned to one CPU, with OMP/torch threads at 1. Each figure is the median of ``--reps`` timed calls
after one untimed warm-up.

Where the time goes:
* ``fixed``: signing an 8x8 JPEG. This is the cost of everything that does not grow with the file: building
  the manifest (JSON -> CBOR assertions, claim), the JUMBF store, the ES256 signature, and the certificate
  chain that goes in it.
* ``es256``: one ES256 signature of a 1 kB claim with ``cryptography`` (OpenSSL), the part of ``fixed`` that
  is the signature.
* ``per byte``: (sign(big) - fixed) / size, set beside hashlib.sha256 over the same bytes and a plain copy.
  The SDK hashes the whole asset outside the manifest (``c2pa.hash.data``) and copies it from its source
  stream to its destination stream, through Python stream callbacks (their count is printed).
* ``defaults``: the SDK's defaults (thumbnail on) on the 1 MP JPEG, for comparison with the issue's figure.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy: one core, as one finish task has
ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402

from raycolor.core import formats, metadata  # noqa: E402
from raycolor.core.signing import SignConfig, Signer  # noqa: E402

PROV = metadata.Provenance(metadata.SOFTWARE, "bench")
SHA = "ab" * 32


def _pki():
    """tests/c2pa_pki.py, loaded by path: the bench makes its key as the tests do, without tests/ on sys.path."""
    spec = importlib.util.spec_from_file_location("c2pa_pki", ROOT / "tests" / "c2pa_pki.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with soft blobs and 2% noise: compresses as a photo does (pure noise would not)."""
    rng = np.random.default_rng(seed)
    out = np.empty((h, w, 3), np.uint8)
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    band = 512
    for y0 in range(0, h, band):  # in bands: a 39 MP float image would be 470 MB per channel step
        y = np.linspace(y0 / h, min(h, y0 + band) / h, min(band, h - y0), dtype=np.float32)[:, None]
        for c in range(3):
            v = 0.15 + 0.5 * x * (0.6 + 0.2 * c) + 0.3 * y
            v = v + 0.25 * np.exp(-((x - 0.3 - 0.1 * c) ** 2 + (y - 0.6) ** 2) / 0.02)
            v = v + rng.normal(0, 0.02, v.shape).astype(np.float32)
            out[y0 : y0 + len(y), :, c] = np.clip(v * 255, 0, 255)
    return out


class Counting(io.BytesIO):
    """A BytesIO that counts the calls the SDK makes into it (each one a ctypes callback into Python)."""

    def __init__(self, *a):
        super().__init__(*a)
        self.calls = self.read_bytes = 0

    def read(self, *a):
        self.calls += 1
        out = super().read(*a)
        self.read_bytes += len(out)
        return out

    def readinto(self, b):
        self.calls += 1
        n = super().readinto(b)
        self.read_bytes += n
        return n

    def write(self, b):
        self.calls += 1
        return super().write(b)

    def seek(self, *a):
        self.calls += 1
        return super().seek(*a)


def timed(fn, reps: int) -> tuple[float, float]:
    """(median, min) ms of ``reps`` calls after one warm-up."""
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts), min(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--big-reps", type=int, default=5)
    ap.add_argument("--no-big", action="store_true", help="skip the 39 MP TIFF")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    import c2pa

    res: dict = {"load_avg_start": os.getloadavg(), "c2pa_python": _version("c2pa-python"),
                 "sdk": c2pa.sdk_version()}
    with tempfile.TemporaryDirectory() as d:
        pki = _pki()
        chain, key, _ = pki.make_pki(Path(d))
        config = SignConfig.load(pki.write_toml(Path(d) / "sign.toml", chain.name, key.name))
        t = time.perf_counter()
        signer = Signer(config)
        res["signer_build_ms"] = (time.perf_counter() - t) * 1e3  # once per process: key, SDK signer, self-check

        def sign(data: bytes, fmt: str) -> bytes:
            return signer.sign(data, fmt, source_sha256=SHA, source_name="source.tif", model_id="bench")

        tiny = formats.encode(photo(8, 8), "jpeg", None, PROV)[0]
        res["fixed_ms"], res["fixed_min_ms"] = timed(lambda: sign(tiny, "jpeg"), args.reps)
        res["fixed_bytes_added"] = len(sign(tiny, "jpeg")) - len(tiny)

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        ec_key, claim = ec.generate_private_key(ec.SECP256R1()), os.urandom(1024)
        res["es256_ms"] = timed(lambda: ec_key.sign(claim, ec.ECDSA(hashes.SHA256())), args.reps)[0]

        cases = [(f"{fmt}_1mp", fmt, (816, 1224), args.reps) for fmt in ("jpeg", "png", "tiff", "webp")]
        if not args.no_big:
            cases.append(("tiff_39mp", "tiff", (5412, 7216), args.big_reps))
        for name, fmt, (h, w), reps in cases:
            pixels = photo(h, w)
            t = time.perf_counter()
            data = formats.encode(pixels, fmt, None, PROV)[0]
            encode_ms = (time.perf_counter() - t) * 1e3  # what signing adds to
            if pixels.size < 10_000_000:  # a second call: the first loads and warms the codec
                encode_ms = timed(lambda: formats.encode(pixels, fmt, None, PROV), 1)[0]
            del pixels
            mime = formats.get(fmt).mime
            ms, ms_min = timed(lambda: sign(data, fmt), reps)
            signed = sign(data, fmt)
            # the SDK's own pass over a signed file: parse, hash the asset, verify the signature; no writing
            reader_ms = timed(lambda: c2pa.Reader(mime, io.BytesIO(signed)).get_validation_state(), reps)[0]
            sha_ms = timed(lambda: hashlib.sha256(data).digest(), reps)[0]
            copy_ms = timed(lambda: bytearray(data), reps)[0]
            src, dst = Counting(data), Counting()
            c2pa.Builder.from_json(signer._manifest(mime, SHA, "source.tif", "bench"),
                                   signer._context).sign(signer._signer, mime, src, dst)
            res[name] = {
                "megapixels": round(h * w / 1e6, 2), "file_bytes": len(data), "encode_ms": encode_ms, "ms": ms,
                "min_ms": ms_min, "bytes_added": len(signed) - len(data), "ms_per_mp": ms / (h * w / 1e6),
                "per_byte_ns": (ms - res["fixed_ms"]) * 1e6 / len(data), "reader_ms": reader_ms,
                "sha256_ms": sha_ms, "copy_ms": copy_ms, "stream_calls": src.calls + dst.calls,
                "source_read_x": src.read_bytes / len(data),
            }
            del data, signed
        # the SDK's defaults (thumbnail on): the 115 ms / +470 kB came from these
        data = formats.encode(photo(816, 1224), "jpeg", None, PROV)[0]
        mime = "image/jpeg"
        defaults = c2pa.Context.from_dict({})
        manifest = signer._manifest(mime, SHA, "source.tif", "bench")

        def sign_defaults() -> bytes:
            out = io.BytesIO()
            c2pa.Builder.from_json(manifest, defaults).sign(signer._signer, mime, io.BytesIO(data), out)
            return out.getvalue()

        res["defaults_jpeg_1mp"] = {"ms": timed(sign_defaults, max(3, args.reps // 4))[0],
                                    "bytes_added": len(sign_defaults()) - len(data)}
    res["load_avg_end"] = os.getloadavg()
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"c2pa-python {res['c2pa_python']} (SDK {res['sdk']}), one core; load {_load(res['load_avg_start'])} "
          f"-> {_load(res['load_avg_end'])}")
    print(f"Signer built once per process: {res['signer_build_ms']:.1f} ms (key, SDK signer, sign+verify check)")
    print(f"fixed (8x8 JPEG): {res['fixed_ms']:.2f} ms (min {res['fixed_min_ms']:.2f}), "
          f"+{res['fixed_bytes_added']} bytes; of which one ES256 signature (OpenSSL): {res['es256_ms']:.3f} ms")
    for name, _, _, _ in cases:
        r = res[name]
        print(f"{name}: {r['megapixels']} MP, {r['file_bytes'] / 1e6:.2f} MB: {r['ms']:.2f} ms "
              f"(min {r['min_ms']:.2f}; {r['ms_per_mp']:.2f} ms/MP), +{r['bytes_added']} bytes; per byte "
              f"{r['per_byte_ns']:.2f} ns vs sha256 {r['sha256_ms'] * 1e6 / r['file_bytes']:.2f} ns "
              f"({r['sha256_ms']:.2f} ms) and a copy {r['copy_ms'] * 1e6 / r['file_bytes']:.2f} ns; "
              f"{r['stream_calls']} stream calls, source read {r['source_read_x']:.0f}x; c2pa Reader (parse, hash, "
              f"verify) {r['reader_ms']:.2f} ms; encoding it took {r['encode_ms']:.0f} ms")
    d = res["defaults_jpeg_1mp"]
    print(f"SDK defaults (thumbnail), jpeg_1mp: {d['ms']:.2f} ms, +{d['bytes_added']} bytes")


def _load(avg) -> str:
    return " ".join(f"{v:.2f}" for v in avg)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
