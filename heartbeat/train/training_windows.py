"""Training windows as both recipes' augmentations see them: native bands, whole-recording mels, the levers applied.

Augmentation happens on a window's native 128 bands (stage 1 repeats each band over 4 rows);
random_windows draws a window anywhere in its recording's whole mel image. The functions of
heartbeat.train.augment are called through the module, as tests replace them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from heartbeat.data import mel
from heartbeat.train import augment
from heartbeat.train import nets
from heartbeat.train.recipes.heartbeat_recipe import RECIPE, Recipe


def read_band_pixels(spectrograms_dir: Path, images) -> list[np.ndarray]:
    """Each stage-1 image's (n_mels, frames) band pixels (augment.native_bands), uint8."""
    from PIL import Image

    pixels = []
    for name in images:
        with Image.open(Path(spectrograms_dir) / name) as png:
            pixels.append(np.ascontiguousarray(augment.native_bands(np.asarray(png.convert("L")))))
    return pixels


def recording_mels(windows: pd.DataFrame, pixels: list[np.ndarray]) -> dict[str, np.ndarray]:
    """recording -> its whole mel image (augment.recording_mel) from its windows' pixels (in the windows' order)."""
    mels = {}
    positions = pd.Series(range(len(windows)), index=windows.index)
    for recording, group in windows.groupby("recording", sort=False):
        parts = [(float(start), pixels[positions[index]]) for index, start in group["start_s"].items()]
        mels[recording] = augment.recording_mel(parts)
    return mels


def augmented(pixels: np.ndarray, mel: np.ndarray, recipe: Recipe, rng: np.random.Generator) -> np.ndarray:
    """One training window, float32 pixels in [0, 255], with the recipe's augmentation levers applied."""
    levers = recipe.levers
    window = augment.random_window(mel, rng, pixels.shape[1], recipe.short_shift) if "random_windows" in levers else pixels
    window = window.astype(np.float32)
    if "device_colour" in levers:
        window = augment.spectral_tilt(window, rng, recipe.max_tilt_db_per_octave)
        window = augment.band_limits(window, rng, recipe.low_cut_hz, recipe.high_cut_hz, recipe.cut_db_per_octave)
        window = augment.noise_floor(window, rng, recipe.noise_db, recipe.noise_spread_db)
    if recipe.level_shift_db:
        window = augment.level_shift(window, rng, recipe.level_shift_db)
    if "specaugment" in levers:
        window = augment.time_masks(window, rng, recipe.time_masks, recipe.max_mask_frames)
        window = augment.frequency_masks(window, rng, recipe.frequency_masks, recipe.max_mask_bands)
    return window.astype(np.float32)


def image_augmenter(spectrograms_dir: Path, train_windows: pd.DataFrame, levers, image_size: int, seed: int, *,
                    band_norm: bool = False):
    """For the published recipe's image training: training manifest row -> its augmented stage-1 image.

    The same augmentations as the heartbeat recipe (`augmented`, with the named levers), on the
    window's native bands, then back to stage 1's layout (each band repeated to its rows) and
    prepared for the network as any training image is (mel.model_input: band_norm, size). uint8
    (image_size, image_size). One Generator seeded once draws every choice in the order the
    images are asked for, so a run with fastai's seeded batch order repeats.
    """
    chosen = RECIPE.with_levers(levers)
    train_windows = train_windows.reset_index(drop=True)
    pixels = read_band_pixels(spectrograms_dir, train_windows["image"])
    by_image = dict(zip(train_windows["image"], pixels))
    mels = recording_mels(train_windows, pixels) if "random_windows" in chosen.levers else {}
    rng = np.random.default_rng(seed)

    def augmented_image(row) -> np.ndarray:
        window = augmented(by_image[row["image"]], mels.get(row["recording"]), chosen, rng)
        bands = np.clip(np.rint(window), 0, 255).astype(np.uint8)
        return mel.model_input(np.repeat(bands, nets.ROWS_PER_BAND, axis=0), image_size, band_norm)

    return augmented_image

