"""torchrun support: process group set-up, gathering rollouts, sharding them for the DDP update.

Each rank runs its share of the rollout tasks; the PPO update runs under DistributedDataParallel, so
the adapters' and value head's gradients are averaged and the adapters stay identical on every rank.
With WORLD_SIZE unset (a plain `python train.py`) every function here is a no-op.
"""

import os

import torch
import torch.distributed as dist


def init(device: str):
    """(rank, world, device); torchrun sets WORLD_SIZE > 1: gloo on CPU, nccl on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), world, device


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_gather(obj, world: int) -> list:
    """Every rank's `obj`, in rank order."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(metrics: dict, device) -> dict:
    """Each float metric averaged over ranks. The tensor lives on `device`: NCCL reduces only CUDA
    tensors, gloo CPU ones."""
    world = world_size()
    if world == 1:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / world).tolist(), strict=True))


def shard_for_rank(records: list, rank: int, world: int) -> list:
    """This rank's equal share of all ranks' records. DDP needs the same number of backward passes on
    every rank, so the list is padded to a multiple of `world` by repeating its first records (at most
    world - 1 reflections count twice in an update)."""
    if world == 1:
        return records
    pad = (-len(records)) % world
    records = records + [records[j % len(records)] for j in range(pad)]
    return records[rank::world]


def sum_counts(parts: list[dict]) -> dict:
    """{name: counts} dicts of all ranks summed element-wise."""
    total = {}
    for part in parts:
        for name, c in part.items():
            total[name] = [a + b for a, b in zip(total.get(name, [0] * len(c)), c, strict=True)]
    return total
