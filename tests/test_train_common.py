"""training/common.py: the checkpoint folder every training script writes (state, train_config.json, model
files, pruning to --checkpoints-total-limit)."""

import json

from posetransfer.training import common


class FakeAccelerator:
    """What save_checkpoint uses of accelerate's Accelerator: save_state writes a marker file."""

    is_main_process = True

    def __init__(self):
        self.barriers = 0

    def wait_for_everyone(self):
        self.barriers += 1

    def save_state(self, folder):
        from pathlib import Path

        Path(folder).mkdir(parents=True)
        (Path(folder) / "state.bin").write_bytes(b"state")


def test_save_checkpoint_writes_state_config_model_and_keeps_the_newest(tmp_path):
    acc = FakeAccelerator()
    exported = []

    def export(folder):
        exported.append(folder.name)
        (folder / "model.safetensors").write_bytes(b"weights")

    assert common.needs_final_checkpoint(tmp_path, 0)
    for step in (5, 10, 15):
        path = common.save_checkpoint(acc, tmp_path, step, {"kind": "toy", "step": step}, export, keep=2)
        assert path == tmp_path / common.CHECKPOINTS / f"checkpoint-{step}"
        assert (path / "state.bin").is_file() and (path / "model.safetensors").is_file()
        assert json.loads((path / "train_config.json").read_text()) == {"kind": "toy", "step": step}
    assert exported == ["checkpoint-5", "checkpoint-10", "checkpoint-15"]
    assert [p.name for p in common.list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-15"]
    assert acc.barriers == 6                        # before the state and after the main process's writes
    assert not common.needs_final_checkpoint(tmp_path, 15) and common.needs_final_checkpoint(tmp_path, 16)
    # keep None (the default) or 0: every checkpoint stays; other processes write the state only.
    common.save_checkpoint(acc, tmp_path, 20, {"step": 20}, export)
    acc.is_main_process = False
    common.save_checkpoint(acc, tmp_path, 25, {"step": 25}, export, keep=1)
    assert [p.name for p in common.list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-15",
                                                                   "checkpoint-20", "checkpoint-25"]
    assert not (tmp_path / common.CHECKPOINTS / "checkpoint-25" / "train_config.json").exists()
    assert exported[-1] == "checkpoint-20"


def test_diffusion_scripts_check_step_and_batch_arguments():
    import argparse

    import pytest

    ok = dict(batch_size=1, max_steps=0, gradient_accumulation_steps=1, cond_drop_prob=0.1)
    common.check_diffusion_args(argparse.Namespace(**ok))
    for bad, match in (({"batch_size": 0}, "--batch-size"), ({"max_steps": -1}, "--max-steps"),
                       ({"gradient_accumulation_steps": 0}, "--gradient-accumulation-steps"),
                       ({"cond_drop_prob": 1.5}, "--cond-drop-prob: expected 0..1, got 1.5")):
        with pytest.raises(ValueError, match=match):
            common.check_diffusion_args(argparse.Namespace(**{**ok, **bad}))
