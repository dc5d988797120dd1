"""scripts/experiment.py: recipe checks, an experiment end to end."""

import importlib.util
import json
import shutil

import pytest
import yaml

from conftest import REPO, rl_recipe
from helpers.run_folder import make_run

spec = importlib.util.spec_from_file_location("experiment", REPO / "scripts" / "experiment.py")
experiment = importlib.util.module_from_spec(spec)
spec.loader.exec_module(experiment)


def test_recipes_load_and_share_everything_but_the_reward():
    e1 = experiment.load_recipe(str(REPO / "recipes/experiments/e1_alternating.yaml"))
    assert e1["rl"]["reward"] == "alternating" and e1["eval"]["problems"] >= 512
    assert (
        e1["rl"]["generation_batch_size"] // e1["rl"]["num_generations"] >= 8
        and e1["rl"]["num_informative_groups"] == 8
        and e1["rl"]["rl_steps"] >= 20
    )
    e2 = {
        name: experiment.load_recipe(str(REPO / f"recipes/experiments/e2_{name}.yaml"))
        for name in ("s1_accuracy", "s2_alternating", "hierarchical")
    }
    assert [r["rl"]["reward"] for r in e2.values()] == ["accuracy", "alternating", "emphase_parallel"]
    first = e2["s1_accuracy"]
    for r in e2.values():  # same SFT model (mixed traces), same everything but the reward
        assert {k: v for k, v in r["rl"].items() if k != "reward"} == {
            k: v for k, v in first["rl"].items() if k != "reward"
        }
        assert r["sft"] == first["sft"] and r["sft"]["sft_data"] == "synthetic_easy_mixed" and r["rl"]["rl_steps"] >= 20


def test_recipe_missing_field_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"out": "x", "sft": {}, "rl": {}, "eval": {"benchmark": "synthetic_easy"}}))
    with pytest.raises(ValueError, match="eval.problems"):
        experiment.load_recipe(str(p))
    p.write_text(yaml.safe_dump({"out": "x", "sft": {}, "eval": {}}))
    with pytest.raises(ValueError, match="'rl'"):
        experiment.load_recipe(str(p))


def test_an_experiment_runs_end_to_end_and_resumes(tmp_path, taught_model, additions):
    """The whole script on test_rl's taught tiny model: RL, both evaluations, the bootstrap, the
    report; a second run finds everything done and returns the same summary."""
    shutil.copytree(taught_model, tmp_path / "exp" / "sft")
    (tmp_path / "exp" / "sft" / "DONE.json").write_text("{}\n")  # the cold start exists: no demo stages
    over = dict(rl_steps=2, save_every=2, num_informative_groups=1)
    rl = yaml.safe_load(rl_recipe(tmp_path, taught_model, additions, **over).read_text())
    for key in ("model", "output_dir"):  # the script fills them in
        rl.pop(key)
    recipe = tmp_path / "e.yaml"
    recipe.write_text(yaml.safe_dump({
        "out": str(tmp_path / "exp" / "e"), "sft": {"output_dir": str(tmp_path / "exp")}, "rl": rl,
        "headroom": {"benchmark": str(additions), "problems": 4, "k": 4},
        "eval": {"benchmark": str(additions), "problems": 6, "temperatures": [1.0, 0.0], "seed": 0, "resamples": 200},
    }))  # fmt: skip
    first = experiment.run_experiment(str(recipe))
    out = tmp_path / "exp" / "e"
    assert (out / "rl_summary.json").exists() and (out / "report.html").exists()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert first["difference"]["n_problems"] == 6 and set(first["accuracy"]) == {"sft", "rl"}
    assert set(first["evaluations"]) == {"T1", "T0"} and (out / "eval" / "rl-T0" / "results.json").exists()
    room = first["headroom"]
    assert room["k"] == 4 and 0 <= room["mean@k"] <= room["pass@k"] <= 1
    assert first == experiment.run_experiment(str(recipe))  # resumed: nothing re-run, same figures


def test_readiness_recipe_loads_and_its_branches_are_midtrain_stages(tmp_path):
    e4 = experiment.load_recipe(str(REPO / "recipes/experiments/e4_readiness.yaml"))
    stages = [d["name"] for d in e4["midtrain"]["decay"]]
    assert e4["branches"] == stages == ["worked", "short"]
    worked = {s["name"]: s for s in e4["midtrain"]["decay"][0]["mixture"]}["synthetic_qa"]
    assert worked["path"] == e4["worked_data"]["path"]  # the branch reads the file the script writes
    weights = [[s["weight"] for s in d["mixture"] if s["name"].endswith("_qa")] for d in e4["midtrain"]["decay"]]
    assert [sum(w) for w in weights] == [0.30, 0.30]  # the branches differ only in their QA share's data
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"kind": "readiness", "out": "x", "branches": []}))
    with pytest.raises(ValueError, match="'worked_data'"):
        experiment.load_recipe(str(p))


def test_readiness_experiment_writes_a_report_per_branch(tmp_path, monkeypatch):
    import parallel_r1.cli

    e4 = experiment.load_recipe(str(REPO / "recipes/experiments/e4_readiness.yaml"))
    out = tmp_path / "e4"
    recipe = dict(
        e4, out=str(out), worked_data=dict(e4["worked_data"], path=str(tmp_path / "worked.jsonl"), problems=3)
    )
    ran = []

    def fake_cli(argv):  # midtrain and rl-readiness themselves are test_midtrain's and test_readiness's
        ran.append(argv[0])
        if argv[0] == "rl-readiness":
            for branch in recipe["branches"]:
                make_run(out / "readiness" / branch, n_steps=4).rename(out / "readiness" / branch / "rl")
            (out / "readiness" / "readiness.json").write_text(json.dumps({"branches": recipe["branches"]}))
        return 0

    monkeypatch.setattr(parallel_r1.cli, "main", fake_cli)
    assert experiment.run_readiness_experiment(recipe) == {"branches": ["worked", "short"]}
    assert ran == ["midtrain", "rl-readiness"]
    assert len((tmp_path / "worked.jsonl").read_text().splitlines()) == 3
    for branch in recipe["branches"]:
        page = (out / "readiness" / branch / "report.html").read_text()
        assert "Parallel-R1 run report" in page and "4 RL steps" in page
