"""What a training run is asked to do: TrainSettings, each field's flag, default, choices, check and help in one place.

cli.py builds the `train` and `cv` flags from the fields' metadata in a loop, and library callers
get the same checks from TrainSettings.validate. After training, `resolved` turns the settings
asked for into the settings that ran (mode "scratch" without pretrained weights, the precision
only where it applies, the learning rate used beside lr_find's suggestion): what config.json,
metrics.json and the reports show.

Only the standard library is imported: `heartbeat train --help` must answer without loading torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from dataclasses import dataclass

from heartbeat.train.recipes import heartbeat_recipe  # standard library only

MAX_SEED = 2**32 - 1  # numpy's legacy seeding, which fastai's set_seed calls, takes 0 .. 2**32-1
MAX_IMAGE_SIZE = 2048  # 4x the published 512 px; one batch of ResNet-34 activations beyond it outgrows a workstation
NOT_APPLICABLE = "n/a"  # a resolved setting that the run's mode does not use
STAGE1_IMAGE_SIZE = 512  # audio.SETTINGS.image_size, the spectrograms' size (not imported: numpy; a test checks)
RECIPES = ("published", "heartbeat")
PUBLISHED_EPOCHS = 5  # the published recipe's one-cycle epochs
PUBLISHED_BATCH_SIZE = 4  # and its batch size
# The heartbeat recipe's parts that --levers switches on one at a time (heartbeat_recipe.LEVERS says what each
# does); the recipe's own choice is heartbeat_recipe.DEFAULT_LEVERS.
LEVERS = tuple(heartbeat_recipe.LEVERS)
# The levers that augment training windows: they also apply to the published recipe wherever it trains on images
# (--mode finetune, --no-pretrained); oversample is --balance's there.
IMAGE_LEVERS = ("random_windows", "specaugment", "device_colour")
# The published recipe's levers: the augmentations, and band_norm as a preparation of every input image (in every
# mode: it is no augmentation, and predict applies it too; see mel.band_normalised). None is on by default (the
# study). Measured from scratch at 64 px, seeds 3-5 (README): band_norm balanced accuracy +0.002 +- 0.012, and no
# loss under simulated device filters; random_windows + specaugment -0.085 +- 0.016 in the published 5 epochs.
PUBLISHED_LEVERS = ("band_norm", *IMAGE_LEVERS)
DEFAULT_LEVERS = "default"  # --levers' default: the recipe's chosen levers
NO_LEVERS = "none"


class TrainError(RuntimeError):
    """A problem the user can fix (missing manifest, mismatched settings); one-line message."""


# ---------------------------------------------------------------- checks of one value (argparse types)

def whole_number(text: str, low: int, high: int | None = None) -> int:
    """An integer in [low, high]; ArgumentTypeError otherwise (argparse then names the flag in its message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
    return value


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return whole_number(text, 0)


def seed_number(text: str) -> int:
    return whole_number(text, 0, MAX_SEED)


def image_pixels(text: str) -> int:
    return whole_number(text, 1, MAX_IMAGE_SIZE)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def learning_rate(text: str) -> float:
    value = finite_float(text)
    if value <= 0:  # a negative rate climbs the loss: a diverged model
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    value = finite_float(text)
    if not 0 <= value < 1:  # 0: no validation side (a final model); the training side always needs recordings
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def label_map_text(text: str) -> str:
    """--label-map: `old=new,old2=drop`, checked now (the mapping itself is parsed where labels are read)."""
    from heartbeat.data.layouts import LayoutError, parse_label_map  # standard library only

    if not text:  # the default: no map
        return text
    try:
        parse_label_map(text)
    except LayoutError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--label-map: ")) from None
    return text


def lever_list(text: str) -> str:
    """--levers: all, none, or comma-separated names of LEVERS; returned sorted and without repeats."""
    if text in (DEFAULT_LEVERS, NO_LEVERS):
        return text
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in LEVERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown lever(s) {', '.join(map(repr, unknown))}; known: "
                                         f"{', '.join(LEVERS)}, or {DEFAULT_LEVERS} or {NO_LEVERS}")
    return ",".join(name for name in LEVERS if name in names)


def run_name(text: str) -> str:
    """--name: part of one folder's name, so never a path (no '/'), nor hidden (temporary names start with '.')."""
    if not _is_plain_name(text):
        raise argparse.ArgumentTypeError(f"must be a plain name (no '/', not starting with '.'), got {text!r}")
    return text


def _is_plain_name(text: str) -> bool:
    return "/" not in text and "\0" not in text and not text.startswith(".")


# ---------------------------------------------------------------- the settings

def setting(default, flag: str, help: str, *, commands=("train", "cv"), exclusive: str | None = None, **options):
    """A TrainSettings field with its command-line flag: argparse options (type, choices, action, metavar) and help.

    `commands`: the commands that have the flag; `exclusive`: flags sharing this name are mutually exclusive.
    """
    metadata = {"flag": flag, "help": help, "commands": commands, "exclusive": exclusive, "options": options}
    return dataclasses.field(default=default, metadata=metadata)


MODE_HELP = ("features: frozen body run once, head trained on its outputs (default, fast); finetune: fastai's frozen "
             "body with trainable BatchNorm, as published; with --no-pretrained the whole network trains from scratch")
PRECISION_HELP = ("body forward pass in features mode: fp32 (default; the report then matches predict), bf16 (faster on "
                  "CPUs with bf16 instructions; report and predict can differ slightly), auto (bf16 where the device "
                  "has it, fp16 on GPUs without bf16)")


@dataclass
class TrainSettings:
    # "patient": no patient on both sides (honest); "random": the published protocol
    split: str = setting("patient", "--split", "patient: grouped by patient, no patient on both sides (default); random: "
                         "the published 70:30 by recording, patients leak", choices=("patient", "random"))
    valid_fraction: float = setting(0.3, "--valid-fraction", "share of recordings for validation (default: %(default)s, "
                                    "as published); 0 trains the heartbeat recipe on every recording (a final model: "
                                    "its figures come from the CV)", type=fraction)
    seed: int = setting(42, "--seed", f"split, head initialisation and batch order, 0 to {MAX_SEED} (default: %(default)s)",
                        type=seed_number)
    # "published": the study's ResNet-34 recipe; "heartbeat": heartbeat.train.recipes.heartbeat's small CNN (README "Model quality")
    recipe: str = setting("published", "--recipe", "published: the study's ResNet-34 with lr_find and one-cycle "
                          "(default); heartbeat: a small CNN on the native 128 mel bands, trained from scratch with "
                          "random windows and augmentation (the README's 'Model quality' section)", choices=RECIPES)
    levers: str = setting(DEFAULT_LEVERS, "--levers", f"the levers on, comma-separated from {', '.join(LEVERS)}; or "
                          f"{NO_LEVERS}; {DEFAULT_LEVERS} (the default): the heartbeat recipe's chosen ones, none in "
                          f"the published recipe, which takes band_norm, and the augmentations "
                          f"({', '.join(IMAGE_LEVERS)}) with --mode finetune or --no-pretrained (README 'Model "
                          "quality')", type=lever_list, metavar="LIST")
    # None: the recipe's own (published: 5 epochs, batch size 4; heartbeat: heartbeat_recipe.RECIPE's)
    epochs: int | None = setting(None, "--epochs", f"one-cycle epochs (default: the recipe's; {PUBLISHED_EPOCHS} in the "
                                 "published one, as published)", type=positive_int)
    batch_size: int | None = setting(None, "--bs", f"batch size (default: the recipe's; {PUBLISHED_BATCH_SIZE} in the "
                                     "published one, as published)", type=positive_int)
    image_size: int = setting(512, "--image-size", f"network input size in px, 1 to {MAX_IMAGE_SIZE}; images are resized "
                              "(default: %(default)s, the spectrograms at full size, as published)", type=image_pixels)
    # ImageNet body (frozen); False: train the whole network from scratch
    pretrained: bool = setting(True, "--no-pretrained", "no ImageNet weights: train the whole network from scratch",
                               exclusive="weights", action="store_false")
    weights: str | None = setting(None, "--weights", "ResNet-34 state dict in torchvision's format (default: the torch "
                                  "hub cache under TORCH_HOME, downloaded there if missing)", exclusive="weights",
                                  metavar="PATH")
    offline: bool = setting(False, "--offline", "never download ImageNet weights missing from the hub cache "
                            "(as HEARTBEAT_OFFLINE=1)", action="store_true")
    mode: str = setting("features", "--mode", MODE_HELP, choices=("features", "finetune"))
    lr: float | None = setting(None, "--lr", "learning rate (default: lr_find's suggestion, as published; a given "
                               "rate skips lr_find)",
                               type=learning_rate)
    unfreeze_epochs: int = setting(0, "--unfreeze-epochs", "optional second stage: unfreeze and train N more epochs "
                                   "with discriminative rates (default: %(default)s)", type=non_negative_int)
    balance: str = setting("none", "--balance", "class imbalance: none (published), inverse-frequency loss weights, or "
                           "oversampling rare classes", choices=("none", "weights", "oversample"))
    # fp32 (default): the report's probabilities are the ones predict (fp32 ONNX) gives; bf16 / auto are faster,
    # but the head then learns and is scored on reduced-precision features that predict never sees.
    precision: str = setting("fp32", "--precision", PRECISION_HELP, choices=("fp32", "bf16", "auto"))
    device: str = setting("auto", "--device", "where stage 2 runs: auto (CUDA if available, then Apple MPS, then the "
                          "CPU; default), cpu, cuda or mps", choices=("auto", "cpu", "cuda", "mps"))
    # Labels renamed or dropped as the manifest is read (the spectrogram stage takes the same flag)
    label_map: str = setting("", "--label-map", "rename or drop labels of the manifest, e.g. "
                             "'noisynormal=normal,artifact=drop' (default: none)", type=label_map_text, metavar="MAP")
    name: str = setting("", "--name", "short name in the run folder's name", commands=("train",), type=run_name)

    def validate(self) -> None:
        """ValueError naming the command-line flag of the first setting out of its range (for library callers)."""
        for field in dataclasses.fields(self):
            allowed = field.metadata["options"].get("choices")
            if allowed and getattr(self, field.name) not in allowed:
                raise ValueError(f"{field.metadata['flag']} must be one of {', '.join(allowed)}, "
                                 f"not {getattr(self, field.name)!r}")
        if not 0 <= self.valid_fraction < 1:  # also refuses NaN
            raise ValueError(f"--valid-fraction must be at least 0 and below 1, not {self.valid_fraction}")
        whole_numbers = {"--seed": (self.seed, 0, MAX_SEED), "--epochs": (self.epochs, 1, None),
                         "--bs": (self.batch_size, 1, None), "--image-size": (self.image_size, 1, MAX_IMAGE_SIZE),
                         "--unfreeze-epochs": (self.unfreeze_epochs, 0, None)}
        for flag, (value, low, high) in whole_numbers.items():
            if value is None and flag in ("--epochs", "--bs"):  # the recipe's own
                continue
            whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            if not whole or value < low or (high is not None and value > high):
                bounds = f"at least {low}" if high is None else f"between {low} and {high}"
                raise ValueError(f"{flag} must be a whole number {bounds}, not {value!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive finite number, not {self.lr!r}")
        try:
            lever_list(self.levers if isinstance(self.levers, str) else repr(self.levers))
        except argparse.ArgumentTypeError as error:
            raise ValueError(f"--levers: {error}") from None
        if self.label_map:
            from heartbeat.data.layouts import parse_label_map

            parse_label_map(self.label_map)  # LayoutError, a ValueError naming --label-map
        if not _is_plain_name(self.name):  # part of a folder's name, never a path
            raise ValueError(f"--name must be a plain name (no '/', not starting with '.'), not {self.name!r}")
        self.check_combination()

    def check_combination(self) -> None:
        """ValueError for flags that would do nothing together: the run would not be the one asked for."""
        if self.recipe == "heartbeat":
            self._check_heartbeat_recipe()
        else:
            self._check_published_levers()
        if self.valid_fraction == 0 and self.recipe != "heartbeat":
            raise ValueError("--valid-fraction 0 (every recording trains) needs --recipe heartbeat: the published recipe "
                             "chooses its rate and reports its scores on a validation side; give a fraction above 0")
        if not self.pretrained and self.mode == "finetune":
            raise ValueError("--mode finetune does nothing with --no-pretrained (there is no pretrained body to "
                             "fine-tune; the whole network trains from scratch): drop one of them")
        if self.precision != "fp32" and self.training_mode() != "features":
            raise ValueError(f"--precision {self.precision} applies only to the frozen body's pass of --mode features "
                             f"with pretrained weights; it does nothing with "
                             f"{'--no-pretrained' if not self.pretrained else '--mode finetune'}: drop it")

    def _check_published_levers(self) -> None:
        """The published recipe takes band_norm and the augmentation levers, the latter only where it trains on images."""
        names = self.augmentation_levers()
        if "oversample" in self.lever_names():
            raise ValueError(f"--levers oversample does nothing with the published recipe (use --balance oversample; "
                             f"the published recipe takes {', '.join(PUBLISHED_LEVERS)}): drop it or add --recipe "
                             "heartbeat")
        if names and self.training_mode() == "features":
            raise ValueError(f"--levers {','.join(names)} augments training images, and --mode features trains on the "
                             "frozen body's outputs for unaugmented images: add --mode finetune or --no-pretrained")

    def lever_names(self) -> list[str]:
        """The named levers (none for 'none' and for 'default' before effective() resolves it)."""
        return [] if self.levers in (DEFAULT_LEVERS, NO_LEVERS) else self.levers.split(",")

    def augmentation_levers(self) -> list[str]:
        """The published recipe's training-image augmentations asked for (the heartbeat recipe applies its own)."""
        return [] if self.recipe != "published" else [name for name in self.lever_names() if name in IMAGE_LEVERS]

    def input_band_norm(self) -> bool:
        """The published recipe's band_norm: every input image band-normalised (mel.band_normalised)."""
        return self.recipe == "published" and "band_norm" in self.lever_names()

    def _check_heartbeat_recipe(self) -> None:
        """The published recipe's flags that the heartbeat recipe has no use for are refused, not ignored."""
        unused = {"--weights": self.weights is not None, "--mode finetune": self.mode == "finetune",
                  f"--precision {self.precision}": self.precision != "fp32",
                  f"--balance {self.balance}": self.balance != "none",
                  f"--unfreeze-epochs {self.unfreeze_epochs}": self.unfreeze_epochs != 0,
                  f"--image-size {self.image_size}": self.image_size != STAGE1_IMAGE_SIZE}
        given = [flag for flag, is_given in unused.items() if is_given]
        if given:
            raise ValueError(f"{given[0]} does nothing with --recipe heartbeat (its network is trained from scratch "
                             "on the full-size spectrograms; class balance is its oversample lever): drop it")

    def training_mode(self) -> str:
        """The mode that runs: "features", "finetune", "scratch" (no pretrained body to freeze), or "heartbeat"."""
        if self.recipe == "heartbeat":
            return "heartbeat"
        return self.mode if self.pretrained else "scratch"

    def effective(self) -> TrainSettings:
        """These settings with the recipe's own values where none were given (what a run uses and records)."""
        if self.recipe == "published":
            return dataclasses.replace(self, epochs=self.epochs or PUBLISHED_EPOCHS,
                                       batch_size=self.batch_size or PUBLISHED_BATCH_SIZE)
        recipe = heartbeat_recipe.RECIPE
        chosen = ",".join(name for name in LEVERS if name in recipe.levers)
        levers = chosen if self.levers == DEFAULT_LEVERS else self.levers
        return dataclasses.replace(self, pretrained=False, epochs=self.epochs or recipe.epochs,
                                   batch_size=self.batch_size or recipe.batch_size, lr=self.lr or recipe.lr,
                                   levers=levers)


def settings_from_arguments(arguments: argparse.Namespace, command: str) -> TrainSettings:
    """TrainSettings from parsed arguments: each field's flag stores into the field's own name."""
    return TrainSettings(**{field.name: getattr(arguments, field.name) for field in dataclasses.fields(TrainSettings)
                            if command in field.metadata["commands"]})


def resolved(settings: TrainSettings, *, device: str, device_name: str, precision: str, lr: float,
             lr_suggestion: float) -> dict:
    """The settings that ran: the mode that ran, the device it ran on, the precision where it applies, the rate used.

    `precision` is the features pass's resolved precision ("fp32", "bf16", "fp16"); outside
    features mode there is no such pass and the setting is "n/a".
    """
    mode = settings.training_mode()
    return {**dataclasses.asdict(settings), "mode": mode, "device": device, "device_name": device_name,
            "precision": precision if mode == "features" else NOT_APPLICABLE, "lr": lr, "lr_suggestion": lr_suggestion,
            "levers": settings.levers if settings.recipe == "heartbeat" or settings.lever_names() else NOT_APPLICABLE}
