"""Audio to image: agreement with librosa, windows, formats, bad input, the settings check."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest

from conftest import clicks, sine, write_wav
from heartbeat import audio

SETTINGS = audio.SETTINGS


def test_mel_power_matches_librosa():
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    signal = (0.1 * rng.standard_normal(SETTINGS.window_samples) + sine(300, SETTINGS.window_seconds, 4000)[: SETTINGS.window_samples]).astype(np.float32)
    expected = librosa.feature.melspectrogram(
        y=signal, sr=SETTINGS.sample_rate, n_fft=SETTINGS.n_fft, win_length=SETTINGS.win_length,
        hop_length=SETTINGS.hop_length, n_mels=SETTINGS.n_mels, fmin=SETTINGS.fmin, fmax=SETTINGS.fmax,
    )
    ours = audio.mel_power(signal)
    assert ours.shape == expected.shape == (SETTINGS.n_mels, SETTINGS.image_size)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6 * expected.max())
    filters = librosa.filters.mel(sr=SETTINGS.sample_rate, n_fft=SETTINGS.n_fft, n_mels=SETTINGS.n_mels, fmin=SETTINGS.fmin, fmax=SETTINGS.fmax)
    np.testing.assert_allclose(audio.mel_filterbank(), filters, rtol=1e-5, atol=1e-8)
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
    (start_s, image), = audio.recording_images(signal)
    assert start_s == 0 and image.shape == (512, 512) and image.dtype == np.uint8
    row_energy = image[:, :200].astype(float).mean(axis=1)  # the first 2 s hold sound, the rest is padding
    loudest_row = int(row_energy.argmax())
    assert loudest_row > 400, "100 Hz should be near the bottom of the image"
    # padding after a 3 s recording is silence: the image is black there
    assert image[:, 320:].max() == 0


def test_long_recording_gives_several_windows_on_one_scale():
    loud = sine(100, 6.0, 4000, 0.8)
    quiet = sine(100, 6.0, 4000, 0.008)  # 40 dB lower
    images = audio.recording_images(np.concatenate([loud, quiet]))
    assert len(images) == 3
    # one dB reference per recording: the quiet part stays 40 dB (about 128 grey levels) darker
    assert images[0][1].max() == 255
    assert abs(int(images[-1][1].max()) - (255 - 40 * 255 / 80)) < 8


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_bit_depths_give_the_same_image(tmp_path, subtype):
    signal = clicks(4.0, 4000) * 0.9
    reference = audio.recording_images(audio.load_audio(write_wav(tmp_path / "ref.wav", signal, 4000, "FLOAT")))[0][1]
    image = audio.recording_images(audio.load_audio(write_wav(tmp_path / f"x_{subtype}.wav", signal, 4000, subtype)))[0][1]
    tolerance = 6 if subtype == "PCM_U8" else 1  # 8-bit audio is coarse: its noise floor shows
    assert np.abs(image.astype(int) - reference.astype(int)).mean() < tolerance


def test_stereo_44k_float_and_mono_4k_int16_agree(tmp_path):
    mono = clicks(4.0, 44100)
    stereo = np.stack([mono, mono], axis=1)
    high = audio.recording_images(audio.load_audio(write_wav(tmp_path / "stereo.wav", stereo, 44100, "FLOAT")))[0][1]
    low = audio.recording_images(audio.load_audio(write_wav(tmp_path / "mono.wav", audio.prepare_signal(mono, 44100), 4000)))[0][1]
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
        "spectrogram": lambda: audio.recording_images(clicks(4.0, 4000))[0][1],
        "random": lambda: rng.integers(0, 256, size=(37, 53), dtype=np.uint8),  # every byte difference wraps somewhere
        "one row": lambda: rng.integers(0, 256, size=(1, 9), dtype=np.uint8),
    }[kind]()
    with Image.open(io.BytesIO(audio.encode_png(image))) as png:
        png.load()
        assert png.mode == "L" and png.size == (image.shape[1], image.shape[0])
        np.testing.assert_array_equal(np.asarray(png), image)


def test_png_is_deterministic():
    signal = clicks(7.0, 4000) + 0.01 * np.random.default_rng(1).standard_normal(28000).astype(np.float32)
    first = [audio.encode_png(image) for _, image in audio.recording_images(signal)]
    second = [audio.encode_png(image) for _, image in audio.recording_images(signal.copy())]
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
