"""How long a worker waits for the others, and that it does not outlive its launcher.

Both matter for multi-node runs started by torchrun (docs/launch.md, "Failures"):

- `dist_timeout()`: `OSP_DIST_TIMEOUT` (seconds) bounds every collective of the process groups the package
  creates (the world group in `training/job.py` and `pipelines/parallel_run.py`, megatron's TP/PP/CP/DP groups in
  `parallel/layout.py`): a rank whose peer is dead or hung raises after that long instead of waiting torch's
  default (10 min NCCL/HCCL, 30 min gloo).
- `die_with_launcher()`: torchrun starts every worker in a session of its own, so when torchrun itself is
  SIGKILLed (or crashes) its workers live on as orphans, holding the devices and training with the other nodes as
  if nothing happened. Each worker asks the kernel (Linux `prctl(PR_SET_PDEATHSIG)`) for SIGKILL when its parent
  exits. Elsewhere (macOS, Windows) and outside torchrun it does nothing.

Why SIGKILL and not SIGTERM: SIGTERM asks a training worker to finish its step, agree with every rank to stop and
write a checkpoint. With its own torchrun gone the node is gone: nobody supervises or collects the worker, the other
nodes' collectives are failing (or, when the dead torchrun was node 0's, the rendezvous store went with it), so that
save can only wait for the collective timeout and fail. SIGKILL ends the orphan at once; the last complete
checkpoint (marked by `latest` only after every rank wrote its part) stays the resume point, and a relaunch repeats
the lost steps exactly. A graceful stop is unaffected: SIGTERM to torchrun (Ctrl-C, scancel) is passed on to the
workers, and torchrun waits for them before it exits.
"""
from __future__ import annotations

import ctypes
import datetime
import os
import signal
import sys
from typing import Optional

PR_SET_PDEATHSIG = 1   # <linux/prctl.h>
_ARMED = False


def dist_timeout() -> Optional[datetime.timedelta]:
    """`OSP_DIST_TIMEOUT` (seconds, > 0) as a timedelta, or None (torch's default) when unset or empty."""
    raw = os.environ.get("OSP_DIST_TIMEOUT", "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"OSP_DIST_TIMEOUT={raw!r}: expected a number of seconds") from None
    if not seconds > 0:
        raise ValueError(f"OSP_DIST_TIMEOUT={raw!r}: must be > 0 seconds")
    return datetime.timedelta(seconds=seconds)


def under_torchrun() -> bool:
    """This process is a worker of torchrun's elastic agent (it sets TORCHELASTIC_RUN_ID for each worker)."""
    return bool(os.environ.get("TORCHELASTIC_RUN_ID")) and "LOCAL_RANK" in os.environ


def die_with_launcher(sig: int = signal.SIGKILL) -> bool:
    """Under torchrun on Linux: have the kernel send `sig` to this process when its parent (torchrun) exits.

    Returns whether the request is in place. Called where a worker joins the distributed world (`osp train`,
    `osp sample`, `osp data extract`), before it can wait on any other rank. If torchrun died before the request
    took effect (the process was already re-parented), `sig` is sent at once. Limits: the kernel watches the
    thread that started the process (torchrun starts its workers from its main thread, which lives as long as
    torchrun does); the request is not inherited by this worker's own children (data loader workers end with
    their parent anyway); a torchrun that died in the moment before `os.getppid()` is first read here, while
    a sub-reaper adopted the worker, goes unnoticed.
    """
    global _ARMED
    if _ARMED:
        return True
    if not sys.platform.startswith("linux") or not under_torchrun():
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):   # no libc prctl (another libc): keep running without it
        return False
    _ARMED = True
    # the parent may have exited between fork and prctl: the kernel then never sends the signal
    if parent == 1 or os.getppid() != parent:
        print(f"rank {os.environ.get('RANK', '?')}: its torchrun exited before the worker started; stopping",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), sig)
    return True
