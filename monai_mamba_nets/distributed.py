"""Setting up and tearing down the process group of the bundles' multi-GPU configs (processes started by torchrun).

With gloo (CPU processes), a process group still alive when Python shuts down can abort the process: a gloo worker
thread that releases a finished collective then asks for the GIL, and CPython ends the thread from inside a C++
destructor ("terminate called without an active exception", SIGABRT). So the configs' ``finalize`` must free the
group, and two things in PyTorch 2.13 keep it alive past ``torch.distributed.destroy_process_group()``: the
functions of ``torch.distributed.nn.functional`` and a ``DistributedDataParallel`` wrapper. The two functions below
deal with both.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional  # noqa: F401  (see init_process_group)
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["init_process_group", "destroy_process_group"]


def init_process_group() -> None:
    """Join the default process group that torchrun describes in the environment: NCCL where CUDA is available,
    else gloo. Nothing happens where it exists already.

    Import this module before the group exists, as the bundles' configs do: it imports
    ``torch.distributed.nn.functional``, whose functions take ``group.WORLD`` as a default argument. Imported while
    the default group exists (``DistributedDataParallel`` imports it where nothing has before), they would hold that
    group for the rest of the process.
    """
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def destroy_process_group(*networks: nn.Module) -> None:
    """Wait for every rank, make the DDP wrappers among ``networks`` let go of their process group, and destroy
    all groups, so that their worker threads end now, not while Python shuts down. Nothing happens without a group.

    Args:
        networks: the networks of the workflow; ``DistributedDataParallel`` wrappers among them cannot run again.
    """
    if not dist.is_initialized():
        return
    dist.barrier()  # no rank tears its group down while another still waits on it
    for network in networks:
        if isinstance(network, DistributedDataParallel):
            # its reducer, its logger and the wrapper itself hold the group; DDP has no call to release it
            network.reducer = network.logger = network.process_group = None
    dist.destroy_process_group()
