"""Sessions and the batch scheduler: streaming before the end, batching across streams,
lifecycle and failures (real ORT, small stand-ins)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from a2f_inference.audio import speech_like, to_pcm16
from a2f_inference.pipeline import BatchScheduler, BatchStats, Frame, StreamSession, run_offline
from a2f_volume.errors import InvalidArgumentError, UnavailableError

from .conftest import RecordingEngine, RuntimeFactory


class Observer:
    def __init__(self) -> None:
        self.batches: list[BatchStats] = []

    def on_batch(self, stats: BatchStats) -> None:
        self.batches.append(stats)


def drain(session: StreamSession, timeout_s: float = 30.0) -> list[Frame]:
    out: list[Frame] = []
    while not session.done:
        assert session.wait(timeout_s), "no progress"
        if session.error is not None:
            raise session.error
        out += session.take_frames()
    return out


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
def test_frames_come_out_before_end_of_audio(make_runtime: RuntimeFactory, kind: str) -> None:
    rt = make_runtime(kind)
    woken = threading.Event()
    sched = BatchScheduler(rt, on_ready=lambda s: woken.set())
    sched.start()
    session = rt.open_stream(None, None, input_rate=16000, constant_noise=True, seed=0)
    try:
        pcm = to_pcm16(speech_like(3.0))
        session.push_audio(pcm[: 2 * 32000])  # 2 s, no end_of_audio
        got: list[Frame] = []
        # every frame whose look-ahead has arrived: t_k + lookahead <= 2 s
        expected = 1 + int((2.0 - session.lookahead_s) * 30 + 1e-9)
        while len(got) < expected:
            assert session.wait(30.0)
            got += session.take_frames()
        assert woken.is_set()
        assert not session.done
        assert [f.index for f in got] == list(range(len(got)))
        # nothing past the look-ahead: frame k needs k / 30 + lookahead <= 2 s of audio
        assert all(f.time_code_s + session.lookahead_s <= 2.0 + 1e-6 for f in got)
        session.push_audio(pcm[2 * 32000 :])
        session.end_of_audio()
        got += drain(session)
        assert [f.index for f in got] == list(range(90))
    finally:
        session.close()
        sched.stop()


@pytest.mark.parametrize("kind", ["regression", "diffusion"])
def test_batching_across_streams_gives_the_same_frames_as_alone(make_runtime: RuntimeFactory,
                                                                kind: str) -> None:
    rt = make_runtime(kind)
    clips = [to_pcm16(speech_like(1.4 + 0.3 * i, seed=20 + i)) for i in range(4)]
    alone = [run_offline(rt, c, 16000, constant_noise=True, seed=i) for i, c in enumerate(clips)]
    obs = Observer()
    sched = BatchScheduler(rt, max_wait_s=0.05, observer=obs)
    sessions = [rt.open_stream(None, None, input_rate=16000, constant_noise=True, seed=i)
                for i in range(len(clips))]
    try:
        # all audio is in before the worker starts, so windows of several streams are ready
        for s, c in zip(sessions, clips, strict=True):
            s.push_audio(c)
            s.end_of_audio()
        sched.start()
        together = [drain(s) for s in sessions]
    finally:
        for s in sessions:
            s.close()
        sched.stop()
    assert max(b.streams for b in obs.batches) > 1, "no batch mixed streams"
    assert max(b.size for b in obs.batches) <= rt.max_batch
    for a, b in zip(alone, together, strict=True):
        assert len(a) == len(b)
        for fa, fb in zip(a, b, strict=True):
            np.testing.assert_allclose(fa.weights, fb.weights, rtol=1e-5, atol=1e-7)
            assert fa.audio == fb.audio


@pytest.mark.parametrize(("kind", "pipelined"), [("regression", False), ("regression", True),
                                                  ("diffusion", False), ("diffusion", True)])
def test_several_workers_keep_every_stream_in_order(make_runtime: RuntimeFactory, kind: str,
                                                    pipelined: bool) -> None:
    """Three workers, small batches: a regression stream's windows spread over batches that
    run side by side, a diffusion stream's state goes from batch to batch; every stream's
    frames must equal its frames alone, fed in chunks from several threads at once."""
    rt = make_runtime(kind, max_batch=3)
    clips = [to_pcm16(speech_like(1.2 + 0.25 * i, seed=40 + i)) for i in range(5)]
    alone = [run_offline(rt, c, 16000, constant_noise=True, seed=i) for i, c in enumerate(clips)]
    engine = rt.engine
    assert isinstance(engine, RecordingEngine)
    engine.run_threads.clear()
    obs = Observer()
    sched = BatchScheduler(rt, max_wait_s=0.001, observer=obs, pipelined=pipelined, workers=3)
    sched.start()
    sessions = [rt.open_stream(None, None, input_rate=16000, constant_noise=True, seed=i)
                for i in range(len(clips))]
    got: list[list[Frame]] = [[] for _ in clips]

    def feed(i: int) -> None:
        rng = np.random.default_rng(i)
        pcm, pos = clips[i], 0
        while pos < len(pcm):
            step = 2 * int(rng.integers(50, 2500))
            sessions[i].push_audio(pcm[pos : pos + step])
            pos += step
            got[i] += sessions[i].take_frames()
        sessions[i].end_of_audio()
        got[i] += drain(sessions[i])

    try:
        feeders = [threading.Thread(target=feed, args=(i,)) for i in range(len(clips))]
        for t in feeders:
            t.start()
        for t in feeders:
            t.join(60)
    finally:
        for s in sessions:
            s.close()
        sched.stop()
    assert len(engine.run_threads) > 1, f"batches ran on {engine.run_threads} only"
    assert max(b.size for b in obs.batches) <= 3
    for a, b in zip(alone, got, strict=True):
        assert [f.index for f in b] == list(range(len(a)))
        for fa, fb in zip(a, b, strict=True):
            np.testing.assert_allclose(fa.weights, fb.weights, rtol=1e-5, atol=1e-7)
            assert fa.audio == fb.audio


def test_workers_must_be_positive(make_runtime: RuntimeFactory) -> None:
    with pytest.raises(ValueError, match="workers 0 must be >= 1"):
        BatchScheduler(make_runtime("regression"), workers=0)


@pytest.mark.parametrize("pipelined", [True, False])
def test_batches_respect_max_batch(make_runtime: RuntimeFactory, pipelined: bool) -> None:
    rt = make_runtime("regression", max_batch=4)
    obs = Observer()
    sched = BatchScheduler(rt, observer=obs, pipelined=pipelined)
    sched.start()
    try:
        frames = run_offline(rt, to_pcm16(speech_like(2.0)), 16000)
    finally:
        sched.stop()
    assert len(frames) == 60
    assert max(b.size for b in obs.batches) == 4
    assert sum(b.size for b in obs.batches) == 60
    assert all(b.inference_s >= 0 and b.postprocess_s >= 0 for b in obs.batches)


def test_stop_fails_open_streams_and_is_idempotent(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime("regression")
    sched = BatchScheduler(rt)
    sched.start()
    session = rt.open_stream(None, None, input_rate=16000)
    session.push_audio(to_pcm16(speech_like(0.5)))
    sched.stop(grace_s=5.0)
    sched.stop(grace_s=5.0)
    assert isinstance(session.error, UnavailableError)
    assert not sched.running
    session.close()
    session.close()


def test_engine_failure_reaches_only_its_streams(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime("regression")
    sched = BatchScheduler(rt)
    sched.start()
    session = rt.open_stream(None, None, input_rate=16000)
    try:
        # a corrupt input the real network rejects: a window of the wrong length
        item = session.take_work(1)
        assert item is None  # nothing ready yet
        session.push_audio(to_pcm16(speech_like(0.5)))
        session.end_of_audio()
        frames = drain(session)
        assert len(frames) == 15
        bad = rt.open_stream(None, None, input_rate=16000)
        bad.push_audio(to_pcm16(speech_like(0.5)))
        work = bad.take_work(2)
        assert work is not None
        work.feeds["input"] = work.feeds["input"][:, :, :100]
        assert sched._run_batch([[work]], {}) is None  # nothing to post-process
        assert bad.error is not None and "inference failed" in str(bad.error)
        with pytest.raises(Exception, match="inference failed"):
            drain(bad)
        bad.close()
    finally:
        session.close()
        sched.stop()


def test_closed_session_rejects_input_and_frees_buffers(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime("diffusion")
    session = rt.open_stream("James", None, input_rate=16000)
    assert rt.open_streams == 1
    session.push_audio(b"\x01")  # odd byte carried over
    session.close()
    assert rt.open_streams == 0
    with pytest.raises(InvalidArgumentError, match="closed"):
        session.push_audio(b"\x00\x00")
    assert session.take_work(8) is None


def test_push_after_end_is_rejected(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime("regression")
    session = rt.open_stream(None, None, input_rate=16000)
    session.push_audio(b"\x00\x00" * 100)
    session.end_of_audio()
    with pytest.raises(InvalidArgumentError, match="after end_of_audio"):
        session.push_audio(b"\x00\x00")
    session.close()


def test_stop_keeps_finished_streams_readable(make_runtime: RuntimeFactory) -> None:
    rt = make_runtime("diffusion")
    sched = BatchScheduler(rt)
    sched.start()
    session = rt.open_stream(None, None, input_rate=16000)
    session.push_audio(to_pcm16(speech_like(0.8)))
    session.end_of_audio()
    deadline = time.monotonic() + 30.0
    while not session.finished:  # frames made but not taken
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sched.stop()
    assert session.error is None
    frames = session.take_frames()
    assert len(frames) == 24 and session.done
    session.close()


def test_a_stream_whose_windows_cannot_be_taken_fails_alone(make_runtime: RuntimeFactory,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """A bug in one stream's window preparation (here: take_work raising) fails that stream
    with an INTERNAL error; the streams gathered with it still get every frame."""
    rt = make_runtime("regression")
    sched = BatchScheduler(rt, max_wait_s=0.05)
    good = rt.open_stream(None, None, input_rate=16000)
    bad = rt.open_stream(None, None, input_rate=16000)

    def broken(max_count: int, out: object = None) -> None:
        raise KeyError(250)

    monkeypatch.setattr(bad, "take_work", broken)
    try:
        pcm = to_pcm16(speech_like(0.5))
        for s in (bad, good):
            s.push_audio(pcm)
            s.end_of_audio()
        sched.start()
        assert len(drain(good)) == 15
        with pytest.raises(Exception, match=r"inference failed .* KeyError"):
            drain(bad)
    finally:
        good.close()
        bad.close()
        sched.stop()
