"""MTCNN's three stages, as facenet-pytorch runs them, with the work batched.

facenet-pytorch's ``detect_face`` cuts every candidate box of the P-Net out of the frame and
resamples it to 24x24 (then 48x48) in its own ``interpolate`` call: with faces searched from
12 px on a frame enlarged 2x, the P-Net passes several hundred candidates per frame. Here
the candidates of one clipped size are resampled together, in one ``interpolate`` call (the
same area averaging, so the same crops), and the three networks run on channels-last
tensors (about 2x faster convolutions on the CPU, the same outputs to float rounding).
Everything else,
the pyramid, the thresholds, the NMS steps and the box regression, is facenet-pytorch's own
code, so the detections are the same (``tests/test_mtcnn_fast.py`` compares them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import (
    batched_nms_numpy,
    bbreg,
    generateBoundingBox,
    imresample,
    pad,
    rerec,
)
from torch import nn
from torchvision.ops.boxes import batched_nms

RawDetections = tuple[np.ndarray, np.ndarray, np.ndarray]
_CL = torch.channels_last
_NET_BATCH = 512  # crops per R/O-Net call, as facenet-pytorch (bounds GPU memory)


def detect_faces(
    images: Sequence[np.ndarray] | np.ndarray,
    pnet: nn.Module,
    rnet: nn.Module,
    onet: nn.Module,
    min_face_size: float,
    thresholds: Sequence[float],
    factor: float,
    device: torch.device,
    pyramid_from: Sequence[np.ndarray] | np.ndarray | None = None,
) -> list[RawDetections]:
    """Faces in same-size RGB frames: per frame ``(boxes (N, 4), probs (N,), points (N, 5, 2))``
    as float32 arrays, unfiltered (facenet-pytorch's ``MTCNN.detect`` without its sorting).

    ``pyramid_from``: the same frames at another size (those ``images`` were enlarged from).
    P-Net's pyramid levels, whose sizes ``images`` set, are then area-resampled from them
    instead of from ``images`` (for a 2x enlargement, a quarter of the pixels to read); the
    R- and O-Nets still see their crops of ``images``.
    """
    dtype = next(pnet.parameters()).dtype
    plain = _nchw(images, dtype, device)
    n_img = plain.shape[0]
    source = plain
    if pyramid_from is not None:
        source = _nchw(pyramid_from, dtype, device)
        if source.shape[:2] != plain.shape[:2]:
            raise ValueError(
                f"pyramid_from: expected {n_img} frames of {plain.shape[1]} channels, "
                f"got {tuple(source.shape[:2])}"
            )

    boxes, image_inds = _proposals(
        source, pnet, min_face_size, thresholds[0], factor, size=plain.shape[2:]
    )
    points = torch.zeros(0, 5, 2, device=device)
    if len(boxes) > 0:
        crops = _crops(plain, boxes, image_inds, 24)
        reg, prob = _run(rnet, crops)[:2]
        score = prob[:, 1]
        keep = score > thresholds[1]
        boxes = torch.cat((boxes[keep, :4], score[keep].unsqueeze(1)), dim=1)
        image_inds, reg = image_inds[keep], reg[keep]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds, reg = boxes[pick], image_inds[pick], reg[pick]
        boxes = rerec(bbreg(boxes, reg))
    if len(boxes) > 0:
        crops = _crops(plain, boxes, image_inds, 48)
        reg, marks, prob = _run(onet, crops)
        score = prob[:, 1]
        keep = score > thresholds[2]
        marks = marks[keep].permute(1, 0)
        boxes = torch.cat((boxes[keep, :4], score[keep].unsqueeze(1)), dim=1)
        image_inds, reg = image_inds[keep], reg[keep]
        w_i = boxes[:, 2] - boxes[:, 0] + 1
        h_i = boxes[:, 3] - boxes[:, 1] + 1
        points_x = w_i.repeat(5, 1) * marks[:5, :] + boxes[:, 0].repeat(5, 1) - 1
        points_y = h_i.repeat(5, 1) * marks[5:10, :] + boxes[:, 1].repeat(5, 1) - 1
        points = torch.stack((points_x, points_y)).permute(2, 1, 0)
        boxes = bbreg(boxes, reg)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
        boxes, image_inds, points = boxes[pick], image_inds[pick], points[pick]
    else:
        boxes = boxes[:, :5]
    out_boxes = boxes.cpu().numpy().astype(np.float32)
    out_points = points.cpu().numpy().astype(np.float32)
    inds = image_inds.cpu().numpy()
    result = []
    for i in range(n_img):
        sel = inds == i
        b = out_boxes[sel]
        result.append((b[:, :4].copy(), b[:, 4].copy(), out_points[sel].reshape(-1, 5, 2)))
    return result


def _nchw(
    images: Sequence[np.ndarray] | np.ndarray, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(H, W, 3) frames as one (N, 3, H, W) tensor. NCHW: torch's area resampling (the
    pyramid, the crops) is faster on it; the networks get channels-last copies."""
    frames = torch.as_tensor(np.ascontiguousarray(np.stack(images)), device=device)
    return frames.permute(0, 3, 1, 2).to(dtype).contiguous()


def _proposals(
    imgs: torch.Tensor,
    pnet: nn.Module,
    min_face_size: float,
    threshold: float,
    factor: float,
    size: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """P-Net over the image pyramid: candidate squares (x1, y1, x2, y2, score) and their frame,
    in the pixels of an image of ``size`` (h, w; default: ``imgs``' own), whose pyramid the
    levels resampled from ``imgs`` are."""
    h, w = (imgs.shape[2], imgs.shape[3]) if size is None else (int(size[0]), int(size[1]))
    m = 12.0 / min_face_size
    minl = min(h, w) * m
    scales = []
    scale = m
    while minl >= 12:
        scales.append(scale)
        scale *= factor
        minl *= factor
    boxes, image_inds, picks = [], [], []
    offset = 0
    for scale in scales:
        level = imresample(imgs, (int(h * scale + 1), int(w * scale + 1)))
        level = ((level - 127.5) * 0.0078125).contiguous(memory_format=_CL)
        reg, probs = pnet(level)
        found, inds = generateBoundingBox(reg, probs[:, 1], scale, threshold)
        boxes.append(found)
        image_inds.append(inds)
        picks.append(batched_nms(found[:, :4], found[:, 4], inds, 0.5) + offset)
        offset += found.shape[0]
    all_boxes = torch.cat(boxes)[torch.cat(picks)]
    all_inds = torch.cat(image_inds)[torch.cat(picks)]
    pick = batched_nms(all_boxes[:, :4], all_boxes[:, 4], all_inds, 0.7)
    b, inds = all_boxes[pick], all_inds[pick]
    regw = b[:, 2] - b[:, 0]
    regh = b[:, 3] - b[:, 1]
    q = torch.stack(
        [
            b[:, 0] + b[:, 5] * regw,
            b[:, 1] + b[:, 6] * regh,
            b[:, 2] + b[:, 7] * regw,
            b[:, 3] + b[:, 8] * regh,
            b[:, 4],
        ]
    ).permute(1, 0)
    return rerec(q), inds


def _crops(
    imgs: torch.Tensor,
    boxes: torch.Tensor,
    image_inds: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Every box's region (clipped to the frame as facenet-pytorch's ``pad`` clips it)
    area-resampled to ``size`` x ``size`` and normalised as the networks expect: boxes of
    one clipped size are resampled in one call (facenet-pytorch makes one call a box)."""
    h, w = imgs.shape[2], imgs.shape[3]
    y, ey, x, ex = pad(boxes, w, h)
    # facenet-pytorch drops a box whose clipped region is empty (and then misaligns the
    # rest); a one-pixel region keeps every box in place and is scored as the nothing it is
    ey = np.maximum(ey, y)
    ex = np.maximum(ex, x)
    hh, ww = ey - y + 1, ex - x + 1
    inds = image_inds.cpu().numpy()
    out = torch.empty((len(y), imgs.shape[1], size, size), dtype=imgs.dtype, device=imgs.device)
    groups: dict[tuple[int, int], list[int]] = {}
    for k, key in enumerate(zip(hh.tolist(), ww.tolist(), strict=True)):
        groups.setdefault(key, []).append(k)
    for (gh, gw), members in groups.items():
        stack = torch.stack(
            [imgs[inds[k], :, y[k] - 1 : y[k] - 1 + gh, x[k] - 1 : x[k] - 1 + gw] for k in members]
        )
        out[torch.as_tensor(members, device=imgs.device)] = imresample(stack, (size, size))
    return ((out - 127.5) * 0.0078125).contiguous(memory_format=_CL)


def _run(net: nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
    outs = [net(crops[i : i + _NET_BATCH]) for i in range(0, len(crops), _NET_BATCH)]
    return tuple(torch.cat(v, dim=0) for v in zip(*outs, strict=True))
