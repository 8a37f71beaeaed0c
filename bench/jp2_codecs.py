"""JPEG 2000 against TIFF and JPEG: encode and decode cost in ms per megapixel, and a 25 MP 16-bit RGB peak RSS.

Why: JP2 is costly to code and archives' masters are big, so choosing the decoder (Pillow or imagecodecs,
both OpenJPEG) and sizing workers needs figures from this machine, not folklore.

    .venv/bin/python bench/jp2_codecs.py [--mp 12] [--memory-mp 25] [--no-memory]

The image is photo-like (smooth gradients, soft blobs, 2% noise), not pure noise, which no codec compresses.
Each cell is one timed run after one untimed warm-up of the same codec on a small image. ``threads``: what the
codec was given; "-" where the codec takes no thread count (Pillow's JPEG 2000 and every TIFF/JPEG path here).
Memory: each case runs in a fresh subprocess and reports ru_maxrss after the call minus ru_maxrss just before it
(inputs already in memory), i.e. what the codec itself adds at its peak. ru_maxrss is inherited across fork
and exec, so the child resets its peak (/proc/self/clear_refs) and reads VmHWM.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from raycolor.core import jp2


def photo(h: int, w: int, *, bits: int, rgb: bool = True, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    chans = []
    for c in range(3 if rgb else 1):
        v = 0.15 + 0.5 * x * (0.6 + 0.2 * c) + 0.3 * y
        for k in range(4):  # soft blobs: low-frequency structure, as in a photo
            cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
            v = v + 0.25 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r)) * (1 if (k + c) % 2 else -1)
        v = v + 0.5 * rng.normal(0, 0.02, (h, w)).astype(np.float32)
        chans.append(v)
    top = (1 << bits) - 1
    img = np.clip(np.stack(chans, axis=-1) * top, 0, top).astype(np.uint8 if bits == 8 else np.uint16)
    return img if rgb else np.ascontiguousarray(img[..., 0])


def _provenance():
    from raycolor.core import metadata

    return metadata.Provenance(software=metadata.SOFTWARE, model_id="bench")


def _rgb(a):
    """raycolor writes colorized (H, W, 3) images: a grey case is timed as its RGB image."""
    import numpy as np

    return a if a.ndim == 3 else np.repeat(a[..., None], 3, 2)


def encoders():
    """raycolor's own writers, as an output is written (the format registry's: raycolor.core.formats.encode); JP2
    straight from raycolor.core.jp2, so that its threads can be set. The codec column says which ran."""
    from raycolor.core import formats

    prov = _provenance()
    tiff = (lambda a, t: formats.encode(_rgb(a), "tiff", None, prov)[0], "raycolor formats.encode")
    jpeg = (lambda a, t: formats.encode(_rgb(a), "jpeg", None, prov, jpeg_quality=92)[0], "raycolor formats.encode")
    return {
        "jp2 lossless": (lambda a, t: jp2.encode(a, lossless=True, threads=t), None),  # codec: _jp2_encoder
        "jp2 lossy 1bpp": (lambda a, t: jp2.encode(a, lossless=False, rate=1.0, threads=t), None),
        "tiff deflate": tiff,
        "jpeg q92": jpeg,
    }


def _pil_decode(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    im.load()
    return np.asarray(im)


def _threaded(fmt: str, a: np.ndarray) -> bool:
    # OpenJPEG's tile writer takes threads for every JP2; of the fallbacks, only imagecodecs (16-bit RGB).
    if not fmt.startswith("jp2"):
        return False
    return jp2._openjpeg() is not None or (a.ndim == 3 and a.dtype == np.uint16)


def _jp2_encoder(a: np.ndarray) -> str:
    if jp2._openjpeg() is not None:
        return "openjpeg tiles (ctypes)"
    return "imagecodecs" if a.ndim == 3 and a.dtype == np.uint16 else "pillow"


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench_speed(mp: float) -> list[tuple]:
    w = int(round((mp * 1e6 * 4 / 3) ** 0.5))
    h = int(round(mp * 1e6 / w))
    images = {
        "8-bit RGB": photo(h, w, bits=8),
        "16-bit RGB": photo(h, w, bits=16),
        "16-bit grey": photo(h, w, bits=16, rgb=False),
    }
    megapixels = h * w / 1e6
    warm = photo(256, 256, bits=8)
    for name, (enc, _) in encoders().items():
        enc(warm, 1)
    rows = []
    for kind, a in images.items():
        for fmt, (enc, lib) in encoders().items():
            if fmt == "jpeg q92" and a.dtype != np.uint8:
                continue  # JPEG here is 8-bit only
            if fmt == "tiff deflate" and a.ndim == 2:
                continue  # raycolor writes RGB TIFFs
            data = None
            for t in ((1, 2) if _threaded(fmt, a) else (1,)):
                secs, data = timed(lambda: enc(a, t))
                rows.append((fmt, kind, "encode", lib or _jp2_encoder(a),
                             str(t) if _threaded(fmt, a) else "-", secs * 1e3 / megapixels,
                             len(data) * 8 / (h * w)))
            bpp = len(data) * 8 / (h * w)
            if fmt.startswith("jp2"):
                for t in (1, 2):
                    secs, img = timed(lambda: jp2.decode(data, max_pixels=None, threads=t))
                    rows.append((fmt, kind, "decode", "imagecodecs", str(t), secs * 1e3 / megapixels, bpp))
                secs, px = timed(lambda: _pil_decode(data))
                note = "pillow" if px.dtype == a.dtype else f"pillow ({px.dtype}: wrong depth)"
                rows.append((fmt, kind, "decode", note, "-", secs * 1e3 / megapixels, bpp))
            else:
                secs, _ = timed(lambda: _pil_decode(data))
                rows.append((fmt, kind, "decode", "pillow", "-", secs * 1e3 / megapixels, bpp))
    return rows


_CHILD = r"""
import resource, sys, numpy as np
sys.path.insert(0, {root!r})
from raycolor.core import jp2
from bench.jp2_codecs import photo
import os
if os.environ.get("RAYCOLOR_JP2_FALLBACK") == "1":
    jp2._openjpeg = lambda: None


def mark():
    # ru_maxrss survives fork and exec (a child starts with its parent's peak), so the peak is reset here with
    # clear_refs (Linux >= 4.0) and read back as VmHWM; getrusage only where /proc lacks them.
    try:
        open("/proc/self/clear_refs", "w").write("5")
        return _status("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak():
    try:
        return _status("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(key)


what, path, mp, threads = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
w = int(round((mp * 1e6 * 4 / 3) ** 0.5)); h = int(round(mp * 1e6 / w))
if what == "decode":
    data = open(path, "rb").read()
    before = mark()
    img = jp2.decode(data, max_pixels=None, threads=threads)
else:
    a = photo(h, w, bits=16)
    before = mark()
    data = jp2.encode(a, lossless=(what == "encode"), rate=None if what == "encode" else 1.0, threads=threads)
    if what == "encode":
        open(path, "wb").write(data)
after = peak()
print(before // 1024, after // 1024, len(data))
"""


def bench_memory(mp: float) -> list[tuple]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _CHILD.format(root=root)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "big.jp2")
        for what, threads in (("encode", 2), ("lossy-encode", 2), ("decode", 1), ("decode", 2)):
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code, what, path, str(mp), str(threads)],
                                 capture_output=True, text=True, check=True).stdout.split()
            secs = time.perf_counter() - t
            before, after, size = map(int, out)
            rows.append((what, threads, before, after, after - before, size, secs))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mp", type=float, default=12.0, help="megapixels of the speed image")
    ap.add_argument("--memory-mp", type=float, default=25.0, help="megapixels of the 16-bit RGB memory case")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--fallback", action="store_true", help="JP2 encodes by Pillow/imagecodecs, not the tile writer")
    args = ap.parse_args(argv)
    if args.fallback:
        jp2._openjpeg = lambda: None
        os.environ["RAYCOLOR_JP2_FALLBACK"] = "1"
    print(f"JP2 encoder: {jp2.encoder()}")
    print(f"load average before: {os.getloadavg()}  cpus: {os.cpu_count()}")
    if not args.no_memory:
        memory = bench_memory(args.memory_mp)
    if not args.no_speed:
        rows = bench_speed(args.mp)
        print(f"\n{args.mp:g} MP photo-like image; ms per megapixel (one run each)")
        print(f"{'format':<16}{'pixels':<13}{'op':<8}{'codec':<34}{'threads':>8}{'ms/MP':>9}{'bpp':>8}")
        for fmt, kind, op, codec, t, ms, bpp in rows:
            print(f"{fmt:<16}{kind:<13}{op:<8}{codec:<34}{t:>8}{ms:>9.0f}{bpp:>8.2f}")
    if not args.no_memory:
        print(f"\n{args.memory_mp:g} MP 16-bit RGB JP2, peak RSS (MiB) in a fresh process")
        print(f"{'op':<14}{'threads':>8}{'before':>9}{'peak':>9}{'added':>9}{'MB file':>9}{'s':>7}{'B/px':>7}")
        for what, threads, before, after, added, size, secs in memory:
            print(f"{what:<14}{threads:>8}{before:>9}{after:>9}{added:>9}{size / 1e6:>9.1f}{secs:>7.1f}"
                  f"{added * 1048576 / (args.memory_mp * 1e6):>7.1f}")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
