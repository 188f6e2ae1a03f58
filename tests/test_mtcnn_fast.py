"""deid's batched MTCNN stages give facenet-pytorch's own detections, box for box."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
from facenet_pytorch import MTCNN
from torchvision.ops import box_iou

from deid.detect.mtcnn_fast import detect_faces

from .conftest import scene


@pytest.fixture(scope="module")
def nets() -> tuple[MTCNN, MTCNN]:
    """facenet-pytorch's MTCNN as shipped, and a copy with channels-last weights (as deid
    runs it)."""
    reference = MTCNN(min_face_size=12, keep_all=True, post_process=False, device="cpu")
    fast = copy.deepcopy(reference)
    for net in (fast.pnet, fast.rnet, fast.onet):
        net.to(memory_format=torch.channels_last)
    return reference, fast


def _sorted(boxes: np.ndarray, *rest: np.ndarray) -> tuple[np.ndarray, ...]:
    order = np.lexsort((boxes[:, 1], boxes[:, 0]))
    return (boxes[order], *(r[order] for r in rest))


@pytest.mark.parametrize(
    ("name", "side", "min_face"),
    [
        ("crowd_stadium_fans.jpg", 640, 12),  # a crowd of small faces
        ("group_friends_stoop.jpg", 960, 24),  # deid's 2x-enlarged search: min face 2 x 12
        ("couple_two_faces.jpg", 320, 12),
    ],
)
def test_the_same_faces_as_facenet_pytorch(
    nets: tuple[MTCNN, MTCNN], name: str, side: int, min_face: int
) -> None:
    reference, fast = nets
    img = scene(name)
    h, w = img.shape[:2]
    scale = side / max(h, w)
    img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    batch = np.stack([img, img[:, ::-1].copy(), np.zeros_like(img)])
    reference.min_face_size = min_face
    with torch.inference_mode():
        want_boxes, want_probs, want_points = reference.detect(batch, landmarks=True)
        got = detect_faces(
            batch, fast.pnet, fast.rnet, fast.onet, min_face, reference.thresholds,
            reference.factor, torch.device("cpu"),
        )  # fmt: skip
    assert len(got) == 3
    assert want_boxes[2] is None and len(got[2][0]) == 0  # the black frame: no face
    for i in range(2):
        boxes, probs, points = got[i]
        assert boxes.dtype == np.float32 and points.shape == (len(boxes), 5, 2)
        want = np.asarray(want_boxes[i], np.float32)
        assert len(boxes) == len(want) >= 2
        wb, wp, wl = _sorted(want, np.asarray(want_probs[i], np.float32),
                             np.asarray(want_points[i], np.float32))  # fmt: skip
        gb, gp, gl = _sorted(boxes, probs, points)
        np.testing.assert_allclose(gb, wb, atol=1e-2)
        np.testing.assert_allclose(gp, wp, atol=1e-4)
        np.testing.assert_allclose(gl, wl, atol=1e-2)


def test_a_frame_with_no_candidate_at_all(nets: tuple[MTCNN, MTCNN]) -> None:
    _, fast = nets
    flat = np.full((2, 48, 64, 3), 128, np.uint8)
    with torch.inference_mode():
        got = detect_faces(flat, fast.pnet, fast.rnet, fast.onet, 12, [0.6, 0.7, 0.7], 0.709,
                           torch.device("cpu"))  # fmt: skip
    assert [len(b) for b, _, _ in got] == [0, 0]
    assert all(p.shape == (0, 5, 2) for _, _, p in got)


def test_the_pyramid_from_the_frame_finds_the_faces_of_the_enlarged_one(
    nets: tuple[MTCNN, MTCNN],
) -> None:
    """``pyramid_from``: P-Net's levels of a 2x-enlarged photo are resampled from the photo
    itself, at the sizes the enlarged copy sets (so boxes stay in its pixels), and every face
    found with the pyramid of the copy is found (on this photo, one more: 7 against 6)."""
    _, fast = nets
    img = scene("group_friends_stoop.jpg")
    h, w = img.shape[:2]
    scale = 480 / max(h, w)
    img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    big = cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    seen: dict[str, list[tuple[int, int]]] = {"copy": [], "frame": []}
    pnet = fast.pnet

    def run(key: str, source: list[np.ndarray] | None) -> tuple[np.ndarray, ...]:
        def hook(_mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen[key].append(tuple(args[0].shape[-2:]))

        handle = pnet.register_forward_pre_hook(hook)
        try:
            with torch.inference_mode():
                return detect_faces([big], pnet, fast.rnet, fast.onet, 24, [0.6, 0.6, 0.7],
                                    0.709, torch.device("cpu"), pyramid_from=source)[0]  # fmt: skip
        finally:
            handle.remove()

    want = run("copy", None)
    got = run("frame", [img])
    assert seen["frame"] == seen["copy"] and seen["copy"][0] == (img.shape[0] + 1, img.shape[1] + 1)
    sure_want, sure_got = want[0][want[1] > 0.9], got[0][got[1] > 0.9]
    assert len(sure_want) >= 4 and len(sure_got) >= len(sure_want)
    # every face the copy's pyramid is sure of, found again (boxes in the enlarged pixels)
    iou = box_iou(torch.as_tensor(sure_want), torch.as_tensor(sure_got))
    assert bool((iou.max(1).values > 0.7).all())
    with pytest.raises(ValueError, match="pyramid_from: expected 1 frames"):
        detect_faces([big], pnet, fast.rnet, fast.onet, 24, [0.6, 0.6, 0.7], 0.709,
                     torch.device("cpu"), pyramid_from=[img, img])  # fmt: skip
