"""Stage 1's workers: each recording's images made in a pool of processes that die with the parent.

A worker reads one recording, writes its PNGs atomically and returns its manifest rows; a
recording that cannot be read is reported and the others go on, while an image that cannot be
written (OUT is full, say) ends the run. Workers own one core each (no BLAS threads) and keep
freed memory for reuse.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from heartbeat.data import audio
from heartbeat.data import mel
from heartbeat.data import png
from heartbeat.data.manifest import Item, image_name, recording_columns, source_signature
from heartbeat.fileio import atomic_write_bytes
from heartbeat.workers import worker_count
from heartbeat.text import progress_bar

class ImageWriteError(Exception):
    """An image could not be written into OUT (a full disk, say): a problem of OUT, not of the recording."""


def _make_images(recording: Item, out_dir: Path, settings: audio.AudioSettings, max_seconds: float,
                 notes: list[str]) -> list[dict]:
    """Worker: turn one recording into PNGs written atomically; return its manifest rows, warnings into `notes`.

    ImageWriteError if OUT cannot take an image: that stops the run, where a bad recording does not.
    """
    import soundfile

    size, mtime_ns = source_signature(recording.path)
    signal = audio.load_audio(recording.path, settings, max_seconds=max_seconds, notes=notes)
    native_rate = soundfile.info(str(recording.path)).samplerate
    duration_s = signal.size / settings.sample_rate
    rows = []
    for window, (start_s, image) in enumerate(mel.iter_recording_images(signal, settings)):
        name = image_name(recording.image_stem, window)
        _write_image(out_dir / name, png.encode_png(image))
        rows.append(
            {
                "image": name,
                "recording": recording.recording,
                **recording_columns(recording),
                "window": str(window),
                "start_s": f"{start_s:.4f}",
                "duration_s": f"{duration_s:.4f}",
                "native_sample_rate": str(native_rate),
                "source_size": size,
                "source_mtime_ns": mtime_ns,
                "settings_hash": settings.digest(),
            }
        )
    return rows


def _write_image(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        raise ImageWriteError(f"{path.parent.parent}: cannot be written ({error.strerror or error}); "
                              "the earlier manifest is kept") from None


def _worker(task):
    """(recording, its rows or None, why it failed or None, its warnings); ImageWriteError passes: it ends the run."""
    recording, out_dir, settings, max_seconds = task
    notes: list[str] = []
    try:
        return recording, _make_images(recording, out_dir, settings, max_seconds, notes), None, notes
    except ImageWriteError:
        raise
    except audio.AudioError as error:
        return recording, None, str(error), notes
    except Exception as error:  # one bad file must not stop the batch: report it and go on
        return recording, None, f"{type(error).__name__}: {error}", notes


def _worker_setup(parent_pid: int):
    _die_with_parent(parent_pid)
    # Each worker process owns one core: a multi-threaded BLAS inside it (the mel matrix
    # product) would fight the other workers for the cores and halve the throughput.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    _reuse_freed_memory()


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this worker when its parent dies, however it dies (Linux; no-op elsewhere).

    A parent killed with SIGKILL cannot shut its pool down: without this its workers would
    finish their queued recordings and then wait for more forever.
    """
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1  # from linux/prctl.h
    try:
        armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    except (OSError, AttributeError):
        return  # no prctl: not Linux
    if armed and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the signal was armed: nobody else will stop this worker


def _reuse_freed_memory():
    """Make glibc keep freed memory for reuse instead of returning it to the kernel.

    Every window allocates a few arrays of 1-2 MB. By default glibc maps each one fresh and
    unmaps it on free, so every page is faulted in again: that kernel time was about a third
    of the stage. Measured: 5.6 s -> 3.6 s for all 656 recordings on 2 cores. No-op elsewhere.
    """
    import ctypes
    import ctypes.util

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 256 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 512 * 2**20)
    except (OSError, AttributeError):
        pass  # not glibc: keep its defaults


def run_parallel(recordings, out_dir, settings, max_seconds, jobs, progress):
    import multiprocessing

    tasks = [(recording, out_dir, settings, max_seconds) for recording in recordings]
    jobs = worker_count(jobs, len(tasks))
    bar = progress_bar(len(tasks), "spectrograms", "rec", progress)
    try:
        if jobs == 1 or len(tasks) == 1:
            from threadpoolctl import threadpool_limits

            _reuse_freed_memory()
            with threadpool_limits(1):  # one job means one core; BLAS threads would only spin
                for task in tasks:
                    yield _worker(task)
                    bar.update()
        else:
            # fork: the workers are this process's children (what _die_with_parent checks), started at once
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_setup,
                                     initargs=(os.getpid(),)) as pool:
                # chunks amortise inter-process traffic; small enough to keep the bar moving
                chunksize = max(1, min(16, len(tasks) // (jobs * 8)))
                try:
                    for result in pool.map(_worker, tasks, chunksize=chunksize):
                        yield result
                        bar.update()
                except BaseException:  # OUT cannot be written, or the run was stopped: queued work is pointless
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()
