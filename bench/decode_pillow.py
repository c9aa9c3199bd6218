#!/usr/bin/env python3
"""Peer measurement for `cargo bench -p tessera-pipeline --bench decode`: the same JPEGs
decoded by Pillow (libjpeg-turbo, what a PyTorch DataLoader with PIL uses), and the
PIL operations torchvision's transforms call on PIL images, single thread, median of 5.

Usage: python3 bench/decode_pillow.py   (needs Pillow; numpy not required)
"""
import io
import random
import statistics
import time
from pathlib import Path

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata"
FILES = [
    "hostile/files/baseline_ref.jpg",
    "hostile/files/progressive_cjpeg_q90.jpg",
    "hostile/files/sampling_444.jpg",
    "hostile/files/gray_cjpeg.jpg",
    "photos/grace_hopper.jpg",
    "photos/rocket.jpg",
    "hostile/files/large_6000x4000.jpg",
]
RUNS = 5


def median_per_call(fn, iters):
    for _ in range(min(iters, 3)):
        fn()
    runs = []
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        runs.append((time.perf_counter() - start) / iters)
    return statistics.median(runs)


def iters_for(fn):
    start = time.perf_counter()
    fn()
    one = time.perf_counter() - start
    return max(1, min(100_000, int(0.25 / max(one, 1e-6))))


def main():
    print(f"# Pillow {Image.__version__} JPEG decode, full size, 1 thread, median of {RUNS} runs")
    print(f"{'file':<44} {'size':>10} {'PIL img/s':>10} {'PIL draft/2 img/s':>18}")
    for name in FILES:
        data = (SHARED / name).read_bytes()

        def full():
            Image.open(io.BytesIO(data)).convert("RGB")

        def draft():
            # DCT-scaled decode at >= 1/2 size (libjpeg scale_denom 2).
            im = Image.open(io.BytesIO(data))
            im.draft("RGB", (im.width // 2, im.height // 2))
            im.convert("RGB")

        size = "%dx%d" % Image.open(io.BytesIO(data)).size
        n = iters_for(full)
        print(f"{name:<44} {size:>10} {1 / median_per_call(full, n):>10.1f} {1 / median_per_call(draft, n):>18.1f}")

    print("\n# torchvision-on-PIL view ops on a decoded 500x375 photo, 1 thread")
    img = Image.open(SHARED / "hostile/files/baseline_ref.jpg").convert("RGB")
    rng = random.Random(0)

    def rrc(resample=Image.BICUBIC, size=224):
        # torchvision F.resized_crop on PIL: crop then resize
        w = rng.randint(150, 500)
        h = rng.randint(120, 375)
        left, top = rng.randint(0, 500 - w), rng.randint(0, 375 - h)
        return img.crop((left, top, left + w, top + h)).resize((size, size), resample)

    def jitter():
        out = rrc()
        out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.6, 1.4))
        out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.6, 1.4))
        out = ImageEnhance.Color(out).enhance(rng.uniform(0.8, 1.2))
        h, s, v = out.convert("HSV").split()  # torchvision F.adjust_hue on PIL
        h = h.point(lambda x: (x + int(rng.uniform(-0.1, 0.1) * 255)) % 256)
        return Image.merge("HSV", (h, s, v)).convert("RGB")

    def blur():
        return rrc().filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))

    def grey_solar():
        return ImageOps.solarize(rrc().convert("L").convert("RGB"), 128)

    cases = [
        ("RRC 224 bicubic", rrc),
        ("RRC 224 bilinear", lambda: rrc(Image.BILINEAR)),
        ("RRC 96 bicubic", lambda: rrc(size=96)),
        ("RRC 224 + hflip", lambda: rrc().transpose(Image.FLIP_LEFT_RIGHT)),
        ("RRC 224 + jitter(0.4,0.4,0.2,0.1)", jitter),
        ("RRC 224 + PIL GaussianBlur (DINO)", blur),
        ("RRC 224 + grayscale + solarize", grey_solar),
    ]
    for label, fn in cases:
        per = median_per_call(fn, 300)
        print(f"{label:<40} {per * 1e6:>8.1f} us/view")


if __name__ == "__main__":
    main()
