"""training/common.py + training/checkpoints.py: the checkpoint folder every training script writes (JSON +
safetensors only, atomic, verified on resume, pruned to --checkpoints-total-limit), the run folder guard."""

import argparse
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from posetransfer.training import checkpoints, common


class FakeAccelerator:
    """What the checkpoint code uses of accelerate's Accelerator, for one process."""

    is_main_process = True
    num_processes, process_index = 1, 0
    scaler = None

    def __init__(self):
        self.barriers = 0

    def wait_for_everyone(self):
        self.barriers += 1

    def unwrap_model(self, model):
        return model


def toy(seed=0):
    """A module, Adam (with state after one step), a LambdaLR and an EMA-like extra."""
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(net.parameters(), lr=0.1, betas=(0.0, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    ema = EMAModel(net.parameters(), decay=0.9)
    net(torch.randn(5, 3)).pow(2).sum().backward()
    opt.step()
    sched.step()
    ema.step(net.parameters())
    return common.Resumable({"net": net}, {"adam": opt}, {"lr": sched}, {"ema": ema},
                            data={"examples": 7, "seed": 3})


def export_model(folder):
    (folder / "model").mkdir()
    (folder / "model" / "model.safetensors").write_bytes(b"exported weights")


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_save_writes_json_and_safetensors_only_and_keeps_the_newest(tmp_path):
    acc, res = FakeAccelerator(), toy()
    assert common.needs_final_checkpoint(tmp_path, 0)
    for step in (5, 10, 15):
        path = common.save_checkpoint(acc, tmp_path, step, {"kind": "toy", "step": step}, export_model, res, keep=2)
        assert path == tmp_path / common.CHECKPOINTS / f"checkpoint-{step}"
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        assert names == ["manifest.json", "model/model.safetensors", "state.json", "state.safetensors",
                         "train_config.json", "weights/net.safetensors"]
        assert json.loads((path / "train_config.json").read_text()) == {"kind": "toy", "step": step}
        manifest = json.loads((path / "manifest.json").read_text())
        assert sorted(manifest["files"]) == [n for n in names if n != "manifest.json"]
        assert manifest["files"]["model/model.safetensors"]["size"] == len(b"exported weights")
    assert [p.name for p in common.list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-15"]
    assert not any(p.name.startswith(".") for p in (tmp_path / common.CHECKPOINTS).iterdir())  # no leftovers
    assert not common.needs_final_checkpoint(tmp_path, 15) and common.needs_final_checkpoint(tmp_path, 16)
    common.save_checkpoint(acc, tmp_path, 20, {"kind": "toy"}, export_model, res)  # keep None: every one stays
    assert len(common.list_checkpoints(tmp_path)) == 3
    # nothing but JSON and safetensors: every .safetensors file parses as safetensors, every .json as JSON
    from safetensors import safe_open

    for p in (tmp_path / common.CHECKPOINTS).rglob("*"):
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".safetensors" and p.parent.name != "model":
            with safe_open(str(p), "pt") as f:
                list(f.keys())
    # other processes write nothing
    acc.is_main_process = False
    common.save_checkpoint(acc, tmp_path, 25, {"kind": "toy"}, export_model, res, keep=1)
    assert not (tmp_path / common.CHECKPOINTS / "checkpoint-25").exists()


def test_load_restores_weights_optimizer_scheduler_extras_and_rng(tmp_path):
    acc, saved = FakeAccelerator(), toy(0)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    path = common.save_checkpoint(acc, tmp_path, 3, {"kind": "toy"}, export_model, saved)
    expected = draws()
    fresh = toy(1)                                                  # other weights, other optimiser state
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    assert common.load_checkpoint(acc, path, fresh, "prog") == 3
    assert draws() == expected                                      # python, numpy and torch generators
    for a, b in zip(saved.models["net"].state_dict().values(), fresh.models["net"].state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = saved.optimizers["adam"].state_dict(), fresh.optimizers["adam"].state_dict()
    assert sa["param_groups"] == sb["param_groups"] and sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        for name, v in sa["state"][k].items():
            assert torch.equal(v, sb["state"][k][name])
    assert saved.schedulers["lr"].state_dict() == fresh.schedulers["lr"].state_dict()
    ea, eb = saved.extras["ema"].state_dict(), fresh.extras["ema"].state_dict()
    assert ea["optimization_step"] == eb["optimization_step"] == 1
    assert all(torch.equal(x, y) for x, y in zip(ea["shadow_params"], eb["shadow_params"]))
    # the same next step from both
    for r in (saved, fresh):
        net = r.models["net"]
        r.optimizers["adam"].zero_grad()
        net(torch.ones(2, 3)).sum().backward()
        r.optimizers["adam"].step()
    for a, b in zip(saved.models["net"].parameters(), fresh.models["net"].parameters()):
        assert torch.equal(a, b)


def test_state_tree_round_trip_keeps_types():
    value = {"t": torch.arange(3), 0: {"step": torch.tensor(2.0)}, "tup": (1, (2, 3.5), None),
             "np": np.arange(4, dtype=np.uint32), "f": float("inf"), "nested": [{"__tensor__": "x"}]}
    tensors = {}
    tree = checkpoints.encode_tree(value, tensors)
    back = checkpoints.decode_tree(json.loads(json.dumps(tree)), tensors)
    assert back.keys() == value.keys() and isinstance(back["tup"][1], tuple) and back["nested"] == value["nested"]
    assert torch.equal(back["t"], value["t"]) and back["np"].dtype == np.uint32 and back["f"] == float("inf")
    with pytest.raises(TypeError, match="at state.bad"):
        checkpoints.encode_tree({"bad": object()}, {})


# --------------------------------------------------------------------------------- killed while saving

FAULT_POINTS = ("_durable", "_rename", "_sync_dir", "_save_tensors", "_write_json")


class Killed(Exception):
    pass


def inject(monkeypatch, kill_at):
    """Count every file write, fsync and rename of a save; the ``kill_at``-th raises (a write leaves its file
    half-written first), as a kill there would stop the save. Returns the counter."""
    import safetensors.torch

    calls = []

    def wrap(fn, writes):
        def faulty(*args, **kwargs):
            calls.append(fn.__name__)
            if len(calls) - 1 != kill_at:
                return fn(*args, **kwargs)
            if writes:
                fn(*args, **kwargs)
                path = Path(args[1] if fn.__name__ == "save_model" else args[0])
                path.write_bytes(path.read_bytes()[:max(1, path.stat().st_size // 2)])
            raise Killed(f"killed at {fn.__name__} #{kill_at}")
        return faulty

    for name in FAULT_POINTS:
        monkeypatch.setattr(checkpoints, name, wrap(getattr(checkpoints, name), name in ("_save_tensors",
                                                                                         "_write_json")))
    monkeypatch.setattr(safetensors.torch, "save_model", wrap(safetensors.torch.save_model, True))
    return calls


@pytest.mark.parametrize("replace", [False, True], ids=["new-step", "replacing-a-step"])
def test_a_save_killed_anywhere_leaves_latest_complete(tmp_path, monkeypatch, replace):
    """checkpoint-1 exists (and, replacing, an earlier checkpoint-2: a run resumed from 1 saves step 2 again).
    The save of step 2 is killed at each of its writes, fsyncs and renames in turn: ``latest`` is always a complete
    checkpoint (1, the old 2 or the new 2) that loads, and the next save cleans the leftovers."""
    acc = FakeAccelerator()
    n_points = None
    k = 0
    while n_points is None or k <= n_points:
        out = tmp_path / f"kill{k}"
        old = toy(0)
        common.save_checkpoint(acc, out, 1, {"kind": "toy", "step": 1}, export_model, old)
        if replace:
            common.save_checkpoint(acc, out, 2, {"kind": "toy", "step": 2, "old": True}, export_model, old)
        with monkeypatch.context() as m:
            calls = inject(m, kill_at=k)
            try:
                common.save_checkpoint(acc, out, 2, {"kind": "toy", "step": 2}, export_model, toy(1))
                killed = False
            except Killed:
                killed = True
        if not killed:                                              # k is past the last point: done
            n_points = len(calls)
            assert n_points >= 12 and k == n_points
            break
        found = common.resolve_resume("latest", out, "prog")
        config = common.read_train_config(found, "toy")
        assert found.name in ("checkpoint-1", "checkpoint-2"), found
        if replace:                                                 # the old 2 until the new one is in place
            assert found.name == "checkpoint-2" or calls[-1] == "_rename"
        assert common.load_checkpoint(acc, found, toy(2), "prog") == config["step"]
        common.save_checkpoint(acc, out, 3, {"kind": "toy", "step": 3}, export_model, toy(1))
        assert not any(p.name.startswith(".") for p in (out / common.CHECKPOINTS).iterdir())
        k += 1
    assert n_points is not None


def test_resume_skips_unfinished_checkpoints_and_names_a_corrupt_file(tmp_path, capsys):
    acc = FakeAccelerator()
    for step in (2, 4):
        common.save_checkpoint(acc, tmp_path, step, {"kind": "toy"}, export_model, toy())
    ckpt4 = tmp_path / common.CHECKPOINTS / "checkpoint-4"
    weights = ckpt4 / "weights" / "net.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])                  # truncated
    found = common.resolve_resume("latest", tmp_path, "prog")
    assert found.name == "checkpoint-2"
    out = capsys.readouterr().out
    assert "skipped" in out and str(weights) in out and "truncated" in out
    with pytest.raises(ValueError) as err:                           # named explicitly: one error naming the file
        common.resolve_resume(str(ckpt4), tmp_path, "prog")
    assert str(weights) in str(err.value) and "\n" not in str(err.value)
    weights.write_bytes(b"x" * (weights.stat().st_size + 10))        # same size as recorded, other bytes
    data = bytearray((ckpt4 / "state.json").read_bytes())
    data[5] ^= 1
    (ckpt4 / "state.json").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="state.json: contents differ from the manifest's sha256"):
        common.resolve_resume(str(ckpt4), tmp_path, "prog")
    (ckpt4 / "manifest.json").unlink()                               # unfinished: no manifest
    with pytest.raises(ValueError, match="manifest.json: missing"):
        common.resolve_resume(str(ckpt4), tmp_path, "prog")
    (tmp_path / common.CHECKPOINTS / "checkpoint-2" / "manifest.json").unlink()
    with pytest.raises(ValueError, match="no complete checkpoint"):
        common.resolve_resume("latest", tmp_path, "prog")
    assert common.resolve_resume("latest", tmp_path / "nothing", "prog") is None
    with pytest.raises(ValueError, match="a 'toy' checkpoint, this run trains 'other'"):
        common.save_checkpoint(acc, tmp_path, 6, {"kind": "toy"}, export_model, toy())
        common.read_train_config(tmp_path / common.CHECKPOINTS / "checkpoint-6", "other")


# --------------------------------------------------------------------------------- nothing is unpickled

class Payload:
    """Unpickling it creates the marker file (what a planted checkpoint file would run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


OLD_FORMAT = ("random_states_0.pkl", "random_states_1.pkl", "custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl",
              "optimizer.bin", "optimizer_1.bin", "optimizer_2.bin", "scheduler.bin", "scheduler_1.bin",
              "scheduler_2.bin", "scaler.pt", "pytorch_model.bin", "pytorch_model_1.bin", "sampler.bin")


def plant(folder: Path, marker: Path) -> None:
    """Every file name accelerate's save_state used, holding a live payload (checked to work once)."""
    for name in OLD_FORMAT:
        if name.endswith(".pkl"):
            (folder / name).write_bytes(pickle.dumps(Payload(marker)))
        else:
            torch.save(Payload(marker), folder / name)
    pickle.loads((folder / OLD_FORMAT[0]).read_bytes())
    assert marker.exists(), "the payload is not live"
    marker.unlink()


def test_planted_pickles_are_never_loaded(tmp_path):
    acc, marker = FakeAccelerator(), tmp_path / "pwned"
    path = common.save_checkpoint(acc, tmp_path, 1, {"kind": "toy"}, export_model, toy())
    plant(path, marker)
    found = common.resolve_resume("latest", tmp_path, "prog")       # extra files are ignored, never opened
    assert common.load_checkpoint(acc, found, toy(1), "prog") == 1 and not marker.exists()
    # a pickle in place of each tensor file, the manifest rewritten to match: refused by safetensors
    for name in ("state.safetensors", "weights/net.safetensors"):
        bad = tmp_path / f"bad-{name.replace('/', '-')}"
        os.system(f"cp -r {path} {bad}")
        torch.save(Payload(marker), bad / name)
        manifest = json.loads((bad / "manifest.json").read_text())
        manifest["files"][name] = {"size": (bad / name).stat().st_size, "sha256": checkpoints._sha256(bad / name)}
        (bad / "manifest.json").write_text(json.dumps(manifest))
        assert common.resolve_resume(str(bad), tmp_path, "prog") == bad
        with pytest.raises(ValueError, match=f"{bad / name}: not a readable safetensors file"
                           if name == "state.safetensors" else f"{bad / name}: does not load"):
            common.load_checkpoint(acc, bad, toy(1), "prog")
        assert not marker.exists()
    # a folder of the old format alone: never resumed
    old = tmp_path / "old" / common.CHECKPOINTS / "checkpoint-3"
    old.mkdir(parents=True)
    (old / "train_config.json").write_text('{"kind": "toy"}')
    plant(old, marker)
    with pytest.raises(ValueError, match="manifest.json: missing"):
        common.resolve_resume(str(old), tmp_path, "prog")
    with pytest.raises(ValueError, match="no complete checkpoint"):
        common.resolve_resume("latest", tmp_path / "old", "prog")
    assert not marker.exists()


# --------------------------------------------------------------------------------- the run folder guard

def run_args(**kw):
    return argparse.Namespace(**{"resume": None, "overwrite": False, **kw})


def test_a_new_run_into_a_used_folder_is_refused_unless_overwrite(tmp_path, capsys):
    acc = FakeAccelerator()
    out = tmp_path / "run"
    assert common.start_run(acc, run_args(), out, "prog") is None and out.is_dir()   # new or empty: fine
    assert common.start_run(acc, run_args(), out, "prog") is None
    for name in ("train_log.jsonl", "train_log.csv", "model.safetensors", "notes.txt"):
        (out / name).write_text("old")
    (out / "model").mkdir()
    (out / "model" / "config.json").write_text("{}")
    common.save_checkpoint(acc, out, 1, {"kind": "toy"}, export_model, toy())
    with pytest.raises(FileExistsError) as err:
        common.start_run(acc, run_args(), out, "prog")
    msg = str(err.value)
    assert str(out) in msg and "--resume latest" in msg and "--overwrite" in msg and "\n" not in msg
    assert (out / "train_log.jsonl").read_text() == "old" and (out / "model" / "config.json").is_file()
    assert common.start_run(acc, run_args(resume="latest"), out, "prog").name == "checkpoint-1"
    with pytest.raises(ValueError, match="exclude each other"):
        common.start_run(acc, run_args(resume="latest", overwrite=True), out, "prog")
    assert common.start_run(acc, run_args(overwrite=True), out, "prog") is None
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]     # the run's files went, others stay
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        common.start_run(acc, run_args(), tmp_path / "file", "prog")


def test_diffusion_scripts_check_step_and_batch_arguments():
    ok = dict(batch_size=1, max_steps=0, gradient_accumulation_steps=1, cond_drop_prob=0.1)
    common.check_diffusion_args(argparse.Namespace(**ok))
    for bad, match in (({"batch_size": 0}, "--batch-size"), ({"max_steps": -1}, "--max-steps"),
                       ({"gradient_accumulation_steps": 0}, "--gradient-accumulation-steps"),
                       ({"cond_drop_prob": 1.5}, "--cond-drop-prob: expected 0..1, got 1.5")):
        with pytest.raises(ValueError, match=match):
            common.check_diffusion_args(argparse.Namespace(**{**ok, **bad}))


def check_the_output_dir_guard(main, argv, out: Path, capsys) -> None:
    """A script's ``main(argv)`` into ``out`` holding a finished run (model, log): refused with one error line
    naming the folder and both ways out, nothing touched; with ``--overwrite`` it trains, the old files gone."""
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("the finished model")
    (out / "model.safetensors").write_bytes(b"the finished model")
    (out / "train_log.jsonl").write_text('{"step": 7, "loss": 1.0}\n')
    (out / "checkpoints" / "checkpoint-7").mkdir(parents=True)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "--resume latest" in err[0] and "--overwrite" in err[0], err
    assert (out / "model" / "config.json").read_text() == "the finished model"
    assert (out / "model.safetensors").read_bytes() == b"the finished model"
    assert (out / "train_log.jsonl").read_text() == '{"step": 7, "loss": 1.0}\n'
    assert main([*argv, "--overwrite"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert 7 not in steps and max(steps) == 1
    assert [p.name for p in common.list_checkpoints(out)] == ["checkpoint-1"]
    for old in (out / "model" / "config.json", out / "model.safetensors"):      # gone or written by the new run
        assert not old.is_file() or not old.read_bytes().startswith(b"the finished model")


def test_two_processes_main_writes_each_restores_its_own_rng(tmp_path):
    """2 processes (torch.distributed.run, gloo): one checkpoint written by the main process, holding both
    processes' generator states; after loading it each process draws what it would have drawn."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    script = Path(__file__).with_name("two_process_checkpoint.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), str(script), str(tmp_path), checkpoints.__file__],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"ok-{r}").read_text()) for r in (0, 1))
    assert a != b                                                   # each process its own generators
    state = json.loads((tmp_path / common.CHECKPOINTS / "checkpoint-1" / "state.json").read_text())
    assert len(state["rng"]) == 2 and state["num_processes"] == 2
    assert [p.name for p in (tmp_path / common.CHECKPOINTS).iterdir()] == ["checkpoint-1"]
