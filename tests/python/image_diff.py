#!/usr/bin/env python3
"""Test oracle: mean absolute pixel difference (0-255) between two images, as decoded by
Pillow WITHOUT applying EXIF orientation (so an un-rotated image differs a lot).

Usage: image_diff.py REFERENCE CANDIDATE  -> prints one number.
The candidate is resized to the reference's size first when they differ.
"""
import sys

import numpy as np
from PIL import Image


def main(reference, candidate):
    a = Image.open(reference).convert("RGB")
    b = Image.open(candidate).convert("RGB")
    if b.size != a.size:
        b = b.resize(a.size, Image.BILINEAR)
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean()
    print(f"{diff:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
