"""A query-only view of a classifier: what black-box attacks get instead of the network."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from deid.attacks.base import attack_mode, select

Output = Literal["logits", "probs", "labels"]


class QueryModel:
    """Scores or labels of a classifier, and nothing else: no gradients, no parameters.

    Black-box attacks (:class:`deid.attacks.spsa.SPSA`, :class:`deid.attacks.onepixel.OnePixel`)
    wrap the model they are given in this class at their boundary, and their search code sees
    only this object. Every call runs under ``torch.no_grad()`` and returns a detached tensor,
    so no gradient can leak into the search; ``queries`` counts the images evaluated (one
    query = one image through the model), shared with every :meth:`select` view.

    Args:
        model: the classifier, (N, C, H, W) [0, 1] -> (N, K) logits. Not exposed.
        output: what a query returns: ``logits`` (N, K) scores, ``probs`` (N, K) softmax,
            or ``labels`` (N,) int64 top-1 class (the decision-only setting).

    Example:
        >>> import torch
        >>> q = QueryModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
        >>> q(torch.rand(5, 3, 2, 2)).shape, q.queries
        (torch.Size([5, 3]), 5)
        >>> hasattr(q, "parameters")
        False
    """

    __slots__ = ("_counter", "_model", "output")

    def __init__(
        self, model: nn.Module, output: Output = "logits", _counter: list[int] | None = None
    ):
        if isinstance(model, QueryModel):
            raise TypeError("QueryModel: expected an nn.Module, got a QueryModel (wrap once)")
        self._model = model
        self.output: Output = output
        self._counter = _counter if _counter is not None else [0]

    @property
    def queries(self) -> int:
        """Images evaluated so far (by this view and every view sharing its counter)."""
        return self._counter[0]

    def select(self, idx: Tensor) -> QueryModel:
        """The same query interface for a subset of the batch (per-sample bound models)."""
        return QueryModel(select(self._model, idx), self.output, self._counter)

    def __call__(self, images: Tensor) -> Tensor:
        self._counter[0] += int(images.shape[0])
        with torch.no_grad():
            if self._model.training:  # eval mode for the query, restored afterwards
                with attack_mode(self._model):
                    logits = self._model(images.detach())
            else:
                logits = self._model(images.detach())
        if self.output == "logits":
            return logits.detach()
        if self.output == "probs":
            return torch.softmax(logits, 1).detach()
        return logits.argmax(1).detach()


def as_query(model: nn.Module | QueryModel, output: Output = "logits") -> QueryModel:
    """``model`` as a :class:`QueryModel` (a QueryModel passes through with its own output)."""
    return model if isinstance(model, QueryModel) else QueryModel(model, output)
