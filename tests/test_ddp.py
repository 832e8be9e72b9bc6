"""train.py under DistributedDataParallel: 2 CPU processes (gloo), each with its own share of the
rollout tasks; after the PPO update the adapters must be identical on both ranks."""

import json
import os
import pathlib
import socket

import pytest
import torch
import torch.multiprocessing as mp

from lora import save_lora


def _worker(rank, world, port, retro_path, tmp):
    import test_train as T  # the spawned process imports the helpers afresh

    from train import train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    cfg = T.tiny_config(pathlib.Path(tmp), retro_path, tasks_per_env=8)
    retro = train(cfg, actor_llm=T.ScriptedActor())
    save_lora(retro.model, os.path.join(tmp, f"adapters.rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_adapters_stay_identical_across_ranks(tmp_path):
    import test_train as T

    retro_path = T.make_tiny_retrospector(tmp_path / "retro")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, retro_path, str(tmp_path)), nprocs=2, join=True)
    a0 = torch.load(tmp_path / "adapters.rank0.pt", weights_only=True)["state"]
    a1 = torch.load(tmp_path / "adapters.rank1.pt", weights_only=True)["state"]
    assert a0.keys() == a1.keys()
    assert all(torch.equal(a0[k], a1[k]) for k in a0)
    assert any(a0[k].abs().sum() > 0 for k in a0 if k.endswith("lora_B"))  # the update moved them
    # each rank ran its own share of the tasks; rank 0 alone wrote metrics and the checkpoint
    run = tmp_path / "run"
    r0 = [json.loads(x) for x in (run / "replay.jsonl").read_text().splitlines()]
    r1 = [json.loads(x) for x in (run / "replay.rank1.jsonl").read_text().splitlines()]
    assert r0 and r1 and {r["rank"] for r in r0} == {0} and {r["rank"] for r in r1} == {1}
    assert not {r["task"] for r in r0} & {r["task"] for r in r1}
    (row,) = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert row["n_reflections"] == len(r0) + len(r1) and row["hotpotqa/n_tasks"] == 8
    assert sorted(os.listdir(run)) == ["adapters.pt", "ckpt.pt", "episodes.jsonl", "episodes.rank1.jsonl",
                                       "metrics.jsonl", "replay.jsonl", "replay.rank1.jsonl"]  # fmt: skip


def test_metrics_are_reduced_on_the_model_device(monkeypatch):
    """NCCL reduces only CUDA tensors: the metrics tensor must live where the model does."""
    from infra import ddp

    seen = []

    def all_reduce(t):
        seen.append(t.device)
        t.mul_(2)  # two ranks with the same values

    monkeypatch.setattr(ddp, "world_size", lambda: 2)
    monkeypatch.setattr(ddp.dist, "all_reduce", all_reduce)
    device = torch.device("meta")  # a device other than the CPU, as cuda:0 would be on a GPU machine
    with pytest.raises(NotImplementedError):  # .tolist() of a meta tensor: the values are not needed
        ddp.mean_over_ranks({"kl": 0.5, "loss": 1.0}, device)
    assert seen == [device]
    assert ddp.mean_over_ranks({"kl": 0.5, "loss": 1.0}, "cpu") == {"kl": 0.5, "loss": 1.0}
