"""Read a TensorBoard log directory with TensorBoard's own EventAccumulator (the test oracle).

Usage: tb_events.py LOGDIR. Prints one JSON object: every scalar tag's (step, value) list,
every image tag's (step, width, height) list and every tensor (text) tag's steps, after
TensorBoard's own handling of restarts (SessionLog START purges).
"""

import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main() -> None:
    acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    out = {
        "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
        "images": {
            t: [[e.step, e.width, e.height, len(e.encoded_image_string)] for e in acc.Images(t)]
            for t in tags["images"]
        },
        "tensors": {t: [e.step for e in acc.Tensors(t)] for t in tags["tensors"]},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
