"""Post-processing of one batch: each stream's slice of the network outputs -> its frames."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from a2f_inference.pipeline.postprocess import (
    FramePostprocessor,
    process_streams,
    process_streams_projected,
)
from a2f_inference.pipeline.serving import Projected
from a2f_inference.pipeline.session import StreamSession, WorkItem

logger = logging.getLogger(__name__)


def complete_items(items: list[WorkItem], outputs: Sequence[Mapping[str, np.ndarray]]) -> None:
    """Post-processing of one batch: each item's slice of the outputs -> frames.

    Streams are post-processed together (:func:`~.postprocess.process_streams`: the solves
    of all streams of a blendshape set run vectorised, frame by frame). A stream whose own
    part fails (its rows, its filters) fails alone; the others go on.
    """
    jobs: list[tuple[WorkItem, FramePostprocessor, np.ndarray]] = []
    projected: list[tuple[WorkItem, FramePostprocessor, Projected]] = []
    for it, out in zip(items, outputs, strict=True):
        try:
            job = it.session.prepare_post(it, out)
        except Exception as err:
            _post_failed(it.session, err)
            continue
        if job is None:
            it.session.finish_post(it, None)
        elif isinstance(job[1], Projected):  # a serving graph's outputs
            projected.append((it, job[0], job[1]))
        else:
            jobs.append((it, job[0], job[1]))
    if jobs:
        _finish(jobs, lambda: process_streams([j[1] for j in jobs], [j[2] for j in jobs]))
    if projected:
        _finish(projected, lambda: process_streams_projected(
            [j[1] for j in projected], [j[2].skin for j in projected],
            [j[2].tongue for j in projected]))
    for it in items:
        if it.session.diffusion_clock is not None and it.session.error is None:
            it.session.draw_noise_ahead()


def _finish(jobs: Sequence[tuple[WorkItem, FramePostprocessor, object]],
            run: Callable[[], list[np.ndarray]]) -> None:
    try:
        weights = run()
    except Exception as err:  # not attributable to one stream: all of them stop
        for it, *_ in jobs:
            _post_failed(it.session, err)
    else:
        for (it, *_), w in zip(jobs, weights, strict=True):
            it.session.finish_post(it, w)


def _post_failed(session: StreamSession, err: BaseException) -> None:
    logger.error("stream on %s: post-processing failed: %s: %s", session.owner.name,
                 type(err).__name__, err, exc_info=err)
    session.fail(err)
