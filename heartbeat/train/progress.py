"""How training shows its progress: fastai's bars on a terminal, one plain line per epoch in a log.

fastai's bars (fastprogress) redraw themselves with carriage returns; on a terminal that is a
moving bar, but in a file (`make demo > log`) or a pipe it is hundreds of frames per epoch. So
when the stream is not a terminal the bars go, and each epoch is one line, written as it ends.
"""

from __future__ import annotations

import sys

from heartbeat.text import on_terminal



def show_training(learner, progress: bool) -> None:
    """Set how `learner` reports its fits: bars on a terminal, epoch lines elsewhere, nothing without progress."""
    if progress and on_terminal(sys.stdout):
        return  # fastai's ProgressCallback: its bars and its epoch table
    learner.remove_cbs([cb for cb in learner.cbs if type(cb).__name__ == "ProgressCallback"])
    if progress:  # without its ProgressCallback, fastai's Recorder gives each epoch's values to learner.logger
        learner.logger = lambda values: print(epoch_line(learner.recorder.metric_names, values), flush=True)
    else:
        learner.logger = lambda *args, **kwargs: None


def epoch_line(names, values) -> str:
    """'epoch 0  train_loss 1.0986  valid_loss 1.0986  error_rate 0.6667  time 00:01': one epoch of the Recorder."""
    return "  ".join(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
                     for name, value in zip(names, values))
