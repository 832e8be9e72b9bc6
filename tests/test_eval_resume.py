"""eval.py --resume: SIGKILLed twice at different points (and once more with torn last lines), it ends
with the eval.json, eval.svg and episode log of an uninterrupted run, for the scripted actor and for a
local actor at temperature 0; a resume with another setting, and a fresh start over an interrupted
evaluation, are refused with what to do."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_train import ScriptedActor, make_tiny_retrospector, tiny_config

import eval as ev
from train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("eval.json", "eval.svg", "eval_episodes.jsonl", "eval_progress.jsonl")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(out_dir holding adapters.pt after one PPO update, the tiny retrospector's path)."""
    tmp = tmp_path_factory.mktemp("resume")
    retro_path = make_tiny_retrospector(tmp / "retro")
    cfg = tiny_config(tmp, retro_path)
    train(cfg, actor_llm=ScriptedActor())
    return cfg.out_dir, retro_path


def eval_args(out_dir, retro_path, actor):
    args = [f"--out_dir={out_dir}", f"--retrospector_path={retro_path}", "--envs=hotpotqa", "--eval_tasks=16",
            "--eval_seeds=0,1", "--eval_trials=3", "--progress=false", "--reflection_max_tokens=8",
            "--concurrency=4", f"--actor={actor}"]  # fmt: skip
    if actor == "local":  # the tiny model as the actor too, greedy
        args += [f"--actor_path={retro_path}", "--actor_max_tokens=6", "--actor_temperature=0.0",
                 '--env_options={"hotpotqa": {"max_steps": 3}}']  # fmt: skip
    return args


def n_lines(path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def run_eval(args, kill_at=None, log=None):
    """eval.py in a subprocess; kill_at: SIGKILL it once the episode log has that many lines."""
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "eval.py"), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    if kill_at is not None:
        while p.poll() is None and n_lines(log) < kill_at:
            time.sleep(0.002)
        os.kill(p.pid, signal.SIGKILL)
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


def read(path, sort=False):
    with open(path, "rb") as f:
        data = f.read()
    return sorted(data.splitlines()) if sort else data


@pytest.mark.parametrize("actor", ["explorer", "local"])
def test_killed_twice_then_resumed_equals_an_uninterrupted_run(trained, actor):
    out_dir, retro_path = trained
    args = eval_args(out_dir, retro_path, actor)
    log = os.path.join(out_dir, "eval_episodes.jsonl")
    rc, out, err = run_eval(args)
    assert rc == 0, err
    reference = {f: read(os.path.join(out_dir, f), sort=f.endswith(".jsonl")) for f in FILES[:3]}
    total = len(reference["eval_episodes.jsonl"])
    assert total > 40
    for f in FILES:
        os.remove(os.path.join(out_dir, f))

    rc, _, err = run_eval(args, kill_at=total // 4, log=log)  # in the first seed's blocks
    assert rc == -signal.SIGKILL, err
    first = n_lines(log)
    assert first < total
    rc, out, err = run_eval(args + ["--resume"], kill_at=max(first + 1, 2 * total // 3), log=log)
    assert rc == -signal.SIGKILL, err
    assert "resumed the evaluation" in out
    # a kill in the middle of a write: both files end in a torn line
    with open(log, "a") as f:
        f.write('{"seed": 1, "method": "reflexion", "env": "hotp')
    with open(os.path.join(out_dir, "eval_progress.jsonl"), "a") as f:
        f.write('{"env": "hotpotqa", "seed"')
    rc, out, err = run_eval(args + ["--resume"])
    assert rc == 0, err
    assert "resumed the evaluation" in out
    for f in FILES[:3]:
        assert read(os.path.join(out_dir, f), sort=f.endswith(".jsonl")) == reference[f], f


def test_a_fresh_start_over_an_interrupted_evaluation_or_a_changed_resume_is_refused(trained, capsys):
    out_dir, retro_path = trained
    args = eval_args(out_dir, retro_path, "explorer") + ["--eval_seeds=0", "--eval_tasks=4"]
    progress = os.path.join(out_dir, "eval_progress.jsonl")
    ev.main(args)
    with open(progress) as f:
        records = [json.loads(x) for x in f]
    assert records[-1] == {"finished": True}
    blocks = [(r["seed"], r["method"]) for r in records[1:-1]]
    assert blocks == [(0, "shared"), (0, "react"), (0, "reflexion"), (0, "retroformer")]
    with open(progress, "w") as f:  # as if killed after the trial-0 block
        f.write("".join(json.dumps(r) + "\n" for r in records[:2]))
    with pytest.raises(SystemExit, match="an evaluation was interrupted here; pass --resume"):
        ev.main(args)
    with pytest.raises(SystemExit, match=r"ran with another setting: eval_tasks \(was 4, now 3\)"):
        ev.main(args + ["--eval_tasks=3", "--resume"])
    changed = json.loads(json.dumps(records[0]))  # the same config over other task data (a new download)
    assert changed["tasks"]["hotpotqa"]["n"] == 4 and len(changed["tasks"]["hotpotqa"]["sha256"]) == 64
    changed["tasks"]["hotpotqa"]["sha256"] = "0" * 64
    with open(progress, "w") as f:
        f.write(json.dumps(changed) + "\n" + json.dumps(records[1]) + "\n")
    with pytest.raises(SystemExit, match=r"ran with another setting: the tasks \(was"):
        ev.main(args + ["--resume"])
    with open(progress, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records[:2]))
    ev.main(args + ["--resume", "--progress=true"])  # tqdm on or off: the same evaluation
    with open(progress) as f:
        assert json.loads(f.readlines()[-1]) == {"finished": True}
    capsys.readouterr()
    ev.main(args)  # a finished evaluation may be started over
    t = records[0]["tasks"]["hotpotqa"]
    assert f"hotpotqa: 4 {t['split']} tasks, sha256 {t['sha256']}" in capsys.readouterr().out
    with open(os.path.join(out_dir, "eval.json")) as f:
        assert json.load(f)["tasks"] == records[0]["tasks"]  # the hash the eval printed, recorded
