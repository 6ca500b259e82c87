"""One-time work of a machine's first run, done at install time (`make install`) so the first sweep does
not sit silent through it: DeepSpeed compiles its CPU communication op on first use (about a minute on 2
cores), and multilingual-e5-small is converted from its packaged form once (10-20 s).

    python -m trainers.prepare      # what `make install` runs; a no-op once done
"""

from __future__ import annotations

from pathlib import Path

from hybrid.cache import cache_dir
from hybrid.e5_offline import E5_SMALL_NAME, ensure_e5_small


def _cpu_comm_op() -> Path | None:
    """Where DeepSpeed keeps its compiled CPU communication op; None on a machine with CUDA (NCCL instead)."""
    import torch

    if torch.cuda.is_available():
        return None
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory("deepspeed_shm_comm", verbose=False))


def pending() -> list[str]:
    """The one-time steps this machine has not done yet, each as a line for the progress view."""
    lines = []
    op = _cpu_comm_op()
    if op is not None and not any(op.glob("*.so")):
        lines.append(
            "first run on this machine: DeepSpeed compiles its CPU communication op once, in the first "
            "trial (about a minute on 2 cores; `make install` does it ahead)"
        )
    if not (cache_dir() / "models" / E5_SMALL_NAME).is_dir():
        lines.append(f"first run on this machine: {E5_SMALL_NAME} is converted once from the packaged copy (10-20 s)")
    return lines


def main() -> None:
    if _cpu_comm_op() is not None:
        from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder

        ShareMemCommBuilder().load()
    print(f"ready: {ensure_e5_small()}")


if __name__ == "__main__":
    main()
