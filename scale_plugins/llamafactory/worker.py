"""What every torchrun worker of ``scale-llamafactory train`` runs.

LLaMA-Factory's launcher re-executes its own ``launcher.py`` under torchrun; the patched launcher
(:func:`scale_plugins.llamafactory.patch.rewrite_torchrun_command`) runs ``-m scale_plugins.llamafactory.worker``
instead, with the same arguments. This does what ``launcher.py``'s ``__main__`` does, after the patches.
"""

from __future__ import annotations


def main() -> None:
    from .patch import apply_training_patches

    apply_training_patches()
    from llamafactory.train.tuner import run_exp

    run_exp()
    _exit_after_success()


def _exit_after_success() -> None:
    """Training finished and was saved: run the exit handlers (loggers, experiment trackers), then leave without the
    interpreter's destructor phase, where a gloo / DeepSpeed thread still alive can abort a finished rank
    ("terminate called without an active exception", seen once in ten ZeRO-3 + offload runs)."""
    import atexit
    import logging
    import os
    import sys

    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
