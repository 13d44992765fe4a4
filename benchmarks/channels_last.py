"""``model.channels_last``: seconds per training step with NCHW and NHWC backbone weights.

One SGD step (forward, backward, update) of noisytail's network on a batch of random images,
for the default profile's resnet18 at 32 px grey and the pretrained profile's
tf_efficientnet_lite0/1/2 at 64 and 96 px in three channels; the two layouts alternate, and
the median of the timed steps (after warm-up) is reported with their ratio. Run it alone: two
torch jobs on 2 cores slow each other several-fold.

    python benchmarks/channels_last.py [--steps 5] [--batch 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import print_table, write_result

from noisytail.config.model import ModelConfig
from noisytail.models.network import build_network

CASES = [("resnet18", 32, 1), ("tf_efficientnet_lite0", 64, 3), ("tf_efficientnet_lite0", 96, 3),
         ("tf_efficientnet_lite1", 64, 3), ("tf_efficientnet_lite2", 64, 3)]  # fmt: skip


def step_seconds(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    started = time.perf_counter()
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per layout")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for backbone, size, channels in CASES:
        models = {
            layout: build_network(ModelConfig(backbone=backbone, in_chans=channels,
                                              image_size=size, embedding_dim=512, bnneck=True,
                                              channels_last=layout == "nhwc"), 10).train()
            for layout in ("nchw", "nhwc")
        }  # fmt: skip
        images = torch.randn(args.batch, channels, size, size)
        labels = torch.randint(0, 10, (args.batch,))
        times: dict[str, list[float]] = {"nchw": [], "nhwc": []}
        for step in range(args.steps + 1):  # the first step of each layout warms up
            for layout, model in models.items():
                seconds = step_seconds(model, images, labels)
                if step:
                    times[layout].append(seconds)
        nchw, nhwc = (statistics.median(times[k]) for k in ("nchw", "nhwc"))
        rows.append({"backbone": backbone, "image_size": size, "channels": channels,
                     "nchw_s_per_step": round(nchw, 3), "nhwc_s_per_step": round(nhwc, 3),
                     "speedup": round(nchw / nhwc, 2)})  # fmt: skip
        print_table(rows[-1:])
    print()
    print_table(rows)
    write_result("channels_last", rows, batch=args.batch, steps=args.steps)


if __name__ == "__main__":
    main()
