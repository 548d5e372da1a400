"""Post-processing of one batch: each stream's slice of the network outputs -> its frames."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from a2f_inference.pipeline.postprocess import FramePostprocessor, process_streams
from a2f_inference.pipeline.session import StreamSession, WorkItem

logger = logging.getLogger(__name__)


def complete_items(items: list[WorkItem], outputs: Sequence[Mapping[str, np.ndarray]]) -> None:
    """Post-processing of one batch: each item's slice of the outputs -> frames.

    Streams are post-processed together (:func:`~.postprocess.process_streams`: the solves
    of all streams of a blendshape set run vectorised, frame by frame). A stream whose own
    part fails (its rows, its filters) fails alone; the others go on.
    """
    jobs: list[tuple[WorkItem, FramePostprocessor, np.ndarray]] = []
    for it, out in zip(items, outputs, strict=True):
        try:
            job = it.session.prepare_post(it, out)
        except Exception as err:
            _post_failed(it.session, err)
            continue
        if job is None:
            it.session.finish_post(it, None)
        else:
            jobs.append((it, *job))
    if jobs:
        try:
            weights = process_streams([j[1] for j in jobs], [j[2] for j in jobs])
        except Exception as err:  # not attributable to one stream: all of them stop
            for it, *_ in jobs:
                _post_failed(it.session, err)
        else:
            for (it, *_), w in zip(jobs, weights, strict=True):
                it.session.finish_post(it, w)
    for it in items:
        if it.session.diffusion_clock is not None and it.session.error is None:
            it.session.draw_noise_ahead()


def _post_failed(session: StreamSession, err: BaseException) -> None:
    logger.error("stream on %s: post-processing failed: %s: %s", session.owner.name,
                 type(err).__name__, err, exc_info=err)
    session.fail(err)
