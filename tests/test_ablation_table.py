"""scripts/ablation_table.py reads ablation run folders; scripts/ablations.sh refuses a name it lacks."""

import dataclasses
import importlib.util
import json
import os
import subprocess

import pytest

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_table():
    path = os.path.join(ROOT, "scripts", "ablation_table.py")
    spec = importlib.util.spec_from_file_location("ablation_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(root, name, changes, finals, kls=(0.0, 1.5), reflections=("a", "b", "b", "c"), split="val"):
    run = root / name
    run.mkdir(parents=True)
    config = dataclasses.asdict(train.Config(**changes))
    config |= {"eval_split": split, "out_dir": str(run), "threads": 1}  # set by every ablation run
    results = {env: {m: {"success_by_trial": [0.4, 0.5, s]} for m, s in methods.items()}
               for env, methods in finals.items()}  # fmt: skip
    (run / "eval.json").write_text(json.dumps({"config": config, "results": results}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"update": u + 1, "kl_ref": k}) + "\n"
                                               for u, k in enumerate(kls)))  # fmt: skip
    (run / "replay.jsonl").write_text("".join(json.dumps({"update": len(kls), "reflection": r}) + "\n"
                                              for r in reflections))  # fmt: skip


def test_rows_name_the_changed_keys_and_the_gap_default_first(tmp_path, capsys):
    finals = {"hotpotqa": {"react": 0.44, "reflexion": 0.647, "retroformer": 0.77}}
    worse = {"hotpotqa": {"reflexion": 0.6, "retroformer": 0.55}}
    write_run(tmp_path, "kl0", {"kl_coef": 0.0, "lora_r": 2}, worse)
    write_run(tmp_path, "default", {}, finals)
    (tmp_path / "unfinished").mkdir()  # a run without eval.json yet: not a row
    load_table().main(str(tmp_path))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | keys | hotpotqa | KL | distinct |" and len(lines) == 4
    assert lines[2] == "| default | `(the default)` | 0.647 / 0.770 (+12.3) | 1.50 | 0.75 |"
    assert lines[3] == "| kl0 | `--lora_r=2 --kl_coef=0.0` | 0.600 / 0.550 (-5.0) | 1.50 | 0.75 |"


def test_a_test_split_run_or_an_empty_folder_is_refused(tmp_path):
    write_run(tmp_path, "default", {}, {"hotpotqa": {"reflexion": 0.6, "retroformer": 0.7}}, split="test")
    with pytest.raises(SystemExit, match="eval_split is 'test'"):
        load_table().main(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no run folder"):
        load_table().main(str(tmp_path / "empty"))


def test_ablations_sh_refuses_an_unknown_name_before_running_anything(tmp_path):
    res = subprocess.run(["bash", os.path.join(ROOT, "scripts", "ablations.sh"), "kl0", "no_such_ablation"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 2 and "unknown ablation no_such_ablation" in res.stderr
    assert "kl0" in res.stderr  # it lists the names it has
