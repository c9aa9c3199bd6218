#!/usr/bin/env python3
"""The Python peer of `tessera shard`: the same work with Pillow + tarfile.

For every input (sorted walk): read the bytes, decode fully to verify (copy mode) or
decode, apply EXIF orientation, resize so the longest side is MAX_SIDE (Lanczos) and
re-encode as JPEG q90 (resize mode, only when larger), then write the image and a small
.json into tar shards of 1000 samples. Decoding runs in a pool of WORKERS processes
(order kept by imap), the main process writes, like tessera's workers + in-order writer.

Usage: shard_pillow.py INPUT_DIR OUT_DIR WORKERS [MAX_SIDE]
Prints: images/s.
"""
import hashlib
import io
import json
import multiprocessing
import os
import sys
import tarfile
import time

from PIL import Image, ImageOps

MAX_SIDE = None


def prepare(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # full decode: verification
        ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}.get(img.format)
        if ext is None:
            return path, None, None, None
        meta = {"source": path, "width": img.width, "height": img.height, "sha256": hashlib.sha256(data).hexdigest()}
        if MAX_SIDE and max(img.size) > MAX_SIDE:
            img = ImageOps.exif_transpose(img).convert("RGB")
            scale = MAX_SIDE / max(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, Image.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            data, ext = buf.getvalue(), "jpg"
            meta["transform"] = {"to": list(size)}
        return path, data, ext, json.dumps(meta).encode()
    except Exception:  # a reject, like tessera's
        return path, None, None, None


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def main(input_dir, out_dir, workers, max_side):
    global MAX_SIDE
    MAX_SIDE = max_side
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(input_dir) for f in fs)
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    tar, written = None, 0
    with multiprocessing.Pool(workers) as pool:
        for i, (path, data, ext, meta) in enumerate(pool.imap(prepare, paths, chunksize=8)):
            if data is None:
                continue
            if written % 1000 == 0:
                if tar:
                    tar.close()
                tar = tarfile.open(os.path.join(out_dir, f"pillow-{written // 1000:06d}.tar"), "w")
            key = f"{i:09d}"
            add(tar, f"{key}.{ext}", data)
            add(tar, f"{key}.json", meta)
            written += 1
    if tar:
        tar.close()
    seconds = time.perf_counter() - start
    print(f"{len(paths) / seconds:.1f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else None)
