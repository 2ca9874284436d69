"""Run by tests/test_train_common.py under ``torch.distributed.run --nproc_per_node 2`` (gloo, CPU): a DDP toy
saves a checkpoint (only the main process writes; every process's RNG states go into it) and loads it back
(each process gets its own generators again). Writes ``OUT/ok-RANK`` with the draws after each."""

import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

# training/checkpoints.py by path: importing the posetransfer package would load every node module (slow).
_spec = importlib.util.spec_from_file_location("checkpoints", sys.argv[2])
checkpoints = sys.modules["checkpoints"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checkpoints)


def draws():
    return [random.random(), float(np.random.rand()), float(torch.rand(()))]


def main(out: Path) -> None:
    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2
    rank = acc.process_index
    random.seed(rank), np.random.seed(rank), torch.manual_seed(0)
    net = acc.prepare(torch.nn.Linear(3, 2))
    opt = acc.prepare(torch.optim.Adam(net.parameters(), lr=0.1))
    acc.backward(net(torch.randn(4, 3)).pow(2).sum())
    opt.step()
    res = checkpoints.Resumable({"net": net}, {"adam": opt})
    path = checkpoints.save(acc, out, 1, {"kind": "toy", "step": 1}, lambda folder: None, res)
    expected = draws()
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    checkpoints.verify(path)
    assert checkpoints.load(acc, path, res) == 1
    got = draws()
    assert got == expected, (rank, got, expected)
    (out / f"ok-{rank}").write_text(json.dumps(got))
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
