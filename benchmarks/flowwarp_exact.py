"""Bit-exactness check of FlowWarp speed changes: every output of many cases, before vs after.

    PYTHONPATH=<old code> python benchmarks/flowwarp_exact.py dump /tmp/old.npz [THREADS, default 1]
    PYTHONPATH=<new code> python benchmarks/flowwarp_exact.py dump /tmp/new.npz
    python benchmarks/flowwarp_exact.py compare /tmp/old.npz /tmp/new.npz

Compare dumps made with the same thread count (several threads change F.interpolate's last bit). Cases: the benchmark's 512x352 and 256x176 workloads (retarget on and off; skeleton segmentation,
telea fill, background keep / white), a target on another canvas (the background's cover fit), every ordered
pair of the bundled photos and of the turnaround sheet's figures (retarget on and off), and a stand-in learned
flow model (method "single"). Stored: the prepared mask, labels, background and its real map, and each
result's image, flow, visibility and person mask. ``compare`` lists every array that is not equal.
"""

import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_flowwarp as B  # noqa: E402

S = str(Path(__file__).resolve().parents[1] / "samples") + "/"


def dump(path, threads=1):
    torch.set_num_threads(threads)
    from posetransfer.core.warp.flowwarp import FlowWarpOptions, prepare_source, warp_prepared
    from posetransfer.core.images import load_image
    from posetransfer.core.pose.formats import read_openpose_json
    out = {}
    def run(tag, img, spose, tposes, **kw):
        tag += "".join(f"_{k}{v}" for k, v in kw.items())
        opt = FlowWarpOptions(**kw)
        with torch.inference_mode():
            p = prepare_source(img, spose, opt)
            for name in ("mask", "labels", "background", "background_real"):
                out[f"{tag}/prep_{name}"] = getattr(p, name).numpy()
            for i, t in enumerate(tposes):
                r = warp_prepared(p, t, opt)
                for name in ("image", "flow", "visibility", "person"):
                    out[f"{tag}/{i}_{name}"] = getattr(r, name).numpy()
    def sample(name):
        return load_image(S + name + ".png"), read_openpose_json(S + name + ".pose.json")[0]
    # bench cases
    for h, w in ((512, 352), (256, 176)):
        imgs, srcs, tg = B.build_workload(h, w, 1, "1->N")
        tg2 = [B.fit_cover(None, p, h, w)[1] for p in (read_openpose_json(S + "jumper.pose.json")[0],
                                                       read_openpose_json(S + "model_red_background.pose.json")[0])]
        run(f"bench{h}", imgs[0], srcs[0], tg2, retarget=True)
        run(f"bench{h}", imgs[0], srcs[0], tg2, retarget=False)
        for seg, fill, bg in (("skeleton", "pyramid", "inpaint"), ("grabcut", "telea", "inpaint"),
                              ("grabcut", "pyramid", "keep"), ("grabcut", "pyramid", "white")):
            run(f"bench{h}", imgs[0], srcs[0], tg2[:1], retarget=True, segmentation=seg, fill=fill, background=bg)
    # another canvas for the target (cover-fit background sampling)
    imgs, srcs, _ = B.build_workload(512, 352, 1, "1->N")
    t_other = B.fit_cover(None, read_openpose_json(S + "jumper.pose.json")[0], 256, 176)[1]
    run("canvas", imgs[0], srcs[0], [t_other], retarget=False)
    top = ["fashion_standing", "model_red_background", "jumper", "astronaut", "grace_hopper"]
    turn = ["turnaround/" + n for n in ("turn_front", "turn_side1", "turn_back", "turn_hero", "turn_side2",
                                        "pix_front", "pix_side1")]
    pairs = [(a, b) for a, b in itertools.permutations(top, 2)]
    pairs += [(a, b) for a, b in itertools.permutations(turn[:5], 2)] + [(turn[5], turn[6]), (turn[6], turn[5])]
    for a, b in pairs:
        ia, pa = sample(a)
        _, pb = sample(b)
        pb_s = pb if (pb.height, pb.width) == (pa.height, pa.width) else B.fit_cover(None, pb, pa.height, pa.width)[1]
        for rt in (True, False):
            try:
                run(f"{a}->{b}", ia, pa, [pb_s], retarget=rt)
            except ValueError as e:
                out[f"{a}->{b}_rt{rt}/error"] = np.array(str(e))
    # a learned-method stand-in (exercises _composite with a model's flow)
    class Est:
        flowwarp_method = "single"

        def estimate(self, src, sp, tp):
            h, w = tp.height, tp.width
            yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                    indexing="ij")
            flow = torch.stack((6 * torch.sin(yy / 23), 4 * torch.cos(xx / 17)))[None]
            vis = ((torch.sin(xx / 9) + torch.cos(yy / 11)) > -0.8).float()[None, None]
            return flow, vis
    ia, pa = sample("fashion_standing")
    pb = sample("jumper")[1]
    pb = B.fit_cover(None, pb, pa.height, pa.width)[1]
    with torch.inference_mode():
        for rt in (True, False):
            opt = FlowWarpOptions(method="single", retarget=rt)
            p = prepare_source(ia, pa, opt)
            r = warp_prepared(p, pb, opt, estimator=Est())
            for name in ("image", "flow", "visibility", "person"):
                out[f"single_rt{rt}/{name}"] = getattr(r, name).numpy()
    np.savez_compressed(path, **out)
    print(len(out), "arrays")


def compare(old, new):
    a, b = np.load(old), np.load(new)
    assert sorted(a.files) == sorted(b.files), set(a.files) ^ set(b.files)
    bad = 0
    for k in a.files:
        x, y = a[k], b[k]
        if x.dtype.kind in "US":
            same = str(x) == str(y)
            d = 0 if same else 1
        else:
            same = x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
            d = 0 if same else (np.abs(x.astype(np.float64) - y.astype(np.float64)).max() if x.shape == y.shape else "shape")
        if not same:
            bad += 1
            print("DIFF", k, x.dtype, y.dtype, d)
    print(f"{len(a.files)} arrays, {bad} differ; max abs diff 0" if not bad else f"{bad} of {len(a.files)} differ")
    return bad


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "dump":
        dump(sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 1)
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(1 if compare(sys.argv[2], sys.argv[3]) else 0)
    else:
        sys.exit(__doc__)
