"""Audio to image: agreement with librosa, windows, formats, bad input, the settings check."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import clicks, sine, write_wav
from heartbeat.data import audio
from heartbeat.data import mel
from heartbeat.data import png

SETTINGS = audio.SETTINGS


def test_mel_power_matches_librosa():
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    signal = (0.1 * rng.standard_normal(SETTINGS.window_samples) + sine(300, SETTINGS.window_seconds, 4000)[: SETTINGS.window_samples]).astype(np.float32)
    expected = librosa.feature.melspectrogram(
        y=signal, sr=SETTINGS.sample_rate, n_fft=SETTINGS.n_fft, win_length=SETTINGS.win_length,
        hop_length=SETTINGS.hop_length, n_mels=SETTINGS.n_mels, fmin=SETTINGS.fmin, fmax=SETTINGS.fmax,
    )
    ours = mel.mel_power(signal)
    assert ours.shape == expected.shape == (SETTINGS.n_mels, SETTINGS.image_size)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6 * expected.max())
    filters = librosa.filters.mel(sr=SETTINGS.sample_rate, n_fft=SETTINGS.n_fft, n_mels=SETTINGS.n_mels, fmin=SETTINGS.fmin, fmax=SETTINGS.fmax)
    np.testing.assert_allclose(mel.mel_filterbank(), filters, rtol=1e-5, atol=1e-8)
    assert (filters.sum(axis=1) > 0).all(), "a mel band with no FFT bin: the settings leave empty filters"


def test_resampling_matches_librosa():
    librosa = pytest.importorskip("librosa")
    signal = sine(200, 2.0, 44100) + 0.2 * sine(1500, 2.0, 44100)
    ours = audio.prepare_signal(signal, 44100)
    expected = librosa.resample(signal, orig_sr=44100, target_sr=4000)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize("seconds", [0.6, 5.11, 5.2, 12.0, 27.9])
def test_windows_cover_the_recording(seconds):
    n = int(seconds * SETTINGS.sample_rate)
    starts = audio.window_starts(n)
    width = SETTINGS.window_samples
    assert starts[0] == 0
    assert len(starts) == max(1, -(-n // width))
    if n > width:
        assert starts[-1] + width == n  # the last window ends at the end: nothing cut off, nothing padded
        assert all(later - earlier <= width for earlier, later in zip(starts, starts[1:]))  # no gaps


def test_images_are_square_uint8_with_low_frequencies_at_the_bottom():
    signal = sine(100, 3.0, 4000) + sine(1200, 3.0, 4000, 0.05)
    (start_s, image), = mel.recording_images(signal)
    assert start_s == 0 and image.shape == (512, 512) and image.dtype == np.uint8
    row_energy = image[:, :200].astype(float).mean(axis=1)  # the first 2 s hold sound, the rest is padding
    loudest_row = int(row_energy.argmax())
    assert loudest_row > 400, "100 Hz should be near the bottom of the image"
    # padding after a 3 s recording is silence: the image is black there
    assert image[:, 320:].max() == 0


def test_long_recording_gives_several_windows_on_one_scale():
    loud = sine(100, 6.0, 4000, 0.8)
    quiet = sine(100, 6.0, 4000, 0.008)  # 40 dB lower
    images = mel.recording_images(np.concatenate([loud, quiet]))
    assert len(images) == 3
    # one dB reference per recording: the quiet part stays 40 dB (about 128 grey levels) darker
    assert images[0][1].max() == 255
    assert abs(int(images[-1][1].max()) - (255 - 40 * 255 / 80)) < 8


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_bit_depths_give_the_same_image(tmp_path, subtype):
    signal = clicks(4.0, 4000) * 0.9
    reference = mel.recording_images(audio.load_audio(write_wav(tmp_path / "ref.wav", signal, 4000, "FLOAT")))[0][1]
    image = mel.recording_images(audio.load_audio(write_wav(tmp_path / f"x_{subtype}.wav", signal, 4000, subtype)))[0][1]
    tolerance = 6 if subtype == "PCM_U8" else 1  # 8-bit audio is coarse: its noise floor shows
    assert np.abs(image.astype(int) - reference.astype(int)).mean() < tolerance


def test_stereo_44k_float_and_mono_4k_int16_agree(tmp_path):
    mono = clicks(4.0, 44100)
    stereo = np.stack([mono, mono], axis=1)
    high = mel.recording_images(audio.load_audio(write_wav(tmp_path / "stereo.wav", stereo, 44100, "FLOAT")))[0][1]
    low = mel.recording_images(audio.load_audio(write_wav(tmp_path / "mono.wav", audio.prepare_signal(mono, 44100), 4000)))[0][1]
    assert np.abs(high.astype(int) - low.astype(int)).mean() < 2


def test_flac_and_ogg_load(tmp_path):
    signal = clicks(3.0, 4000)
    for name, fmt in [("x.flac", "FLAC"), ("x.ogg", "OGG")]:
        path = tmp_path / name
        import soundfile

        soundfile.write(str(path), signal, 4000, format=fmt)
        assert audio.load_audio(path).size == pytest.approx(signal.size, abs=64)


@pytest.mark.parametrize("kind", ["spectrogram", "random", "one row"])
def test_png_decodes_to_the_same_pixels(kind):
    from PIL import Image

    rng = np.random.default_rng(2)
    image = {
        "spectrogram": lambda: mel.recording_images(clicks(4.0, 4000))[0][1],
        "random": lambda: rng.integers(0, 256, size=(37, 53), dtype=np.uint8),  # every byte difference wraps somewhere
        "one row": lambda: rng.integers(0, 256, size=(1, 9), dtype=np.uint8),
    }[kind]()
    with Image.open(io.BytesIO(png.encode_png(image))) as decoded:
        decoded.load()
        assert decoded.mode == "L" and decoded.size == (image.shape[1], image.shape[0])
        np.testing.assert_array_equal(np.asarray(decoded), image)


def test_png_is_deterministic():
    signal = clicks(7.0, 4000) + 0.01 * np.random.default_rng(1).standard_normal(28000).astype(np.float32)
    first = [png.encode_png(image) for _, image in mel.recording_images(signal)]
    second = [png.encode_png(image) for _, image in mel.recording_images(signal.copy())]
    assert first == second


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: write_wav(d / "empty.wav", np.zeros(0, np.float32), 4000), "empty"),
        (lambda d: write_wav(d / "nan.wav", np.full(8000, np.nan, np.float32), 4000, "FLOAT"), "NaN"),
        (lambda d: write_wav(d / "inf.wav", np.r_[sine(50, 1, 4000), np.inf].astype(np.float32), 4000, "FLOAT"), "infinite"),
        (lambda d: write_wav(d / "silent.wav", np.zeros(8000, np.float32), 4000), "silent"),
        (lambda d: write_wav(d / "short.wav", sine(50, 0.3, 4000), 4000), "shorter than the minimum"),
        (lambda d: (d / "text.wav").write_text("not audio at all") and d / "text.wav", "not a readable audio file"),
        (lambda d: d, "is a directory"),
        (lambda d: d / "missing.wav", "no such file"),
    ],
)
def test_bad_audio_is_refused_with_a_reason(tmp_path, make, message):
    with pytest.raises(audio.AudioError, match=message):
        audio.load_audio(make(tmp_path))


def test_settings_check_names_the_differing_setting():
    saved = audio.SETTINGS.to_dict()
    audio.check_settings(saved)  # identical: no error
    changed = dataclasses.replace(audio.SETTINGS, hop_length=64).to_dict()
    with pytest.raises(audio.AudioError, match="hop_length: model has 64"):
        audio.check_settings(changed)
    assert dataclasses.replace(audio.SETTINGS, top_db=60).digest() != audio.SETTINGS.digest()


def test_settings_refuse_impossible_values():
    with pytest.raises(ValueError, match="Nyquist"):
        audio.AudioSettings(fmax=3000)
    with pytest.raises(ValueError, match="multiple"):
        audio.AudioSettings(n_mels=100)


# ---------------------------------------------------------------- the README's settings, as literal numbers

def test_settings_are_the_readme_table():
    # Literal values on purpose: every other test takes its expectations from audio.SETTINGS, so
    # a changed setting (hop 40 -> 41, say) would pass them all. Changing one is a new model format.
    settings = audio.SETTINGS
    assert (settings.sample_rate, settings.win_length, settings.n_fft, settings.hop_length) == (4000, 256, 512, 40)
    assert (settings.n_mels, settings.fmin, settings.fmax, settings.top_db) == (128, 20.0, 2000.0, 80.0)
    assert (settings.image_size, settings.window_samples, settings.window_seconds) == (512, 20440, 5.11)
    assert settings.min_seconds == 0.5
    assert (audio.MIN_SAMPLE_RATE, audio.DEFAULT_MAX_SECONDS) == (1000, 600.0)


def test_a_12_s_recording_gives_the_windows_and_columns_the_table_says():
    # 12 s at 4 kHz = 48000 samples; a window is 511 hops of 40 samples = 20440 (5.11 s), so
    # ceil(48000 / 20440) = 3 windows, spread evenly: starts 0, (48000 - 20440) / 2 = 13780 and
    # 27560 samples. One image column per 40-sample hop: a burst at 4.00-4.10 s lies in
    # columns 400-410 of the first window.
    signal = np.zeros(48000, np.float32)
    signal[16000:16400] = sine(400, 0.1, 4000, 0.8)
    images = mel.recording_images(signal)
    assert [start for start, _ in images] == [0.0, 13780 / 4000, 27560 / 4000] == [0.0, 3.445, 6.89]
    assert all(image.shape == (512, 512) and image.dtype == np.uint8 for _, image in images)
    loudest_column = int(images[0][1].astype(int).sum(axis=0).argmax())
    assert 400 <= loudest_column <= 410


# ---------------------------------------------------------------- input limits and special files

def test_the_sample_rate_floor_is_1_khz(tmp_path):
    physionet = write_wav(tmp_path / "physionet.wav", clicks(3.0, 2000), 2000)
    assert audio.load_audio(physionet).size == 3 * 4000
    too_low = write_wav(tmp_path / "low.wav", clicks(3.0, 999), 999)
    with pytest.raises(audio.AudioError, match="sample rate 999 Hz is below the minimum 1000 Hz"):
        audio.load_audio(too_low)
    with pytest.raises(audio.AudioError, match="sample rate 999 Hz"):
        audio.prepare_signal(clicks(3.0, 999), 999)


def test_a_recording_longer_than_max_seconds_is_refused_before_its_samples_are_read(tmp_path, monkeypatch):
    import soundfile

    path = write_wav(tmp_path / "long.wav", clicks(700.0, 1000), 1000)  # 700 s in 1.4 MB
    assert audio.load_audio(path, max_seconds=700).size == 700 * 4000

    def no_reading(*args, **kwargs):
        raise AssertionError("samples were read")

    monkeypatch.setattr(soundfile.SoundFile, "read", no_reading)
    with pytest.raises(audio.AudioError, match=r"^is 700 s long, longer than --max-seconds 600$"):
        audio.load_audio(path)
    with pytest.raises(audio.AudioError, match=r"longer than --max-seconds 12.5$"):
        audio.load_audio(path, max_seconds=12.5)


def test_reading_takes_memory_of_the_4_khz_output_not_of_the_native_file(tmp_path):
    import tracemalloc

    seconds, rate = 30, 44100
    sound = clicks(seconds, rate)
    path = write_wav(tmp_path / "stereo-44k.wav", np.stack([sound, sound], axis=1), rate, "FLOAT")  # 10.6 MB
    tracemalloc.start()
    try:
        signal = audio.load_audio(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The output (0.5 MB) a few times over and a few blocks; reading it whole would be 10.6 MB at once.
    assert peak < 4 * signal.nbytes + 3 * 4 * audio.BLOCK_VALUES
    assert signal.size == seconds * 4000


def test_blocks_and_streamed_resampling_give_the_samples_of_the_whole_file_at_once(tmp_path):
    import soundfile

    rate = 44100  # 10 s of stereo: several blocks
    sound = clicks(10.0, rate) + sine(700, 10.0, rate, 0.1)
    path = write_wav(tmp_path / "stereo-44k.wav", np.stack([sound, 0.3 * sound], axis=1), rate, "PCM_24")
    assert 10 * rate * 2 > 2 * audio.BLOCK_VALUES
    whole, native_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    np.testing.assert_array_equal(audio.load_audio(path), audio.prepare_signal(whole, native_rate))


@pytest.mark.timeout(30)  # the old code opened a FIFO and waited for a writer forever
def test_only_regular_files_are_opened(tmp_path):
    good = write_wav(tmp_path / "good.wav", clicks(2.0, 4000), 4000)
    os.mkfifo(tmp_path / "fifo.wav")
    (tmp_path / "loop.wav").symlink_to("loop.wav")
    (tmp_path / "broken.wav").symlink_to("gone.wav")
    (tmp_path / "link.wav").symlink_to("good.wav")
    refused = {
        tmp_path / "fifo.wav": "is not a regular file (a FIFO)",
        tmp_path / "loop.wav": "is a symbolic link loop",
        tmp_path / "broken.wav": "is a broken symbolic link",
        Path("/dev/null"): "is not a regular file (a character device)",
    }
    for path, message in refused.items():
        with pytest.raises(audio.AudioError, match=re.escape(message)):
            audio.load_audio(path)
    np.testing.assert_array_equal(audio.load_audio(tmp_path / "link.wav"), audio.load_audio(good))


def test_a_file_name_that_is_not_utf8_is_read(tmp_path):
    good = write_wav(tmp_path / "good.wav", clicks(2.0, 4000), 4000)
    expected = audio.load_audio(good)
    name = os.path.join(os.fsencode(tmp_path), b"rec\xff.wav")
    os.rename(good, name)
    np.testing.assert_array_equal(audio.load_audio(name), expected)
    np.testing.assert_array_equal(audio.load_audio(os.fsdecode(name)), expected)  # as argv gives it


# ---------------------------------------------------------------- level and blank images

def test_a_huge_float_signal_gives_the_images_of_the_same_sound_at_ordinary_level():
    ordinary = clicks(7.0, 4000) + 0.01 * np.random.default_rng(1).standard_normal(28000).astype(np.float32)
    ordinary *= np.float32(0.9) / np.abs(ordinary).max()  # peak in [0.5, 1): 2**-60 times `huge`, exactly
    huge = ordinary * np.float32(2.0**60)  # about 1e18: finite in float32, but its power spectrum was not
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warnings
        huge_images = mel.recording_images(huge)
    ordinary_images = mel.recording_images(ordinary)
    assert len(huge_images) == len(ordinary_images) == 2
    for (start, image), (ordinary_start, ordinary_image) in zip(huge_images, ordinary_images):
        assert start == ordinary_start
        np.testing.assert_array_equal(image, ordinary_image)
    assert huge_images[0][1].max() == 255 and huge_images[0][1].min() < 128  # not blank, not flat


def test_a_signal_without_sound_in_the_mel_bands_is_refused_rather_than_imaged():
    # 1e-9: at or below the power floor everywhere, every pixel came out the same (all white).
    with pytest.raises(audio.AudioError, match="no sound between 20 and 2000 Hz"):
        mel.recording_images(sine(100, 3.0, 4000, 1e-9))


# ---------------------------------------------------------------- windows made lazily, in bounded memory

def test_images_come_one_at_a_time_in_memory_that_does_not_grow_with_duration(monkeypatch):
    import tracemalloc

    def peak_while_consuming(signal) -> int:
        tracemalloc.start()
        try:
            for _ in mel.iter_recording_images(signal):
                pass  # each image dropped once seen, as predict and stage 1 do
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    monkeypatch.setattr(mel, "KEPT_WINDOWS", 4)  # past it, mel powers are computed again, not kept
    window = SETTINGS.window_samples
    sound = clicks(24 * window / 4000, 4000)
    eight, twenty_four = peak_while_consuming(sound[: 8 * window]), peak_while_consuming(sound)
    assert twenty_four < eight + 2**20  # holding 16 more windows would be 8 MB more (512 KB each)


def test_computing_the_mel_powers_again_gives_the_same_images(monkeypatch):
    signal = clicks(30.0, 4000) + 0.01 * np.random.default_rng(3).standard_normal(120000).astype(np.float32)
    kept = mel.recording_images(signal)
    monkeypatch.setattr(mel, "KEPT_WINDOWS", 2)
    computed_again = mel.recording_images(signal)
    assert len(kept) == len(computed_again) == 6
    for (start, image), (start_again, image_again) in zip(kept, computed_again):
        assert start == start_again
        np.testing.assert_array_equal(image, image_again)


def test_band_norm_removes_a_fixed_level_per_band_and_keeps_silence():
    rng = np.random.default_rng(0)
    image = rng.integers(60, 180, (512, 512)).astype(np.uint8)
    image[:, 400:] = 0  # stage 1's padding after a short recording
    offsets = rng.integers(-40, 40, (512, 1))  # another device's response: a fixed dB offset per band
    coloured = image.astype(np.int16)
    coloured[:, :400] += offsets
    normalised = mel.band_normalised(image)
    assert normalised.dtype == np.uint8 and normalised.shape == image.shape
    assert np.abs(normalised.astype(int) - mel.band_normalised(coloured.astype(np.uint8)).astype(int)).max() <= 1
    assert (normalised[:, 400:] == 0).all() and (normalised[:, :400] > 0).all()
    assert np.abs(normalised[:, :400].mean(axis=1) - mel.BAND_NORM_CENTRE).max() < 1  # each band at its own mean
    silent = np.zeros((512, 512), np.uint8)
    assert (mel.band_normalised(silent) == 0).all()


def test_model_input_band_norm_comes_before_the_resize_and_is_off_by_default():
    image = np.random.default_rng(1).integers(1, 256, (512, 512)).astype(np.uint8)
    assert mel.model_input(image, 512) is image
    assert np.array_equal(mel.model_input(image, 64, band_norm=True),
                          mel.model_input(mel.band_normalised(image), 64))
    assert not np.array_equal(mel.model_input(image, 64, band_norm=True), mel.model_input(image, 64))
