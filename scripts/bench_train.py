"""Benchmark training on the real Dataset B against the published recipe; prints its figures.

    python scripts/bench_train.py [--data DIR] [--precision fp32|bf16|auto] [--published-batches N] [--keep DIR]

In one run:
1. stage 1 into a fresh temporary folder (so no cached body features exist);
2. this project's default run, as a user types it (a new process): lr_find + 5 epochs at
   512 px, pretrained path with a stand-in weights file (torchvision's resnet34() with random
   values, saved in torchvision's format: timing does not depend on the values, accuracy
   does, so no accuracy is printed); wall time and peak RSS;
3. the published recipe measured in this process: fastai defaults, vision_learner(resnet34),
   bs 4, 512 px, frozen body with trainable BatchNorm; a few training and validation batches
   are timed and scaled by the recipe's batch count (461 recordings, one image each, 70:30
   at random: 80 training batches and 35 validation batches per epoch, 5 epochs, plus
   lr_find's 100 training iterations);
4. their ratio. Targets (2-core machine): <= 1/10 of the published time, peak RSS <= 4 GiB.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import benchlib
from benchlib import figures, run_checked, target

# The published recipe's batch counts on Dataset B (one image per labelled recording).
RECORDINGS, VALID_FRACTION, BATCH_SIZE, EPOCHS, LR_FIND_ITERATIONS = 461, 0.3, 4, 5, 100


def published_batch_times(spectrograms: Path, weights: Path, batches: int) -> tuple[float, float]:
    """Seconds per training batch and per validation batch of the published fastai recipe."""
    import pandas as pd
    import torch
    from fastai.vision.all import ImageDataLoaders, error_rate, vision_learner

    from heartbeat.train.model import resnet34_arch

    manifest = pd.read_csv(spectrograms / "manifest.csv", keep_default_na=False)
    first_windows = manifest[manifest["window"] == 0].head(BATCH_SIZE * (batches + 2) * 2)
    frame = pd.DataFrame({"name": first_windows["image"], "label": first_windows["label"]})
    dls = ImageDataLoaders.from_df(frame, path=spectrograms, valid_pct=0.5, seed=0, bs=BATCH_SIZE, num_workers=0)
    state = torch.load(weights, weights_only=True)
    learn = vision_learner(dls, resnet34_arch(state), metrics=error_rate)  # pretrained=True: frozen body, BN trainable
    learn.model.train()
    optimiser = torch.optim.Adam([p for p in learn.model.parameters() if p.requires_grad], lr=1e-3)
    train_iter = iter(dls.train)
    next(train_iter)  # warm-up batch: allocator and kernels
    times = []
    for _ in range(batches):
        images, labels = next(train_iter)
        start = time.perf_counter()
        loss = learn.loss_func(learn.model(images), labels)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        times.append(time.perf_counter() - start)
    train_batch = sorted(times)[len(times) // 2]
    learn.model.eval()
    valid_times = []
    with torch.no_grad():
        for index, (images, labels) in enumerate(dls.valid):
            start = time.perf_counter()
            learn.loss_func(learn.model(images), labels)
            valid_times.append(time.perf_counter() - start)
            if index + 1 >= batches:
                break
    valid_batch = sorted(valid_times)[len(valid_times) // 2]
    return train_batch, valid_batch


def published_seconds(train_batch_s: float, valid_batch_s: float) -> tuple[float, str]:
    """The published recipe's whole run from its batch times, and the sum written out."""
    n_valid = round(RECORDINGS * VALID_FRACTION)
    train_batches = (RECORDINGS - n_valid) // BATCH_SIZE  # fastai drops the last partial training batch
    valid_batches = math.ceil(n_valid / BATCH_SIZE)
    seconds = train_batch_s * (EPOCHS * train_batches + LR_FIND_ITERATIONS) + valid_batch_s * EPOCHS * valid_batches
    return seconds, (f"{train_batch_s:.2f} s/train batch x ({EPOCHS}x{train_batches} + {LR_FIND_ITERATIONS} lr_find) + "
                     f"{valid_batch_s:.2f} s/valid batch x {EPOCHS}x{valid_batches}")


def main() -> int:
    parser = benchlib.argument_parser(__doc__)
    parser.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--published-batches", type=int, default=6, help="batches timed for the published recipe")
    parser.add_argument("--keep", type=Path, help="keep the spectrograms, weights and run here (e.g. for bench_predict --model)")
    args = benchlib.parse_arguments(parser)

    with benchlib.prepared_folder(args.data, args.keep) as (scratch, weights, spectrograms):
        ours = run_checked([sys.executable, "-m", "heartbeat", "train", "--spectrograms", str(spectrograms),
                            "--weights", str(weights), "--out", str(scratch / "run"), "--precision", args.precision],
                           "heartbeat train, default settings", show_stderr=True)
        config = json.loads((scratch / "run" / "config.json").read_text())

        benchlib.say(f"{benchlib.NAME}: timing the published recipe ({args.published_batches} batches each) ...")
        train_batch_s, valid_batch_s = published_batch_times(spectrograms, weights, args.published_batches)

    published_s, published_sum = published_seconds(train_batch_s, valid_batch_s)
    windows = config["n_windows"]
    figures([
        ("this project, default run", f"{ours.seconds:.0f} s wall ({windows['train'] + windows['valid']} windows, "
                                      f"mode {config['train_settings']['mode']}, precision {args.precision}), "
                                      f"peak RSS {ours.peak_rss_gib:.2f} GiB {target('<= 4 GiB', ours.peak_rss_gib <= 4)}"),
        ("published recipe, scaled", f"{published_s:.0f} s = {published_sum}"),
        ("ratio", f"{ours.seconds / published_s:.3f} of the published time {target('<= 0.100', ours.seconds / published_s <= 0.1)}"),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
