"""`python -m asrlib.train`: the `asr train` command as a module, for torchrun.

    torchrun --nproc-per-node 2 -m asrlib.train --preset small --dataset ljspeech

Each process trains on its share of every global batch (DDP); rank 0 writes the run folder. The
per-process batch budget is `training.max_batch_seconds`, so the global batch grows with the
number of processes. NCCL is used on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import sys

from asrlib.cli import main
from asrlib.training.distributed import shutdown_distributed

if __name__ == "__main__":
    try:
        code = main(["train", *sys.argv[1:]])
    finally:
        shutdown_distributed()
    sys.exit(code)
