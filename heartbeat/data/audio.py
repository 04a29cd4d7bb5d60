"""Audio for the mel-spectrogram images: the one home of every audio setting, reading a recording, its windows.

The spectrogram stage and the predict command both turn sound into images with
`mel.iter_recording_images()`, and the settings that shape those images live in one frozen
`AudioSettings` object here. The settings are written beside every set of spectrograms and every
trained model; predict compares a model's saved settings with these and refuses to run on a
mismatch (`check_settings`), so training and prediction cannot drift apart. This module reads
and checks a recording (`load_audio`: bounded, link-safe, resampled) and places its windows
(`window_starts`); heartbeat.data.mel makes the images, heartbeat.data.png encodes them.

Only numpy, soundfile and soxr are imported here: predict must start in well under a second,
and librosa (with numba) takes seconds to import. Resampling uses soxr at librosa's default quality.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import stat
from dataclasses import dataclass

import numpy as np

# Bump when the meaning of an image changes without any setting changing (a bug fix in the
# maths below, say): it is part of the settings hash, so every image is redone.
IMAGE_ALGORITHM_VERSION = 2  # 2: mel product in float32


@dataclass(frozen=True)
class AudioSettings:
    # Dataset B is recorded at 4000 Hz. We keep it: the published recipe resampled to
    # 22.05 kHz, which adds no information and leaves the mel bands above 2 kHz empty.
    # Input at any other rate is resampled to this one.
    sample_rate: int = 4000
    # 64 ms analysis window (256 samples): short enough to separate S1 from S2 (about
    # 300 ms apart) and to place a premature beat, long enough to resolve 16 Hz.
    win_length: int = 256
    # The window is zero-padded to a 512-point FFT (7.8 Hz bins) so that every one of the
    # narrow low-frequency mel bands below gets at least one FFT bin (no empty filters).
    n_fft: int = 512
    # 10 ms hop: 512 frames = one image column per frame.
    hop_length: int = 40
    # 128 mel bands between 20 Hz (below it is handling noise and movement) and the Nyquist
    # frequency; heart sounds live at 20-200 Hz and murmurs reach 600-1000 Hz, so the dense
    # low end of the mel scale is where the detail is. Each band becomes image_size/n_mels
    # image rows (repeated, not interpolated: the pixels stay exact band values).
    n_mels: int = 128
    fmin: float = 20.0
    fmax: float = 2000.0
    # Decibels relative to the loudest mel bin of the whole recording (not of each window,
    # so a quiet window of a loud recording stays quiet). Stethoscope gain differs between
    # devices and positions; referencing the recording's peak removes it. The 80 dB below
    # the peak map linearly onto pixel values 0..255; anything quieter is 0.
    top_db: float = 80.0
    # Every image covers the same time span: 512 frames of 10 ms = 511 hops = 5.11 s, close
    # to Dataset B's median recording (4.9 s), so most recordings are one image and none is
    # squeezed. Shorter recordings are padded with silence at the end (the image shows
    # where the sound stops, rather than inventing beats by looping it); longer ones are
    # cut into ceil(duration / 5.11 s) windows spread evenly from start to end (slightly
    # overlapping), so all of the sound is seen and no window is padded.
    image_size: int = 512
    # Below half a second a window is over 90 % padding and holds less than one S1-S2
    # pair (Dataset B's shortest recording is 0.76 s): such input is refused.
    min_seconds: float = 0.5

    def __post_init__(self):
        if self.fmax > self.sample_rate / 2:
            raise ValueError(f"fmax {self.fmax} Hz is above the Nyquist frequency {self.sample_rate / 2} Hz")
        if self.image_size % self.n_mels:
            raise ValueError(f"image_size {self.image_size} is not a multiple of n_mels {self.n_mels}")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} is longer than n_fft {self.n_fft}")

    @property
    def window_samples(self) -> int:
        # With centred frames, n samples give 1 + n // hop frames: image_size frames exactly.
        return (self.image_size - 1) * self.hop_length

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "image_algorithm_version": IMAGE_ALGORITHM_VERSION}

    def digest(self) -> str:
        """Short hash of everything that shapes an image; stored with each image."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


SETTINGS = AudioSettings()

# A recording whose peak is at most one 16-bit quantisation step holds no sound.
SILENCE_PEAK = 1.0 / 32768


class AudioError(ValueError):
    """A recording that cannot be turned into images; the message says why."""


def check_settings(saved: dict, current: AudioSettings = SETTINGS) -> None:
    """Raise AudioError naming every setting where `saved` (a model's) differs from `current`."""
    expected = current.to_dict()
    differing = [
        f"{key}: model has {saved.get(key)!r}, this code has {value!r}"
        for key, value in expected.items()
        if saved.get(key) != value
    ]
    extra = sorted(set(saved) - set(expected))
    differing += [f"{key}: model has {saved[key]!r}, unknown to this code" for key in extra]
    if differing:
        raise AudioError("audio settings differ from the model's: " + "; ".join(differing))


# ---------------------------------------------------------------- loading

# Input limits, checked from a file's header before its samples are read. They are not
# AudioSettings fields: they decide which files are used, not how an image looks, so changing
# them must not change the settings' digest (that would redo every image and orphan every model).
#
# Heart sounds need at least 1 kHz: murmurs reach 600-1000 Hz, and a 1 kHz recording holds up
# to 500 Hz. PhysioNet 2016's 2 kHz recordings are well above it. Below it a file is not a
# heart-sound recording, and a 7 KB header declaring 1 Hz would become an hour of windows.
MIN_SAMPLE_RATE = 1000
# Ten minutes: far longer than any auscultation (Dataset B's longest is 28 s, PhysioNet
# 2016's about 2 min), and it bounds the time one file can take. --max-seconds raises it.
DEFAULT_MAX_SECONDS = 600.0
# Native values read at a time (frames x channels, 1 MB of float32): what reading costs in
# memory, whatever the file's length, rate or channel count. Dataset B's files are one block.
BLOCK_VALUES = 2**18

# What a path that is not a regular file is, for the message (symbolic links are followed first).
FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
              stat.S_IFSOCK: "a socket"}


def load_audio(path: str | os.PathLike, settings: AudioSettings = SETTINGS, *,
               max_seconds: float = DEFAULT_MAX_SECONDS, notes: list[str] | None = None) -> np.ndarray:
    """Read any file soundfile can read, mix to mono, resample to the model rate; float32.

    Raises AudioError for a missing file or one that is not a regular file (a FIFO, a device,
    a symbolic link loop), an unreadable one, a sample rate below MIN_SAMPLE_RATE or a
    duration above max_seconds (both from the header, before any sample is read), and for
    an empty, non-finite, silent or too-short recording. Samples are read in blocks and
    resampled as a stream, so memory follows the 4 kHz output, not the file's native rate.
    What is used but worth a warning (a truncated file) is appended to `notes`, one line each.
    """
    import soundfile

    descriptor = _open_regular_file(path)
    try:
        # Read through the descriptor, never the name again: what was checked is what is read
        # (and a name that is not valid UTF-8 needs no encoding).
        with soundfile.SoundFile(descriptor, closefd=False) as sound:
            check_header(sound.samplerate, sound.frames, max_seconds)
            signal = _read_mono(sound, settings, max_seconds)
            truncation = truncation_note(sound.extra_info)
            if truncation and notes is not None:
                notes.append(truncation)
            return signal
    except AudioError:
        raise
    except Exception as error:  # soundfile raises its own error types for every unreadable file
        raise AudioError(f"not a readable audio file ({_reason(error)})") from None
    finally:
        os.close(descriptor)


# libsndfile's log of a WAV whose data chunk declares more bytes than the file holds: "data : 32000 (should be 15978)".
# It already counts only the frames that are there (sound.frames), so memory never follows the declared size.
_TRUNCATED_DATA = re.compile(r"^data\s*:\s*(?P<declared>\d+)\s*\(should be (?P<held>\d+)\)", re.MULTILINE)


def truncation_note(log: str) -> str | None:
    """One line if libsndfile's header log says the data is cut short (a copy or download that stopped), else None."""
    match = _TRUNCATED_DATA.search(log)
    if match is None or int(match["held"]) >= int(match["declared"]):
        return None
    return (f"is truncated: its header declares {match['declared']} bytes of samples, the file holds "
            f"{match['held']}; the samples it holds are used")


def _open_regular_file(path: str | os.PathLike) -> int:
    """A read-only descriptor of `path` (symbolic links followed) if it is a regular file; else AudioError.

    Checked before opening, so a FIFO (whose opening blocks until someone writes) or a device
    is never opened; and checked again on the descriptor, in case the name changed in between.
    """
    try:
        _check_regular(os.stat(path).st_mode)
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise AudioError(_open_problem(path, error)) from None
    try:
        _check_regular(os.fstat(descriptor).st_mode)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _check_regular(mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise AudioError("is a directory, not an audio file")
    if not stat.S_ISREG(mode):
        raise AudioError(f"is not a regular file ({FILE_KINDS.get(stat.S_IFMT(mode), 'a special file')})")


def _open_problem(path: str | os.PathLike, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "is a symbolic link loop (too many levels of symbolic links)"
    if error.errno == errno.ENOENT:
        return "is a broken symbolic link (its target does not exist)" if os.path.islink(path) else "no such file"
    if error.errno == errno.EACCES:
        return "cannot be read (permission denied)"
    return f"cannot be opened ({error.strerror or type(error).__name__})"


def _reason(error: Exception) -> str:
    # soundfile's own wording, without its "Error opening <file descriptor>:" prefix.
    text = getattr(error, "error_string", None) or str(error).strip() or type(error).__name__
    return text.splitlines()[0].rstrip(".")


def check_header(native_rate: int, frames: int, max_seconds: float = DEFAULT_MAX_SECONDS) -> None:
    """Refuse, from what a header declares, a rate below MIN_SAMPLE_RATE or a length above max_seconds."""
    if native_rate < MIN_SAMPLE_RATE:
        raise AudioError(f"sample rate {native_rate} Hz is below the minimum {MIN_SAMPLE_RATE} Hz "
                         f"(heart sounds need at least 1 kHz)")
    seconds = frames / native_rate
    if seconds > max_seconds:
        raise AudioError(f"is {seconds:g} s long, longer than --max-seconds {max_seconds:g}")


def _read_mono(sound, settings: AudioSettings, max_seconds: float) -> np.ndarray:
    """Read an open file block by block: mix each to mono, check it, resample it as a stream."""
    native_rate = sound.samplerate
    resampler = _resampler(native_rate, settings)
    # A header can understate the length: stop reading once the limit is passed.
    max_frames = math.floor(max_seconds * native_rate)
    block_frames = max(1, BLOCK_VALUES // sound.channels)
    pieces, frames, peak = [], 0, 0.0
    while True:
        block = sound.read(block_frames, dtype="float32", always_2d=True)
        if not len(block):
            break
        frames += len(block)
        if frames > max_frames:
            raise AudioError(f"is longer than --max-seconds {max_seconds:g}")
        mono = block.mean(axis=1, dtype=np.float32)
        if not np.isfinite(mono).all():
            raise AudioError("contains NaN or infinite samples")
        peak = max(peak, float(np.abs(mono).max()))
        pieces.append(mono if resampler is None else resampler.resample_chunk(mono))
    _check_content(frames, peak, native_rate, settings)
    if resampler is None:
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    pieces.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    return _finite(np.concatenate(pieces))


def _resampler(native_rate: int, settings: AudioSettings):
    if native_rate == settings.sample_rate:
        return None
    import soxr

    # librosa.resample's default ("soxr_hq"), called directly to keep librosa out of predict.
    # The stream gives the same samples as soxr.resample on the whole signal (a test checks).
    return soxr.ResampleStream(native_rate, settings.sample_rate, 1, dtype="float32", quality="HQ")


def _check_content(frames: int, peak: float, native_rate: int, settings: AudioSettings) -> None:
    if frames == 0:
        raise AudioError("holds no samples (empty recording)")
    if peak <= SILENCE_PEAK:
        raise AudioError("is silent (no sample above one 16-bit step)")
    seconds = frames / native_rate
    if seconds < settings.min_seconds:
        raise AudioError(f"is {seconds:.2f} s long, shorter than the minimum {settings.min_seconds} s")


def _finite(signal: np.ndarray) -> np.ndarray:
    # Finite samples near float32's limit (about 3e38) can overflow in the resampler's filter.
    if not np.isfinite(signal).all():
        raise AudioError("has samples too large to resample (they overflow float32)")
    return signal


def prepare_signal(samples: np.ndarray, native_rate: int, settings: AudioSettings = SETTINGS, *,
                   max_seconds: float = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """load_audio for samples already in memory: shape (n,) or (n, channels) at native_rate."""
    samples = np.asarray(samples, dtype=np.float32)
    check_header(native_rate, len(samples), max_seconds)
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    if samples.size and not np.isfinite(samples).all():
        raise AudioError("contains NaN or infinite samples")
    _check_content(samples.size, float(np.abs(samples).max()) if samples.size else 0.0, native_rate, settings)
    if native_rate == settings.sample_rate:
        return samples
    import soxr

    return _finite(soxr.resample(samples, native_rate, settings.sample_rate, quality="HQ").astype(np.float32))


# ---------------------------------------------------------------- windows

def window_starts(n_samples: int, settings: AudioSettings = SETTINGS) -> list[int]:
    """Sample offsets of the windows that cover a recording (see AudioSettings.image_size)."""
    width = settings.window_samples
    if n_samples <= width:
        return [0]
    count = math.ceil(n_samples / width)
    span = n_samples - width
    return [round(index * span / (count - 1)) for index in range(count)]
