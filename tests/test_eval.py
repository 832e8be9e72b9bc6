"""eval.py: eval.json schema, the three methods, adapters off for Reflexion, the markdown table, eval.svg."""

import json
import xml.etree.ElementTree as ET

import pytest
import torch
from test_train import ScriptedActor, make_tiny_retrospector, tiny_config

import envs
import eval as ev
from lora import load_lora
from train import Retrospector, train
from worlds import hotpotqa_world

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, path of the tiny retrospector, out_dir holding adapters.pt after one PPO update)."""
    tmp = tmp_path_factory.mktemp("eval")
    retro_path = make_tiny_retrospector(tmp / "retro")
    cfg = tiny_config(tmp, retro_path, eval_tasks=6, eval_seeds="0,1")
    train(cfg, actor_llm=ScriptedActor())
    return cfg, retro_path


def check_schema(results, envs, max_trials, n_tasks, seeds):
    assert list(results) == envs
    for env in envs:
        assert list(results[env]) == ["react", "reflexion", "retroformer"]
        for r in results[env].values():
            keys = {"success_by_trial", "ci95_by_trial", "n_tasks", "seeds", "n_void", "right_plan_share"}
            assert set(r) == keys
            s, c = r["success_by_trial"], r["ci95_by_trial"]
            assert len(s) == len(c) == max_trials and r["n_tasks"] == n_tasks and r["seeds"] == seeds
            assert all(0 <= x <= 1 for x in s)
            assert all(s[k] <= s[k + 1] for k in range(len(s) - 1))  # solved in any of trials 0..k: monotone
            assert all((x is None) if len(seeds) == 1 else x >= 0 for x in c)


def test_evaluate_methods_on_a_scripted_actor(trained):
    cfg, retro_path = trained
    retro = Retrospector.load(cfg, "cpu", lora=False)
    load_lora(retro.model, f"{cfg.out_dir}/adapters.pt")
    train_split = lambda name, split: lambda: envs.make(name, "train", 0)  # the scripted actor's tasks
    results = ev.evaluate(cfg, ScriptedActor(), retro, make_env=train_split)
    check_schema(results, ["hotpotqa"], 3, 6, [0, 1])
    r = results["hotpotqa"]
    # trial 0 is shared; the scripted actor needs 0-2 reflections: react never improves, both
    # reflection methods solve every task by the third trial
    assert r["react"]["success_by_trial"][0] == r["retroformer"]["success_by_trial"][0] < 1
    assert r["react"]["success_by_trial"][0] == r["react"]["success_by_trial"][-1]
    assert r["reflexion"]["success_by_trial"][-1] == r["retroformer"]["success_by_trial"][-1] == 1.0
    assert r["react"]["ci95_by_trial"] == [0.0, 0.0, 0.0]  # deterministic: no spread over seeds
    assert r["react"]["right_plan_share"] is None  # no reflections to judge
    for m in ("reflexion", "retroformer"):  # the tiny retrospector's reflections: judged, if rarely right
        assert 0.0 <= r[m]["right_plan_share"] <= 1.0
    table = ev.markdown_table(results)
    assert "| hotpotqa | retroformer | " in table and "trial 2" in table


def test_reflexion_is_the_retrospector_with_adapters_off(trained):
    cfg, retro_path = trained
    from actor import Trajectory

    traj = Trajectory("hotpotqa", 0, 0, "Question: who?\n", [("t", "Finish[x]", "Episode finished.", 0.0)])
    tuned = Retrospector.load(cfg, "cpu", lora=False)
    load_lora(tuned.model, f"{cfg.out_dir}/adapters.pt")
    base = Retrospector.load(cfg, "cpu", lora=False)
    off = tuned.reflect([traj] * 3, torch.Generator().manual_seed(1), adapters=False)
    ref = base.reflect([traj] * 3, torch.Generator().manual_seed(1))
    on = tuned.reflect([traj] * 3, torch.Generator().manual_seed(1))
    assert [r.ids for r in off] == [r.ids for r in ref]
    for a, b in zip(off, ref, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    assert [r.logprobs for r in on] != [r.logprobs for r in off]  # the trained adapters matter


def test_main_writes_eval_json(trained, capsys):
    cfg, retro_path = trained
    argv = [f"--out_dir={cfg.out_dir}", f"--retrospector_path={retro_path}", f"--actor_path={retro_path}",
            "--envs=hotpotqa", "--eval_tasks=3", "--eval_seeds=0", "--eval_trials=2", "--actor=local",
            "--actor_max_tokens=6",
            "--reflection_max_tokens=4", "--actor_temperature=1.0", "--progress=false",
            '--env_options={"hotpotqa": {"max_steps": 3}}']  # fmt: skip
    ev.main(argv)
    out = json.load(open(f"{cfg.out_dir}/eval.json"))
    assert out["config"]["eval_tasks"] == 3 and out["config"]["actor"] == "local"
    check_schema(out["results"], ["hotpotqa"], 2, 3, [0])
    text = capsys.readouterr().out
    assert "| env | method | trial 0 | trial 1 |" in text
    assert f"wrote {cfg.out_dir}/eval.svg" in text
    svg = ET.parse(f"{cfg.out_dir}/eval.svg").getroot()  # valid XML
    assert len(svg.findall(f"{SVG}polyline")) == 3  # one per (env, method): hotpotqa x 3 methods
    assert "hotpotqa" in [t.text for t in svg.iter(f"{SVG}text")]


def test_plot_svg(tmp_path):
    """Hand-made results: one seed (ci None), a None success, an env name that needs escaping."""
    curve = lambda s, c: {"success_by_trial": s, "ci95_by_trial": c, "n_tasks": 4, "seeds": [0], "n_void": 0}
    results = {
        "a<b&c": {
            "react": curve([0.25, 0.25, 0.5], [None] * 3),
            "retroformer": curve([0.0, None, 1.0], [None] * 3),
        },
        "webshop": {"reflexion": curve([0.5, 0.75], [0.1, 0.2])},
    }
    ev.plot(results, tmp_path / "eval.svg")
    svg = ET.parse(tmp_path / "eval.svg").getroot()
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert "a<b&c" in texts and "webshop" in texts and "0.25" in texts
    lines = svg.findall(f"{SVG}polyline")
    assert [p.get("stroke") for p in lines] == ["#7f7f7f", "#d62728", "#1f77b4"]  # distinct per method
    points = [[tuple(map(float, xy.split(","))) for xy in p.get("points").split()] for p in lines]
    assert [len(p) for p in points] == [3, 2, 2]  # the None success is skipped
    for pts, s in zip(points, [[0.25, 0.25, 0.5], [0.0, 1.0], [0.5, 0.75]], strict=True):
        x, y = zip(*pts, strict=True)
        assert list(x) == sorted(x)  # trials left to right
        for i in range(len(s)):  # higher success = smaller y (SVG's y axis points down), equal = equal
            for j in range(len(s)):
                assert (s[i] > s[j]) == (y[i] < y[j]) and (s[i] == s[j]) == (y[i] == y[j])
    bars = [e for e in svg.iter(f"{SVG}line") if e.get("stroke") == "#1f77b4" and e.get("x1") == e.get("x2")]
    assert len(bars) == 2  # error bars only where ci95 is not None


def test_missing_adapters_and_bad_methods(trained, tmp_path):
    cfg, retro_path = trained
    with pytest.raises(SystemExit, match="adapters.pt not found: run train.py"):
        ev.main([f"--out_dir={tmp_path}", f"--retrospector_path={retro_path}", f"--actor_path={retro_path}"])
    # the frozen retrospector alone (Reflexion) needs no trained adapters
    ev.main([f"--out_dir={tmp_path}", f"--retrospector_path={retro_path}", "--envs=hotpotqa",
             "--eval_tasks=2", "--eval_seeds=0", "--eval_trials=2", "--eval_methods=react,reflexion",
             "--progress=False"])  # fmt: skip
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert list(results["hotpotqa"]) == ["react", "reflexion"]
    cfg2 = tiny_config(tmp_path, retro_path, eval_methods="react,ppo")
    with pytest.raises(ValueError, match=r"unknown \['ppo'\]"):
        ev.evaluate(cfg2, ScriptedActor(), None)


def test_eval_split_val_runs_train_tasks_that_ppo_and_pretraining_skip(tmp_path):
    """--eval_split=val: the train split's tasks from VAL_FIRST on, logged as such, none of them a test
    task or one of the tasks PPO samples; the scripted explorer finds them."""
    from envs import VAL_FIRST
    from train import build_actor, parse_config

    cfg = parse_config(["--envs=hotpotqa", "--eval_split=val", "--eval_tasks=4", "--eval_seeds=0",
                        "--eval_methods=react", "--eval_trials=2", f"--out_dir={tmp_path}"])  # fmt: skip
    log = tmp_path / "episodes.jsonl"
    results = ev.evaluate(cfg, build_actor(cfg, "cpu"), None, log_path=str(log))
    r = results["hotpotqa"]["react"]
    assert list(results["hotpotqa"]) == ["react"] and r["n_tasks"] == 4 and len(r["success_by_trial"]) == 2
    episodes = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted({e["task"] for e in episodes}) == list(range(VAL_FIRST, VAL_FIRST + 4))
    assert all(e["seed"] == 0 and e["method"] == ("shared" if e["trial"] == 0 else "react") for e in episodes)
    # HotPotQA's val tasks use names that no model was trained on (envs' inventory 2), as test's
    val = envs.make("hotpotqa", "train", n_tasks=VAL_FIRST + 4, names=2)
    assert {e["instruction"] for e in episodes} == {val.reset(i) for i in range(VAL_FIRST, VAL_FIRST + 4)}
    ppo, test = envs.make("hotpotqa", "train"), envs.make("hotpotqa", "test")
    seen = {ppo.reset(i) for i in range(len(ppo))} | {test.reset(i) for i in range(len(test))}
    assert not any(e["instruction"] in seen for e in episodes)
    drill = set(hotpotqa_world.NAME_STEMS[1])  # pretrain.py's name drill
    assert not any(s in e["instruction"].lower() for s in drill for e in episodes)
    with pytest.raises(ValueError, match="eval_split"):
        parse_config(["--eval_split=dev"])


@pytest.mark.parametrize("name", ["hotpotqa", "alfworld", "webshop"])
def test_val_envs_share_their_tasks_not_their_episodes(name):
    """env_factory(..., "val") copies one generated env: two copies stepped in turn play the same
    episodes as two envs of their own."""
    from envs import VAL_FIRST
    from train import Config, env_factory, env_options

    factory = env_factory(Config(eval_tasks=2), name, "val")
    a, b = factory(), env_factory(Config(eval_tasks=2), name, "val")()  # a second factory: the same tasks
    assert a.tasks is b.tasks and len(a) == VAL_FIRST + 2
    assert env_factory(Config(eval_tasks=3), name, "val")().tasks is not a.tasks  # another size: its own

    def episodes(env_a, env_b):
        out = {0: [env_a.reset(VAL_FIRST)], 1: [env_b.reset(VAL_FIRST + 1)]}
        done = {0: False, 1: False}
        while not all(done.values()):
            for k, env in ((0, env_a), (1, env_b)):
                if not done[k]:
                    obs, _, done[k], _ = env.step(env.expert()[1])
                    out[k].append(obs)
        return out

    opts = {**env_options(Config()).get(name, {}), **({"names": 2} if name == "hotpotqa" else {})}
    grown = lambda: envs.make(name, "train", n_tasks=VAL_FIRST + 2, **opts)
    assert episodes(a, b) == episodes(grown(), grown())
