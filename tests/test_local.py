"""The ``local`` scheduler (worker processes forked from one helper that loaded torch once) and the
default ``auto``: the same states as one process computes, failures and stop requests as one process
has them, and what ``auto`` picks. Real stores in a temp dir, real worker processes; tiny recipes
(lenet_300_100 on digits, a few iterations)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mlprune import SpecError
from mlprune.executor import Execution, run_plans
from mlprune.executor.local import (
    WorkerError,
    _chain_priority,
    call_names,
    error_from_json,
    error_json,
    preload_modules,
    training_width,
)
from mlprune.executor.options import RunOptions
from mlprune.executor.threads import collector_paused, machine_cores, torch_default_threads
from mlprune.recipes import compile_recipe
from mlprune.store import Store
from mlprune.training.interrupt import Interrupted, clear_stop, request_stop

CALLS = call_names()

TINY = """\
params: {seed: 0, lr: 0.05}
root: {model: lenet_300_100, dataset: digits, seed: $seed}
train: {steps: 30it, lr: $lr, batch_size: 32}
rounds: 1
prune: {method: l1_unstructured, amount: 0.5}
reinit: {strategy: rewind, to: root}
"""

two_cores = pytest.mark.skipif(machine_cores() < 2, reason="auto runs states side by side from two cores on")


def plans_for(tmp_path, seeds, text=TINY, **params):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(text)
    return [compile_recipe(str(recipe), {"seed": seed, **params}) for seed in seeds]


def store_in(tmp_path, name):
    return Store(name, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_local_workers_compute_the_states_one_process_computes(tmp_path):
    plans = plans_for(tmp_path, [0, 1])
    alone = run_plans(plans, store_in(tmp_path, "sync"), scheduler="sync")
    side = run_plans(plans, store_in(tmp_path, "local"), scheduler="local", workers=2)
    assert side.scheduler == "local (2 workers, 1 thread each)" and alone.scheduler == "sync"
    assert side.keys == alone.keys and side.computed == alone.computed == 8
    one, two = store_in(tmp_path, "sync"), store_in(tmp_path, "local")
    for plan_one, plan_two in zip(alone.states, side.states):
        for name, run_id in plan_one.items():
            a, b = one.load(run_id), two.load(plan_two[name])
            assert a.spec["key"] == b.spec["key"]
            assert a.weights.keys() == b.weights.keys() and a.masks.keys() == b.masks.keys()
            for tensor in a.weights:  # the same bytes: one thread on both sides
                assert torch.equal(a.weights[tensor], b.weights[tensor]), (name, tensor)
            for mask in a.masks:
                assert torch.equal(a.masks[mask], b.masks[mask]), (name, mask)
            assert two.run(plan_two[name]).data.params["run.threads"] == "1"


@two_cores
def test_auto_runs_independent_trainings_side_by_side_and_one_chain_in_this_process(tmp_path, monkeypatch):
    monkeypatch.delenv("MLPRUNE_SCHEDULER")
    store = store_in(tmp_path, "auto")
    seeds = Execution(plans_for(tmp_path, [0, 1, 2]), store)
    try:
        assert (seeds.asked, seeds.scheduler, seeds.local_workers) == ("auto", "local", 2)
    finally:
        seeds.close()
    assert Execution(plans_for(tmp_path, [0]), store).scheduler == "sync"  # a chain: all cores to each state
    on_cuda = Execution(plans_for(tmp_path, [0, 1]), store, options=RunOptions(device="cuda"))
    assert on_cuda.scheduler == "sync"  # one accelerator: one state at a time
    monkeypatch.setenv("MLPRUNE_THREADS", str(machine_cores()))  # each state wants every core
    assert Execution(plans_for(tmp_path, [0, 1]), store).scheduler == "sync"
    monkeypatch.setenv("MLPRUNE_SCHEDULER", "sync")
    assert Execution(plans_for(tmp_path, [0, 1]), store).scheduler == "sync"
    monkeypatch.setenv("MLPRUNE_SCHEDULER", "bogus")
    with pytest.raises(SpecError, match="MLPRUNE_SCHEDULER.*'bogus'.*auto, sync, local"):
        Execution(plans_for(tmp_path, [0]), store)


def test_the_width_counts_trainings_that_can_run_at_once_and_chains_go_longest_first(tmp_path):
    store = store_in(tmp_path, "width")
    one = Execution(plans_for(tmp_path, [0]), store, scheduler="sync")
    three = Execution(plans_for(tmp_path, [0, 1, 2]), store, scheduler="sync")
    assert training_width(one._graph(None), CALLS) == 1  # init -> train -> prune -> rewind+train
    assert training_width(three._graph(None), CALLS) == 3
    graph = three._graph(None)
    priority = _chain_priority(graph, CALLS)
    roots = [k for k in graph if not graph[k][3:]]
    # the three roots (two trainings behind each) before any training: three chains advance together
    assert sorted(graph, key=priority.get)[:3] == roots


def test_the_graph_is_built_once_and_each_call_binds_its_context(tmp_path):
    # auto reads the graph before the run; the run's graph has the workflow run in every task's context
    execution = Execution(plans_for(tmp_path, [0, 1]), store_in(tmp_path, "once"), scheduler="sync")
    looked, run = execution._graph(None), execution._graph("w0rkf10w")
    assert execution._tasks_graph is not None and list(looked) == list(run)
    for key in run:
        assert looked[key][1] is run[key][1]  # the tasks' JSON, made once
        assert json.loads(looked[key][2])["workflow"] is None and json.loads(run[key][2])["workflow"] == "w0rkf10w"


def test_the_helper_imports_torchvision_only_for_what_needs_it_and_the_collector_pause_is_undone():
    # torchvision costs the helper a second: preloaded for its datasets and models only, or where the root
    # is unknown (an existing state without one); the states' roots are what the executor passes
    lenet_mnist = {"model": "lenet_300_100", "dataset": "mnist"}
    assert "torchvision" not in preload_modules([lenet_mnist, {"model": "conv2", "dataset": "digits"}])
    assert "torch._dynamo" in preload_modules([lenet_mnist])  # any optimizer imports it
    for root in ({"model": "lenet", "dataset": "cifar10"}, {"model": "tv:resnet18", "dataset": "mnist"}, None):
        assert "torchvision" in preload_modules([lenet_mnist, root])
    import gc

    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # a caller's own setting stays
    finally:
        gc.enable()


def test_a_failing_state_on_a_worker_is_its_one_line_error_and_nothing_is_left_claimed(tmp_path):
    plans = plans_for(tmp_path, [0], lr=1e30) + plans_for(tmp_path, [1])
    with pytest.raises(SpecError) as alone:
        run_plans(plans[:1], store_in(tmp_path, "sync"), scheduler="sync")
    store = store_in(tmp_path, "local")
    with pytest.raises(SpecError) as side:
        run_plans(plans, store, scheduler="local", workers=2)
    assert str(side.value) == str(alone.value) and "training diverged" in str(side.value)
    statuses = {r.info.run_name: r.info.status for r in store.client.search_runs([store.experiment_id])}
    # the diverged training FAILED; what the other worker was computing when it failed ended FINISHED;
    # nothing new started after it
    assert statuses.pop("train") == "FAILED" and set(statuses.values()) == {"FINISHED"}, statuses
    assert "init lenet_300_100 s1" in statuses and len(statuses) <= 3, statuses


def test_a_stop_request_reaches_the_training_on_a_worker_and_a_rerun_resumes(tmp_path):
    plans = plans_for(tmp_path, [0, 1], text=TINY.replace("30it", "300it"))
    store = store_in(tmp_path, "stop")
    asked = []

    def progress(line):  # a worker's training reports an epoch: it is running, the stop reaches it there
        if "epoch" in line and not asked:
            asked.append(line)
            request_stop("test stop", 15)

    execution = Execution(plans, store, scheduler="local", workers=2, progress=progress)
    execution.check()
    try:
        with pytest.raises(Interrupted) as stopped:
            execution.run()
    finally:
        clear_stop()
    assert stopped.value.exit_status == 143 and asked
    runs = store.client.search_runs([store.experiment_id])
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert killed and all("train" in r.info.run_name for r in killed)  # claims left for the next run to resume
    assert not [r for r in runs if r.info.status == "RUNNING"]
    again = run_plans(plans, store, scheduler="local", workers=2)
    assert again.computed + again.reused == 8 and again.computed >= len(killed)


def test_errors_travel_as_json_and_come_back_as_they_were():
    import json

    def through(error):
        return error_from_json(json.loads(json.dumps(error_json(error))))

    diverged = through(SpecError("training diverged in epoch 2"))
    assert type(diverged) is SpecError and str(diverged) == "training diverged in epoch 2"
    stopped = through(Interrupted("signal SIGTERM", signum=15, iteration=7))
    assert (type(stopped), stopped.exit_status, stopped.iteration) == (Interrupted, 143, 7)
    other = through(ValueError("bad"))
    assert type(other) is WorkerError and str(other) == "builtins.ValueError: bad"
    assert "ValueError: bad" in other.__notes__[0]


def test_the_program_exits_with_its_status_and_writes_all_its_output(tmp_path):
    """`python -m mlprune` skips the interpreter's teardown (`cli.entry`): its output and status stay."""
    bad = subprocess.run(
        [sys.executable, "-m", "mlprune", "run", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and bad.stderr.count("\n") == 1, bad.stderr
    listed = subprocess.run([sys.executable, "-m", "mlprune", "--help"], capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout.endswith("\n") and "  sweep " in listed.stdout, listed.stdout


def test_a_script_without_a_main_guard_is_not_run_again_by_the_workers(tmp_path):
    """The workers are forked from a fresh helper, never from the caller: its ``__main__`` stays its own."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    script = tmp_path / "study.py"
    script.write_text(
        "from mlprune.executor import run_plans\n"
        "from mlprune.recipes import compile_recipe\n"
        "from mlprune.store import Store\n"
        "print('the script ran', flush=True)\n"
        f"plans = [compile_recipe({str(recipe)!r}, {{'seed': s}}) for s in (0, 1)]\n"
        f"store = Store('script', tracking_uri='sqlite:///{tmp_path / 'mlflow.db'}')\n"
        "print(run_plans(plans, store, scheduler='local', workers=2).scheduler)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["the script ran", "local (2 workers, 1 thread each)"], done.stdout


def test_openmp_waits_passively_where_other_work_runs_and_a_users_setting_wins(tmp_path):
    """`settle_wait_policy` in a fresh process (before torch loads), beside a process that keeps a core busy."""
    busy = subprocess.Popen(
        [sys.executable, "-c", "print('busy', flush=True)\nwhile True: pass"], stdout=subprocess.PIPE
    )
    try:
        assert busy.stdout.readline().strip() == b"busy"
        check = (
            "import os, sys\n"
            "from mlprune.executor.threads import settle_wait_policy\n"
            "settle_wait_policy(int(sys.argv[1]))\n"
            "print(os.environ.get('OMP_WAIT_POLICY', 'unset'))\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}

        def policy(threads, **extra):
            out = subprocess.run(
                [sys.executable, "-c", check, str(threads)], env={**env, **extra}, capture_output=True, text=True
            )
            return out.stdout.strip()

        cores = machine_cores()
        assert policy(cores) == "PASSIVE"  # a thread per core while other work runs: they wait passively
        assert policy(1) == "unset"  # one thread never waits for another
        assert policy(2, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"  # the user's setting wins
    finally:
        busy.kill()
        busy.wait()


@two_cores
def test_a_sweep_of_seeds_runs_side_by_side_by_default_and_says_so(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mlprune.cli import main

    monkeypatch.delenv("MLPRUNE_SCHEDULER")
    monkeypatch.delenv("MLPRUNE_THREADS")  # the defaults a user gets
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    out = CliRunner().invoke(main, ["sweep", str(recipe), "--seeds", "0-1", "-e", "seeds"])
    assert out.exit_code == 0, out.output
    each = max(1, torch_default_threads() // 2)  # torch's cores split between the two workers
    assert f"scheduler local (2 workers, {each} thread" in out.output, out.output
    assert "8 states: 8 computed, 0 reused" in out.output
    store = store_in(tmp_path, "seeds")
    threads = {r.data.params.get("run.threads") for r in store.client.search_runs([store.experiment_id])}
    assert threads == {str(each), None}  # each state records it (the workflow run does not)
