"""PCDMs Refine takes any coarse image (FlowWarp's warp, odd sizes, other aspect ratios, batches) and returns
the coarse image's size; the coarse image steers the result. Tiny refine model, CPU."""

from __future__ import annotations

import sys

import pytest
import torch

import comfy_doubles
from comfy_doubles import PCDMS_FILES, SAMPLES, TinyDinoVision, TinyVAE

from posetransfer.core.warp.flowwarp import FlowWarpOptions, flow_warp
from posetransfer.core.images import load_image
from posetransfer.core.pose.formats import read_openpose_json
from posetransfer.nodes import pcdms_nodes as pn

FAST = {"steps": 2, "resolution": 64, "cfg": 2.0, "seed": 3}


@pytest.fixture(scope="module")
def refine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refine_models")
    from posetransfer.core.pcdms import save_pcdms_safetensors

    save_pcdms_safetensors(comfy_doubles.tiny_pcdms("refine", 3), folder / PCDMS_FILES["refine"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("comfy", "comfy.model_management", "comfy.utils", "folder_paths"):
            mp.setitem(sys.modules, name, None)
        mp.setenv("POSETRANSFER_MODELS_DIR", str(folder))
        model = pn.PoseTransferPCDMsLoader().load(PCDMS_FILES["refine"])[0]
        encoders = pn.PoseTransferPCDMsEncoders().bundle("last_hidden_state", None, TinyDinoVision())[0]
        node, vae = pn.PoseTransferPCDMsRefine(), TinyVAE()
        yield lambda coarse, source, **kw: node.refine(model, encoders, vae, coarse, source, **{**FAST, **kw})[0]
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photo():
    return torch.from_numpy(load_image(SAMPLES / "fashion_standing.png"))[None]


def test_flowwarp_output_as_coarse_image(refine, photo):
    source = read_openpose_json(SAMPLES / "fashion_standing.pose.json")
    target = read_openpose_json(SAMPLES / "jumper.pose.json")
    warped = flow_warp([photo[0]], source[:1], target[:1], FlowWarpOptions(retarget=True))[0].image
    coarse = warped.permute(1, 2, 0)[None].float()
    out = refine(coarse, photo)
    assert out.shape == coarse.shape == (1, 350, 350, 3)
    assert torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("shape, layout", [((1, 123, 77, 3), "pad"), ((1, 61, 190, 3), "squash"),
                                           ((2, 90, 90, 3), "pad")])
def test_any_size_and_batch(refine, photo, shape, layout):
    coarse = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    out = refine(coarse, photo, layout=layout)
    assert out.shape == shape


def test_the_coarse_image_steers_the_result(refine, photo):
    a = torch.zeros((1, 64, 48, 3))
    b = torch.ones((1, 64, 48, 3))
    assert not torch.equal(refine(a, photo), refine(b, photo))
    torch.testing.assert_close(refine(a, photo), refine(a, photo), rtol=0, atol=0)
