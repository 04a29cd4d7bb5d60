"""TrainSettings: flags built from its fields, combinations that do nothing refused, the settings that ran, run-folder names."""

from __future__ import annotations

import dataclasses

import pytest

from heartbeat import cli, cli_study
from heartbeat.train import runfolder
from heartbeat.train.settings import NOT_APPLICABLE, TrainSettings, resolved

FIELDS = {field.name: field for field in dataclasses.fields(TrainSettings)}


def parse(*args):
    return cli.build_parser().parse_args([str(arg) for arg in args])


@pytest.mark.parametrize("command", ["train", "cv"])
def test_every_setting_has_its_flag_with_the_fields_default(command):
    extra = ["--out", "x"] if command == "cv" else []
    args = parse(command, *extra)
    expected = {name: field.default for name, field in FIELDS.items() if command in field.metadata["commands"]}
    assert {name: getattr(args, name) for name in expected} == expected
    assert cli_study._train_settings(args) == TrainSettings(**expected)
    assert ("name" in expected) == (command == "train")  # --name names one run folder: train only


def test_every_flag_reaches_its_setting():
    values = {"--split": "random", "--valid-fraction": "0.25", "--seed": "7", "--epochs": "2", "--bs": "3",
              "--image-size": "64", "--weights": "w.pth", "--offline": None, "--mode": "finetune", "--lr": "0.01",
              "--unfreeze-epochs": "1", "--balance": "weights", "--device": "cpu", "--label-map": "murmur=abnormal",
              "--name": "x"}
    args = parse("train", *[part for flag, value in values.items() for part in (flag, value) if part is not None])
    assert dataclasses.asdict(cli_study._train_settings(args)) == {
        "split": "random", "valid_fraction": 0.25, "seed": 7, "epochs": 2, "batch_size": 3, "image_size": 64,
        "pretrained": True, "weights": "w.pth", "offline": True, "mode": "finetune", "lr": 0.01, "unfreeze_epochs": 1,
        "balance": "weights", "precision": "fp32", "device": "cpu", "label_map": "murmur=abnormal", "name": "x",
        "recipe": "published", "levers": "default"}
    assert cli_study._train_settings(parse("train", "--no-pretrained")).pretrained is False


def test_help_shows_each_fields_help_and_choices(capsys):
    with pytest.raises(SystemExit):
        parse("train", "--help")
    text = " ".join(capsys.readouterr().out.split())
    for field in FIELDS.values():
        assert field.metadata["flag"] in text
        first_words = " ".join(field.metadata["help"].split("%")[0].split()[:4])
        assert first_words in text, field.name
        for choice in field.metadata["options"].get("choices", ()):
            assert choice in text
    assert "--bs BS" in text and "--no-pretrained | --weights PATH" in text


@pytest.mark.parametrize("flags, named", [
    (["--mode", "finetune", "--no-pretrained"], ["--mode finetune", "--no-pretrained"]),
    (["--precision", "bf16", "--no-pretrained"], ["--precision bf16", "--no-pretrained"]),
    (["--precision", "auto", "--no-pretrained"], ["--precision auto", "--no-pretrained"]),
    (["--precision", "bf16", "--mode", "finetune"], ["--precision bf16", "--mode finetune"]),
    (["--precision", "auto", "--mode", "finetune"], ["--precision auto", "--mode finetune"]),
    (["--levers", "specaugment"], ["--levers specaugment", "--mode features", "--mode finetune"]),
    (["--levers", "oversample", "--no-pretrained"], ["--levers oversample", "--balance oversample"]),
    (["--recipe", "heartbeat", "--weights", "w.pth"], ["--weights", "--recipe heartbeat"]),
    (["--recipe", "heartbeat", "--mode", "finetune"], ["--mode finetune", "--recipe heartbeat"]),
    (["--recipe", "heartbeat", "--balance", "weights"], ["--balance weights", "--recipe heartbeat"]),
    (["--recipe", "heartbeat", "--unfreeze-epochs", "1"], ["--unfreeze-epochs 1", "--recipe heartbeat"]),
    (["--recipe", "heartbeat", "--image-size", "64"], ["--image-size 64", "--recipe heartbeat"]),
])
@pytest.mark.parametrize("command", ["train", "cv"])
def test_flags_that_do_nothing_together_are_refused_before_anything_runs(command, flags, named, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main([command, "--spectrograms", str(tmp_path / "absent"), "--out", str(out), *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("heartbeat: error: ")
    assert all(name in lines[0] for name in named), lines[0]
    assert "manifest" not in lines[0]  # refused before the spectrograms were even looked at
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=named[0]):  # library callers get the same check
        cli_study._train_settings(parse(command, "--out", "x", *flags))


def test_combinations_that_do_something_are_accepted():
    for settings in [TrainSettings(pretrained=False), TrainSettings(mode="finetune", unfreeze_epochs=1),
                     TrainSettings(precision="auto"), TrainSettings(precision="bf16", unfreeze_epochs=2),
                     TrainSettings(pretrained=False, unfreeze_epochs=1),
                     TrainSettings(mode="finetune", levers="random_windows,specaugment,device_colour"),
                     TrainSettings(pretrained=False, levers="specaugment"), TrainSettings(levers="none"),
                     TrainSettings(levers="band_norm"), TrainSettings(pretrained=False, levers="band_norm,specaugment")]:
        settings.validate()


def test_stage1_image_size_is_the_audio_settings():
    from heartbeat.data import audio
    from heartbeat.train.settings import STAGE1_IMAGE_SIZE

    assert STAGE1_IMAGE_SIZE == audio.SETTINGS.image_size


def test_levers_flag_takes_known_names_in_one_order(capsys):
    assert parse("train", "--levers", "specaugment,random_windows,specaugment").levers == "random_windows,specaugment"
    assert parse("train", "--levers", "none").levers == "none"
    with pytest.raises(SystemExit):
        parse("train", "--levers", "specaugment,mixup")
    assert "unknown lever(s) 'mixup'" in capsys.readouterr().err


def test_effective_settings_fill_in_the_recipes_own_values():
    from heartbeat.train.recipes.heartbeat_recipe import LEVERS, RECIPE
    from heartbeat.train.settings import LEVERS as LEVER_NAMES

    assert tuple(LEVERS) == LEVER_NAMES  # the flag's names are the recipe's
    published = TrainSettings().effective()
    assert (published.epochs, published.batch_size, published.lr, published.pretrained) == (5, 4, None, True)
    heartbeat = TrainSettings(recipe="heartbeat").effective()
    assert (heartbeat.epochs, heartbeat.batch_size, heartbeat.lr) == (RECIPE.epochs, RECIPE.batch_size, RECIPE.lr)
    assert heartbeat.pretrained is False and heartbeat.training_mode() == "heartbeat"  # never downloads weights
    assert set(heartbeat.levers.split(",")) == set(RECIPE.levers)
    given = TrainSettings(recipe="heartbeat", epochs=2, batch_size=8, lr=0.01, levers="none").effective()
    assert (given.epochs, given.batch_size, given.lr, given.levers) == (2, 8, 0.01, "none")


def test_resolved_settings_say_what_ran():
    scratch = resolved(TrainSettings(pretrained=False, lr=None), device="cpu", device_name="A CPU", precision="bf16",
                       lr=0.004, lr_suggestion=0.004)
    assert (scratch["mode"], scratch["precision"], scratch["lr"], scratch["lr_suggestion"]) == ("scratch", NOT_APPLICABLE,
                                                                                                 0.004, 0.004)
    assert (scratch["device"], scratch["device_name"]) == ("cpu", "A CPU")
    finetune = resolved(TrainSettings(mode="finetune", lr=0.01), device="cuda:0", device_name="GPU", precision="fp16",
                        lr=0.01, lr_suggestion=0.002)
    assert (finetune["mode"], finetune["precision"], finetune["lr"], finetune["lr_suggestion"]) == ("finetune", "n/a",
                                                                                                     0.01, 0.002)
    features = resolved(TrainSettings(precision="auto"), device="cpu", device_name="A CPU", precision="fp32",
                        lr=0.003, lr_suggestion=0.003)
    assert (features["mode"], features["precision"]) == ("features", "fp32")  # "auto" resolved on a CPU without bf16
    assert set(features) == set(FIELDS) | {"device_name", "lr_suggestion"}
    assert features["levers"] == NOT_APPLICABLE  # the published recipe has none unless asked for
    augmented = resolved(TrainSettings(pretrained=False, levers="specaugment"), device="cpu", device_name="A CPU",
                         precision="fp32", lr=0.003, lr_suggestion=0.003)
    assert (augmented["mode"], augmented["levers"]) == ("scratch", "specaugment")
    heartbeat = resolved(TrainSettings(recipe="heartbeat", levers="band_norm"), device="cpu", device_name="A CPU",
                         precision="fp32", lr=0.003, lr_suggestion=None)
    assert (heartbeat["mode"], heartbeat["levers"], heartbeat["precision"]) == ("heartbeat", "band_norm", NOT_APPLICABLE)


def test_report_and_predict_read_the_names_training_writes():
    from heartbeat import predict
    from heartbeat.train import model
    from heartbeat.report import run_files as report

    assert (report.CONFIG_FILE, report.PREDICTIONS_FILE, report.EPOCH_LOG_FILE, report.METRICS_FILE, report.REPORT_FILE,
            report.LR_FIND_CSV, report.LR_FIND_PNG) == (
        runfolder.CONFIG_FILE, runfolder.PREDICTIONS_FILE, runfolder.EPOCHS_FILE, runfolder.METRICS_FILE,
        runfolder.REPORT_FILE, runfolder.LR_FIND_CSV, runfolder.LR_FIND_PNG)
    assert (predict.MODEL_FILE, predict.ONNX_FILE) == (model.MODEL_FILE, model.ONNX_FILE)
    assert model.CONFIG_FILE == runfolder.CONFIG_FILE
