"""How many worker processes or threads a command starts: never more than the CPUs it may use, nor than its tasks.

More workers than CPUs only take turns on them (and each process costs its own memory: `--jobs 1000`
forked 1,001 processes, about 4 GB, for 77 recordings); more than the tasks would sit idle. The flags
refuse absurd values at parse time (MAX_WORKERS) and the library caps what remains. Standard library
only: the command line's flags use it before anything heavy loads.
"""

from __future__ import annotations

import os

from heartbeat.train.settings import whole_number

MAX_WORKERS = 1024  # far above any CPU count this project meets; a value beyond it is a typo
CAP_HELP = f"never more than the CPUs this process may use, at most {MAX_WORKERS}"


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one, e.g. in a container)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(requested: int | None, tasks: int | None = None) -> int:
    """`requested` workers (None: one per CPU) capped at the CPUs available and at `tasks`; at least 1."""
    cpus = available_cpus()
    count = min(requested or cpus, cpus)
    if tasks is not None:
        count = min(count, tasks)
    return max(1, count)


def worker_number(text: str) -> int:
    """A --jobs or --threads value (argparse type): a whole number from 1 to MAX_WORKERS."""
    return whole_number(text, 1, MAX_WORKERS)
