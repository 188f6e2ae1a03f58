"""The stages of a run, each a small function over the types of :mod:`deid.types`: detect,
crop, classify and attack (:func:`attack_faces`, which :mod:`deid.pipeline.protect` wraps as
one kind of protection step). Verification and repair on the written file are in
:mod:`deid.pipeline.verify`; the drivers (:mod:`deid.pipeline.image`,
:mod:`deid.pipeline.video`) compose them. No maths lives here.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from deid.align import crop_faces, gray_like, is_gray
from deid.attacks import AttackResult
from deid.attacks.base import Attack, to_uint8
from deid.detect import Detector
from deid.heap import trim
from deid.models import FaceClassifier
from deid.types import Detections, FaceCrop

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------
def detect(detector: Detector, frames: Sequence[np.ndarray]) -> list[Detections]:
    """Stage: faces of every frame (one batched detector call); then the C heap's free pages
    (the detector's pyramid) go back to the system (:mod:`deid.heap`)."""
    dets = detector.detect(frames)
    trim()
    return dets


def crop(
    frames: Sequence[np.ndarray], dets: Sequence[Detections], classifier: FaceClassifier
) -> list[FaceCrop]:
    """Stage: native-resolution crops with their alignment, by the classifier's crop convention."""
    return crop_faces(
        frames, dets, np.asarray(classifier.meta.template), tuple(classifier.meta.input_size)
    )


def to_batch(crops: Sequence[FaceCrop], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack crops of different sizes: (B, 3, H, W) float in [0, 1], edge-padded at the bottom
    and right, and (B, 2, 3) alignments adjusted for the padding."""
    hmax = max(c.pixels.shape[0] for c in crops)
    wmax = max(c.pixels.shape[1] for c in crops)
    x = torch.zeros((len(crops), 3, hmax, wmax))
    thetas = []
    for i, c in enumerate(crops):
        h, w = c.pixels.shape[:2]
        # edge padding: samples near a frame-clipped border see what a single crop would
        padded = np.pad(c.pixels, ((0, hmax - h), (0, wmax - w), (0, 0)), mode="edge")
        x[i] = torch.from_numpy(padded).permute(2, 0, 1).float().div_(255.0)
        # region-normalised n -> padded-normalised (n + 1) * w / W - 1
        a = np.array([[w / wmax, 0, w / wmax - 1], [0, h / hmax, h / hmax - 1], [0, 0, 1]])
        thetas.append((a @ np.vstack([c.theta, [0, 0, 1]]))[:2])
    return x.to(device), torch.tensor(np.stack(thetas), dtype=torch.float32, device=device)


#: The most of a batch's pixels that may be padding (:func:`batches`).
MAX_PADDING = 0.25


def batches(
    crops: Sequence[FaceCrop],
    size: int,
    max_padding: float | None = None,
    max_pixels: int | Callable[[], int | None] | None = None,
) -> Iterator[list[int]]:
    """Indices of crops in batches of similar size: in order of area, at most ``size`` crops
    a batch, and a crop that would make more than ``max_padding`` of its batch's pixels
    padding (:func:`to_batch` pads every crop to the batch's largest height and width)
    starts the next batch. Without the bound, a batch of 32 faces of 30-140 px was a third
    padding, which every attack step computes on. ``max_padding`` None: :data:`MAX_PADDING`
    (1: batches of ``size`` whatever the sizes). ``max_pixels``: the most padded pixels a
    batch may hold, or a function asked as each batch starts (:meth:`MemoryBudget.max_pixels`,
    which learns from the batches before); a single larger crop is a batch of its own."""
    keep = 1 - (MAX_PADDING if max_padding is None else max_padding)
    order = sorted(
        range(len(crops)), key=lambda i: crops[i].pixels.shape[0] * crops[i].pixels.shape[1]
    )

    def pixel_limit() -> int | None:
        return max_pixels() if callable(max_pixels) else max_pixels

    batch: list[int] = []
    hmax = wmax = area = 0
    limit = pixel_limit()
    for i in order:
        h, w = crops[i].pixels.shape[:2]
        nh, nw = max(hmax, h), max(wmax, w)
        if batch and (
            len(batch) >= size
            or (len(batch) + 1) * nh * nw * keep > area + h * w
            or (limit is not None and (len(batch) + 1) * nh * nw > limit)
        ):
            yield batch
            batch, nh, nw, area = [], h, w, 0
            limit = pixel_limit()  # after the batch ran: what it taught the budget
        batch.append(i)
        hmax, wmax, area = nh, nw, area + h * w
    if batch:
        yield batch


def padded_pixels(crops: Sequence[FaceCrop]) -> int:
    """The pixels :func:`to_batch` makes of ``crops``: each padded to the largest size."""
    return (
        len(crops) * max(c.pixels.shape[0] for c in crops) * max(c.pixels.shape[1] for c in crops)
    )


def usable_memory(device: torch.device) -> int:
    """Bytes a CUDA device can still give: free on the card plus what PyTorch's allocator
    holds and is not using."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


class MemoryBudget:
    """The batch size of an attack chosen from the device's free memory.

    An attack's memory grows with the padded pixels of its batch (times its EOT copies, its
    steps' graphs): the budget learns the attack's peak bytes per padded pixel from the
    batches it runs (and from a batch that ran out of memory: at least the usable memory
    over its pixels), and bounds each later batch to ``headroom`` of the usable memory at
    the time. The first batch, knowing nothing yet, is bounded by ``batch_size`` alone; an
    out-of-memory error there is met by halving (:func:`halving_on_oom`) and is not met
    again. ``usable`` returns the usable bytes (default :func:`usable_memory`: CUDA only;
    on a CPU there is no budget, as the machine's RAM is the operating system's to share).
    """

    def __init__(
        self,
        device: torch.device,
        headroom: float = 0.8,
        usable: Callable[[], int] | None = None,
    ) -> None:
        self.device = device
        self.headroom = headroom
        self._usable = usable or (lambda: usable_memory(device))
        self.bytes_per_pixel = 0.0

    def max_pixels(self) -> int | None:
        """The most padded pixels the next batch may hold (None: not known yet)."""
        if self.bytes_per_pixel <= 0:
            return None
        return max(1, int(self.headroom * self._usable() / self.bytes_per_pixel))

    def ran(self, pixels: int, peak_bytes: int) -> None:
        """A batch of ``pixels`` padded pixels peaked at ``peak_bytes`` above its start."""
        learnt = peak_bytes / max(pixels, 1)
        if learnt > 1.1 * self.bytes_per_pixel:  # the first figure, or a much larger one
            bound = int(self.headroom * self._usable() / learnt)
            log.info(
                "attack batches on %s: %.0f bytes a padded pixel, at most %d px a batch "
                "(%d faces of 64x64)",
                self.device,
                learnt,
                bound,
                bound // 4096,
            )
        self.bytes_per_pixel = max(self.bytes_per_pixel, learnt)

    def ran_out(self, pixels: int, usable: int | None = None) -> None:
        """A batch of ``pixels`` padded pixels did not fit in ``usable`` bytes (default: what
        is usable now)."""
        free = self._usable() if usable is None else usable
        self.bytes_per_pixel = max(self.bytes_per_pixel, free / max(pixels, 1))

    def measure(self, pixels: int, run: Callable[[], None]) -> None:
        """``run()``, learning from its peak memory (CUDA) or from its running out of the
        memory usable when it started (the failed batch may still hold some when it raises)."""
        cuda = self.device.type == "cuda"
        before = self._usable()
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        try:
            run()
        except Exception as e:
            if is_out_of_memory(e):
                self.ran_out(pixels, before)
            raise
        if cuda:
            self.ran(pixels, torch.cuda.max_memory_allocated(self.device) - base)


_BUDGETS: weakref.WeakKeyDictionary[Any, MemoryBudget] = weakref.WeakKeyDictionary()


def budget_for(attack: Any, device: torch.device) -> MemoryBudget | None:
    """The :class:`MemoryBudget` of ``attack`` on ``device`` (kept while the attack lives, so
    what one protection call learnt bounds the next); None on a CPU."""
    if device.type != "cuda":
        return None
    b = _BUDGETS.get(attack)
    if b is None or b.device != device:
        b = _BUDGETS[attack] = MemoryBudget(device)
    return b


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an accelerator running out of memory (CUDA's, or another backend's
    RuntimeError saying so)."""
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower()
    )


def halving_on_oom(run: Callable[[list[int]], None], idx: list[int]) -> None:
    """``run(idx)``; if the device runs out of memory, ``run`` each half instead (and so on
    down to one face, which is re-raised): a batch too large for the GPU's free memory is
    met by smaller batches, never by a crash of the job."""
    try:
        run(idx)
    except Exception as e:
        if not is_out_of_memory(e) or len(idx) <= 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        mid = len(idx) // 2
        log.warning(
            "out of memory on a batch of %d faces: trying %d and %d", len(idx), mid, len(idx) - mid
        )
        halving_on_oom(run, idx[:mid])
        halving_on_oom(run, idx[mid:])


@torch.no_grad()
def classify(
    classifier: FaceClassifier,
    crops: Sequence[FaceCrop],
    device: torch.device,
    batch_size: int = 64,
) -> torch.Tensor:
    """Stage: (N, K) logits of the clean crops."""
    out = torch.zeros((len(crops), classifier.num_classes))
    for idx in batches(crops, batch_size):
        x, theta = to_batch([crops[i] for i in idx], device)
        out[idx] = classifier(x, theta).float().cpu()
    return out


class TargetMemory:
    """Keeps a face's target while its box overlaps the same face in the previous frame
    (simple IoU association, for images and folders; videos are tracked over the whole
    clip by :mod:`deid.pipeline.tracking`)."""

    def __init__(self, iou: float = 0.3) -> None:
        self.iou = iou
        self.prev: list[tuple[np.ndarray, int, int]] = []  # (box, track, target)
        self.next_track = 0
        self.kept: dict[Any, Any] = {}  # what a protector keeps per track (ProtectContext)

    def assign(
        self, frame_crops: Sequence[FaceCrop], proposed: torch.Tensor, preds: torch.Tensor
    ) -> torch.Tensor:
        """Targets for one frame's faces; sets each crop's ``track``."""
        targets = proposed.clone()
        taken: set[int] = set()
        current = []
        for j, c in enumerate(frame_crops):
            best, best_iou = -1, self.iou
            for k, (box, _track, _t) in enumerate(self.prev):
                o = iou(c.box, box)
                if k not in taken and o >= best_iou:
                    best, best_iou = k, o
            if best >= 0 and self.prev[best][2] != int(preds[j]):
                taken.add(best)
                c.track = self.prev[best][1]
                targets[j] = self.prev[best][2]
            else:
                if best >= 0:
                    taken.add(best)
                c.track = self.prev[best][1] if best >= 0 else self._new()
            current.append((c.box, c.track, int(targets[j])))
        self.prev = current
        return targets

    def _new(self) -> int:
        self.next_track += 1
        return self.next_track - 1


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class FaceOutcome:
    """The attack's result for one face."""

    pixels: np.ndarray  # (h, w, 3) uint8
    success: bool
    steps: int
    pred: int
    target: int
    final: int
    final_conf: float
    norms: dict[str, float]
    psnr: float

    def record(self, names: Sequence[str], fallback: str) -> dict[str, Any]:
        """The report fields of this outcome (``names``: the classifier's class names;
        ``fallback``: how a failed face is obscured)."""
        return {
            "target": names[self.target],
            "success": self.success,
            "action": "attacked" if self.success else f"obscured:{fallback}",
            "steps": self.steps,
            "final": names[self.final],
            "final_conf": round(self.final_conf, 4),
            "l2": round(self.norms["l2"], 5),
            "linf": round(self.norms["linf"], 5),
            "psnr": round(self.psnr, 2) if math.isfinite(self.psnr) else None,
        }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of one shape (inf: identical)."""
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2)) / 255.0**2
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


class GreyInput(nn.Module):
    """The classifier seeing only the luma of its input, for faces of grey frames: the
    gradient's sign is then the same in the three channels, so sign steps stay grey."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("w", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x * self.w.to(x)).sum(1, keepdim=True).expand(-1, 3, -1, -1))

    def select(self, idx: torch.Tensor) -> GreyInput:
        sel = getattr(self.model, "select", None)
        return GreyInput(sel(idx)) if callable(sel) else self


def attack_faces(
    attack: Attack,
    classifier: FaceClassifier,
    crops: Sequence[FaceCrop],
    targets: torch.Tensor,
    preds: torch.Tensor,
    device: torch.device,
    batch_size: int,
    budget: MemoryBudget | None = None,
) -> list[FaceOutcome]:
    """Stage: attack every crop (faces of several frames in one batch) at native resolution.

    Faces of grey frames (three equal channels) are attacked through :class:`GreyInput` and
    made exactly grey afterwards (coloured noise on a grey frame would give the attack away);
    one that is no longer its target once grey counts as failed, so it is obscured.

    Batches hold at most ``batch_size`` faces and, on a GPU, what the device's free memory
    holds (``budget``, default :func:`budget_for` the attack: learnt from its own batches).
    """
    budget = budget or budget_for(attack, device)
    outcomes: list[FaceOutcome | None] = [None] * len(crops)
    grey = [is_gray(c.pixels) for c in crops]

    def run(idx: list[int], g: bool) -> None:
        def once() -> None:
            _attack_batch(attack, classifier, crops, targets, preds, device, idx, g, outcomes)

        if budget is None:
            once()
        else:
            budget.measure(padded_pixels([crops[i] for i in idx]), once)

    for g in (False, True):
        members = [i for i in range(len(crops)) if grey[i] == g]
        if not members:
            continue
        sub_crops = [crops[i] for i in members]
        limit = budget.max_pixels if budget is not None else None
        for sub in batches(sub_crops, batch_size, max_pixels=limit):
            halving_on_oom(lambda idx, g=g: run(idx, g), [members[k] for k in sub])
    return [o for o in outcomes if o is not None]


def _attack_batch(
    attack: Attack,
    classifier: FaceClassifier,
    crops: Sequence[FaceCrop],
    targets: torch.Tensor,
    preds: torch.Tensor,
    device: torch.device,
    idx: list[int],
    g: bool,
    outcomes: list[FaceOutcome | None],
) -> None:
    """Attack the crops at ``idx`` (all grey when ``g``) into ``outcomes``."""
    x, theta = to_batch([crops[i] for i in idx], device)
    t = targets[idx].to(device)
    model = classifier.bind(theta)
    r: AttackResult = attack(GreyInput(model) if g else model, x, t)
    adv, success, logits = to_uint8(r.images), r.success.cpu(), r.logits
    if g:
        adv = np.stack([gray_like(a) for a in adv])
        with torch.no_grad():
            logits = model(torch.from_numpy(adv).permute(0, 3, 1, 2).float().div(255).to(device))
        success = success & (logits.argmax(1) == t).cpu()
    probs = torch.softmax(logits.float(), 1).cpu()
    for j, i in enumerate(idx):
        h, w = crops[i].pixels.shape[:2]
        px = adv[j, :h, :w]
        outcomes[i] = FaceOutcome(
            pixels=px,
            success=bool(success[j]),
            steps=int(r.steps[j]),
            pred=int(preds[i]),
            target=int(targets[i]),
            final=int(probs[j].argmax()),
            final_conf=float(probs[j].max()),
            norms={k: float(v[j]) for k, v in r.norms.items()},
            psnr=psnr(px, crops[i].pixels),
        )
