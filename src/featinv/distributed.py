"""Several processes on one job: one per GPU (NCCL), or gloo processes on CPU.

``featinv --processes N <verb>`` relaunches itself under ``accelerate launch`` with N processes; a
Snakemake rule passes its GPU count. Training splits every global batch across the processes (DDP,
effective batch size unchanged); extraction and sampling split the blocks of their row store
round-robin, each process writing whole zarr shards of its own, so the store is identical to a
single-process run.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch


def launched() -> bool:
    """Whether this process is one of several started by a launcher (accelerate, torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def free_port() -> int:
    """A TCP port on this machine that nothing listens on now (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(processes: int, argv: list[str]) -> list[str]:
    """The command that reruns ``featinv <argv>`` as ``processes`` processes on this machine, their
    rendezvous on a free port of its own: two such jobs on one node (Snakemake runs jobs side by side)
    would otherwise both take 29500, and the second fail with EADDRINUSE."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
            "--dynamo_backend", "no", "-m", "featinv", *argv]


@dataclass
class Processes:
    """This process's place among the job's processes."""

    rank: int = 0
    world: int = 1
    _state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()

    def share(self, items: list) -> list:
        """This process's part of ``items``: every ``world``-th item from its rank."""
        return items[self.rank :: self.world]


def processes(device: torch.device) -> Processes:
    """The process group of a launched job (initialised on first use), or a single process.
    On GPU each process takes the device of its local rank."""
    if not launched():
        return Processes()
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu")
    return Processes(state.process_index, state.num_processes, state)
