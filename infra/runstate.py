"""Resumable training state: ckpt.pt holds the adapters, value head, optimizer, KL coefficient and
every RNG state, so that `python train.py --resume` after a crash continues as if never stopped."""

import os
import random

import numpy as np
import torch

from lora import save_lora


def rng_state(trainer) -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "torch": torch.get_rng_state(), "ppo": trainer.generator.get_state()}  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, trainer):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    trainer.generator.set_state(state["ppo"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic(save, path):
    """save(tmp) then rename: a reader, or a resume after a kill, sees the old file or the new one."""
    tmp = f"{path}.tmp{os.getpid()}"
    save(tmp)
    os.replace(tmp, path)


def save_checkpoint(out_dir: str, update: int, config: dict, model, trainer):
    """out_dir/ckpt.pt (everything --resume needs) and out_dir/adapters.pt (what eval.py loads)."""
    state = {"update": update, "config": config, "kl_coef": trainer.kl_ctl.value,
             "lora": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
             "value_head": trainer.value_head.state_dict(), "optimizer": trainer.optimizer.state_dict(),
             "rng": rng_state(trainer)}  # fmt: skip
    atomic(lambda p: torch.save(state, p), os.path.join(out_dir, "ckpt.pt"))
    atomic(lambda p: save_lora(model, p), os.path.join(out_dir, "adapters.pt"))


def load_checkpoint(path: str, model, trainer) -> int:
    """Restore adapters, value head, optimizer, KL coefficient and RNG states; returns the update."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state["lora"]):
        diff = sorted(set(params) ^ set(state["lora"]))[:5]
        raise ValueError(f"{path}: its adapters do not match the model's (lora_r / lora_targets changed?): "
                         f"{diff}")  # fmt: skip
    with torch.no_grad():
        for n, p in params.items():
            if p.shape != state["lora"][n].shape:
                raise ValueError(f"{path}: tensor {n!r} has shape {tuple(state['lora'][n].shape)}, "
                                 f"the model's is {tuple(p.shape)} (lora_r changed?)")  # fmt: skip
            p.copy_(state["lora"][n])
    trainer.value_head.load_state_dict(state["value_head"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.kl_ctl.value = state["kl_coef"]
    set_rng_state(state["rng"], trainer)
    return state["update"]
