"""Resumable runs. Training: ckpt.pt holds the adapters, value head, optimizer, KL coefficient and every
RNG state, so that `python train.py --resume` after a crash continues as if never stopped. Evaluation:
EvalProgress, the finished blocks of `python eval.py --resume`."""

import json
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


class EvalProgress:
    """What `eval.py --resume` needs: out_dir/eval_progress.jsonl holds a header (the config and the
    adapters' hash), then one line per finished (env, seed, method) block of the evaluation, with its
    counts and the size of the episode log (eval_episodes.jsonl) after it; method "shared" is trial 0.

    A fresh evaluation starts both files empty (it refuses to when an unfinished one is there and
    --resume is not given). A resumed one keeps the finished blocks, drops a torn last line, and cuts
    the episode log back to the end of the last finished block: the episodes of a block cut short are
    run again, so that every trial is logged once and the results equal an uninterrupted run's."""

    def __init__(self, out_dir: str, header: dict, resume: bool, ignore=()):
        self.path = os.path.join(out_dir, "eval_progress.jsonl")
        self.log_path = os.path.join(out_dir, "eval_episodes.jsonl")
        self.done = {}  # (env, seed, method) -> its record
        records = self._records() if os.path.exists(self.path) else []
        if resume and records:
            self._load(records, header, ignore)
            return
        if resume:
            print(f"--resume: no {self.path} yet, starting the evaluation from the beginning")
        elif records and not records[-1].get("finished"):
            raise SystemExit(f"error: {self.path}: an evaluation was interrupted here; pass --resume to "
                             f"continue it, or delete it to start over")  # fmt: skip
        open(self.log_path, "w").close()
        with open(self.path, "w") as f:
            f.write(json.dumps(header) + "\n")

    def _records(self) -> list[dict]:
        """The file's JSON lines; a torn last line (a kill mid-write: no newline yet) is cut off the file."""
        with open(self.path, "rb") as f:
            data = f.read()
        *lines, torn = data.split(b"\n")
        records = []
        for n, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except ValueError:
                raise SystemExit(f"error: {self.path}, line {n}: not JSON; delete it to start over") from None
        if torn:
            with open(self.path, "r+b") as f:
                f.truncate(len(data) - len(torn))
        return records

    def _load(self, records: list[dict], header: dict, ignore):
        header_was, *blocks = records
        was, now = header_was.get("config", {}), header.get("config", {})
        diff = [k for k in sorted(set(was) | set(now)) if k not in ignore and was.get(k) != now.get(k)]
        diff = [f"{k} (was {was.get(k)!r}, now {now.get(k)!r})" for k in diff]
        if header_was.get("adapters_sha256") != header.get("adapters_sha256"):
            diff.append("adapters.pt (its contents changed since)")
        if "tasks" in header_was and header_was["tasks"] != header.get("tasks"):  # older files lack it
            diff.append(f"the tasks (was {header_was['tasks']}, now {header.get('tasks')})")
        if diff:
            raise SystemExit(f"error: --resume: the interrupted evaluation in {self.path} ran with another "
                             f"setting: {', '.join(diff)}. Resume with the same config, or delete the file "
                             f"to start over")  # fmt: skip
        blocks = [b for b in blocks if not b.get("finished")]
        self.done = {(b["env"], b["seed"], b["method"]): b for b in blocks}
        size = blocks[-1]["log_bytes"] if blocks else 0
        have = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        if have < size:
            raise SystemExit(f"error: --resume: {self.log_path} holds {have} bytes, {self.path} recorded "
                             f"{size}: the log was changed; delete both files to start over")  # fmt: skip
        with open(self.log_path, "ab") as f:
            f.truncate(size)
        print(f"resumed the evaluation in {self.path}: {len(blocks)} blocks done")

    def _append(self, record: dict):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def finish(self, env: str, seed: int, method: str, **counts) -> dict:
        """Record a block as finished, once its episodes are all in the log."""
        size = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        rec = {"env": env, "seed": seed, "method": method, **counts, "log_bytes": size}
        self._append(rec)
        self.done[(env, seed, method)] = rec
        return rec

    def logged(self, env: str, seed: int, method: str, tasks) -> list[str]:
        """The log lines (Trajectory JSON) of a finished one-trial block ("shared"), in `tasks` order."""
        by_task = {}
        with open(self.log_path, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                if (d.get("env"), d.get("seed"), d.get("method")) == (env, seed, method):
                    by_task[d["task"]] = line
        missing = [t for t in tasks if t not in by_task]
        if missing:
            raise SystemExit(f"error: --resume: {self.log_path} lacks tasks {missing[:5]} of {env}, seed "
                             f"{seed}, {method}: delete it and {self.path} to start over")  # fmt: skip
        return [by_task[t] for t in tasks]

    def close(self):
        """The evaluation is complete: a later eval.py without --resume may start over."""
        self._append({"finished": True})
