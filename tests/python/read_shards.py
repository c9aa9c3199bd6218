#!/usr/bin/env python3
"""Test oracle: read shards with the reference WebDataset reader and print what it sees.

Usage: read_shards.py SHARD...

Prints one JSON object: {"samples": [{"key", "url", "fields": {name: sha256 of bytes},
"json": the decoded .json field or null}], "count": n}. Nothing is decoded beyond the
raw bytes, so the Rust tests compare keys, field names and exact bytes.
"""
import hashlib
import json
import sys

import webdataset as wds


def main(paths):
    samples = []
    # shardshuffle=False: keep shard order; no decoding: raw bytes per field.
    dataset = wds.WebDataset(paths, shardshuffle=False, empty_check=False)
    for sample in dataset:
        fields = {}
        meta = None
        for name, value in sample.items():
            if name.startswith("__"):
                continue
            fields[name] = hashlib.sha256(value).hexdigest()
            if name == "json":
                meta = json.loads(value)
        samples.append({"key": sample["__key__"], "url": sample["__url__"], "fields": fields, "json": meta})
    json.dump({"count": len(samples), "samples": samples}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
