"""gallery/make_workflow_thumbnails.py redraws the FlowWarp workflows' thumbnails from the bundled photos."""

import importlib.util
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_thumbnails_are_redrawn(tmp_path):
    spec = importlib.util.spec_from_file_location("make_workflow_thumbnails",
                                                  ROOT / "gallery" / "make_workflow_thumbnails.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--out", str(tmp_path)])
    names = sorted(p.stem for p in tmp_path.glob("*.jpg"))
    assert names == ["flowwarp_basic", "flowwarp_inpaint_sd", "flowwarp_refine_pcdms"]
    for name in names:  # each names a workflow of workflows/ and is as wide as the shipped thumbnails
        assert (ROOT / "workflows" / f"{name}.json").is_file()
        thumb = cv2.imread(str(tmp_path / f"{name}.jpg"))
        assert thumb.shape[1] == script.WIDTH
    basic = cv2.imread(str(tmp_path / "flowwarp_basic.jpg")).astype(np.float32)
    side = basic.shape[0]
    source, result = basic[:, :side], basic[:, -side:]
    assert np.abs(source - result).mean() > 10  # the person moved: the result is not the source photo
