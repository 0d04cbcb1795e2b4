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


if __name__ == "__main__":
    main()
