"""Dense flow fields: the project's ONE flow convention and the small operations on it.

Convention (used by every module, node and model of the project):

* A flow is a float tensor ``(B, 2, H, W)`` on the TARGET (output) grid. Channel 0 is ``dx``, channel 1 is
  ``dy``, in PIXELS of the SOURCE image. It is a *backward* flow: output pixel ``(x, y)`` takes the source
  value at ``(x + dx, y + dy)``.
* Pixel ``(i, j)`` has coordinate ``x = j, y = i`` (its centre), as in OpenPose keypoints and cv2. Sampling
  uses ``grid_sample(..., align_corners=False)``, so a source of width ``Ws`` spans ``x`` in
  ``[-0.5, Ws - 0.5]``. Source and target may differ in size: the offset is measured from the target
  pixel's coordinate to the source position, both in pixels.
* A *grid* is the same thing in ``grid_sample``'s normalised form ``(B, H, W, 2)`` in ``[-1, 1]``;
  *coords* are absolute source positions ``(B, 2, H, W)`` in pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _check_flow(flow: torch.Tensor, what: str = "flow") -> None:
    if not torch.is_tensor(flow) or flow.ndim != 4 or flow.shape[1] != 2:
        shape = tuple(flow.shape) if torch.is_tensor(flow) else type(flow).__name__
        raise ValueError(f"{what}: expected a tensor of shape (B, 2, H, W), got {shape}")


def base_coords(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(1, 2, H, W)`` pixel coordinates of every pixel: channel 0 is x (column), channel 1 is y (row)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                            torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return torch.stack((xs, ys))[None]


def flow_to_coords(flow: torch.Tensor) -> torch.Tensor:
    """Absolute source positions ``(B, 2, H, W)`` in pixels."""
    _check_flow(flow)
    return flow + base_coords(*flow.shape[-2:], device=flow.device, dtype=flow.dtype)


def coords_to_flow(coords: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`flow_to_coords`."""
    _check_flow(coords, "coords")
    return coords - base_coords(*coords.shape[-2:], device=coords.device, dtype=coords.dtype)


def coords_to_grid(coords: torch.Tensor, source_size: tuple[int, int]) -> torch.Tensor:
    """Pixel positions in a source of ``(height, width)`` -> ``grid_sample`` grid ``(B, H, W, 2)``."""
    hs, ws = source_size
    if coords.requires_grad or not coords.is_floating_point():
        gx = (2 * coords[:, 0] + 1) / ws - 1
        gy = (2 * coords[:, 1] + 1) / hs - 1
        return torch.stack((gx, gy), dim=-1)
    # The same operations on both channels at once, in place, returned as a (B, H, W, 2) view of the
    # (B, 2, H, W) result: grid_sample reads either layout (same values), and the interleaving copy of a
    # stack costs more than all the arithmetic.
    grid = coords * 2
    grid += 1
    grid[:, 0] /= ws
    grid[:, 1] /= hs
    grid -= 1
    return grid.permute(0, 2, 3, 1)


def grid_to_coords(grid: torch.Tensor, source_size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`coords_to_grid`."""
    hs, ws = source_size
    x = ((grid[..., 0] + 1) * ws - 1) / 2
    y = ((grid[..., 1] + 1) * hs - 1) / 2
    return torch.stack((x, y), dim=1)


def flow_to_grid(flow: torch.Tensor, source_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Flow -> ``grid_sample`` grid; ``source_size`` defaults to the flow's own size."""
    return coords_to_grid(flow_to_coords(flow), source_size or tuple(flow.shape[-2:]))


def grid_to_flow(grid: torch.Tensor, source_size: tuple[int, int] | None = None) -> torch.Tensor:
    """``grid_sample`` grid -> flow; ``source_size`` defaults to the grid's own size."""
    return coords_to_flow(grid_to_coords(grid, source_size or tuple(grid.shape[1:3])))


def warp(source: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear",
         padding_mode: str = "border") -> torch.Tensor:
    """Backward-warp ``source`` ``(B, C, Hs, Ws)`` by ``flow`` ``(B, 2, H, W)`` -> ``(B, C, H, W)``.

    A single source may serve a batch of flows (B = 1 is broadcast). Positions outside the source take
    the border value (``padding_mode="border"``) or zeros; :func:`inside_mask` tells which ones.
    """
    _check_flow(flow)
    if not torch.is_tensor(source) or source.ndim != 4:
        raise ValueError(f"source: expected a tensor (B, C, H, W), got "
                         f"{tuple(source.shape) if torch.is_tensor(source) else type(source).__name__}")
    if source.shape[0] != flow.shape[0]:
        if source.shape[0] != 1:
            raise ValueError(f"source batch {source.shape[0]} does not match flow batch {flow.shape[0]}")
        source = source.expand(flow.shape[0], *source.shape[1:])
    grid = flow_to_grid(flow.to(source.dtype), tuple(source.shape[-2:]))
    return F.grid_sample(source, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def inside_mask(flow: torch.Tensor, source_size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(B, 1, H, W)`` float: 1 where the sampled position lies inside the source image, else 0."""
    hs, ws = source_size or tuple(flow.shape[-2:])
    c = flow_to_coords(flow)
    ok = (c[:, 0] >= -0.5) & (c[:, 0] <= ws - 0.5) & (c[:, 1] >= -0.5) & (c[:, 1] <= hs - 0.5)
    return ok[:, None].to(flow.dtype)


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The flow equal to warping by ``first`` and then by ``second``.

    ``warp(warp(img, first), second) == warp(img, compose(first, second))`` (up to interpolation):
    output pixel ``p`` reads ``img`` at ``q + first(q)`` with ``q = p + second(p)``. ``first`` lives on the
    grid ``second`` samples from.
    """
    _check_flow(first, "first")
    _check_flow(second, "second")
    return second + warp(first, second, padding_mode="border")


def affine_to_flow(matrix: torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Flow of an affine map ``(B, 2, 3)`` (or ``(2, 3)``) that sends TARGET pixel coordinates to SOURCE ones.

    ``size`` is the target ``(height, width)``.
    """
    m = torch.as_tensor(matrix, dtype=torch.float32)
    if m.ndim == 2:
        m = m[None]
    if m.shape[-2:] != (2, 3):
        raise ValueError(f"matrix: expected shape (B, 2, 3) or (2, 3), got {tuple(m.shape)}")
    xy = base_coords(*size, device=m.device, dtype=m.dtype)  # (1, 2, H, W)
    coords = torch.einsum("bij,jhw->bihw", m[:, :, :2], xy[0]) + m[:, :, 2, None, None]
    return coords - xy


def resize_flow(flow: torch.Tensor, size: tuple[int, int], source_scale: tuple[float, float] | None = None,
                mode: str = "bilinear") -> torch.Tensor:
    """Resize a flow to ``size`` ``(height, width)``, scaling its vectors with it.

    By default the source is assumed to be resized by the same factors as the target grid (the usual
    case: flow between two images of one size). Pass ``source_scale = (sy, sx)`` when the source image is
    scaled differently. Pixel centres map as ``x' = (x + 0.5) * s - 0.5``, the convention of cv2.resize.
    """
    _check_flow(flow)
    h, w = flow.shape[-2:]
    ty, tx = size[0] / h, size[1] / w
    sy, sx = source_scale or (ty, tx)
    # Interpolate the offsets (not the absolute coordinates: clamping at the border would bend them), then
    # map: new offset = s * old offset + (x' + 0.5) * (s / t - 1), x' the new pixel coordinate.
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    f = F.interpolate(flow, size=size, mode=mode, **kwargs)
    xy = base_coords(*size, device=flow.device, dtype=flow.dtype)
    dx = f[:, 0] * sx + (xy[:, 0] + 0.5) * (sx / tx - 1)
    dy = f[:, 1] * sy + (xy[:, 1] + 0.5) * (sy / ty - 1)
    return torch.stack((dx, dy), dim=1)


def flow_to_color(flow: torch.Tensor, max_magnitude: float | None = None) -> torch.Tensor:
    """Colour picture of a flow, ``(B, 3, H, W)`` in 0..1: hue = direction, saturation = magnitude.

    Zero flow is white (as in the Middlebury/Sintel pictures). ``max_magnitude`` defaults to the largest
    magnitude in each frame.
    """
    _check_flow(flow)
    dx, dy = flow[:, 0], flow[:, 1]
    mag = torch.sqrt(dx * dx + dy * dy)
    if max_magnitude is None:
        scale = mag.flatten(1).amax(dim=1).clamp_min(1e-6)[:, None, None]
    else:
        scale = torch.full_like(mag[:, :1, :1], float(max_magnitude))
    sat = (mag / scale).clamp(0, 1)
    hue = (torch.atan2(-dy, -dx) / math.pi + 1) / 2  # 0..1
    # HSV -> RGB with value 1.
    k = torch.stack([(5 + hue * 6) % 6, (3 + hue * 6) % 6, (1 + hue * 6) % 6], dim=1)
    rgb = 1 - sat[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return rgb
