"""Fault injection for the reliability tests: ``fault_point`` kills the process (SIGKILL) at a
named window of a training run -- a step, each stage of a checkpoint write, the final weights,
the evaluation -- when ``ROBUSTFEAT_FAULT`` asks for it. Its own module because both the training
loop (``train/loop.py``) and the run directory's checkpoint writer (``rundir.py``) mark windows.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "ROBUSTFEAT_FAULT"


def fault_point(where: str, step: int | None = None, rank: int = 0) -> None:
    """Fault injection for the reliability tests.

    With ``ROBUSTFEAT_FAULT=<where>[:<step>][@<rank>]`` set, the process kills itself
    (SIGKILL: no cleanup, no finally) on reaching ``where`` (at ``step`` when given; on rank 0
    unless ``@rank``). Unset, this is one environment lookup.

    Points: ``step`` (forward of step N done, before its backward and optimizer step),
    ``checkpoint_weights`` (weights of checkpoint N written into step-N.tmp/, optimizer not),
    ``checkpoint_tmp`` (step-N.tmp/ complete, not renamed), ``checkpoint_renamed`` (renamed,
    state.json not updated), ``checkpoint_pointer`` (state.json updated, older checkpoints not
    yet deleted), ``final_weights`` (weights.safetensors written, evaluation not started),
    ``eval`` (evaluation done, results.json not written).
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, _, on_rank = spec.partition("@")
    name, _, at_step = target.partition(":")
    if name == where and at_step in ("", str(step)) and (on_rank or "0") == str(rank):
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
