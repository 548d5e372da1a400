"""The limit settings and the per-stream time checks, without a server."""

from __future__ import annotations

import pytest

from a2f_inference.server.config import ServerConfig
from a2f_inference.server.limits import (
    KeyframeLimitError,
    StreamWatch,
    check_keyframes,
    limit_of,
    max_receive_bytes,
    server_options,
)
from a2f_volume.errors import InvalidArgumentError


def test_defaults_and_env() -> None:
    cfg = ServerConfig.from_env({})
    assert (cfg.max_keyframes_per_message, cfg.max_keyframes_per_stream) == (300, 9000)
    assert (cfg.max_stream_s, cfg.min_feed_rate, cfg.slow_feed_s) == (360, 0.967, 7)
    assert cfg.client_read_timeout_s == 10
    cfg = ServerConfig.from_env({"A2F_INFERENCE_MAX_KEYFRAMES_PER_MESSAGE": "50",
                                 "A2F_INFERENCE_MAX_CONNECTION_AGE_S": "120"})
    assert cfg.max_keyframes_per_message == 50 and cfg.max_connection_age_s == 120


@pytest.mark.parametrize("bad", [{"max_keyframes_per_message": 0},
                                 {"max_keyframes_per_stream": 10},
                                 {"min_feed_rate": 1.5}, {"max_stream_s": 0},
                                 {"client_read_timeout_s": float("nan")}])
def test_bad_limit_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(InvalidArgumentError, match=next(iter(bad))):
        ServerConfig(**bad)  # type: ignore[arg-type]


def test_receive_cap_follows_the_settings() -> None:
    cfg = ServerConfig()
    cap = max_receive_bytes(cfg)
    assert 2_880_000 < cap < 3.2 * 1024 * 1024  # ~3 MiB at the defaults
    assert max_receive_bytes(ServerConfig(max_buffer_s=5)) < cap
    opts = dict(server_options(cfg))
    assert opts["grpc.max_receive_message_length"] == cap
    assert opts["grpc.max_connection_age_ms"] == 300_000
    assert opts["grpc.max_connection_age_grace_ms"] == 360_000
    assert opts["grpc.server_handshake_timeout_ms"] == 10_000


def test_keyframe_caps_name_the_limit() -> None:
    cfg = ServerConfig(max_keyframes_per_message=10, max_keyframes_per_stream=25)
    check_keyframes(cfg, 10, 15)
    with pytest.raises(KeyframeLimitError, match="max_keyframes_per_message") as err:
        check_keyframes(cfg, 11, 0)
    assert limit_of(err.value) == "max_keyframes_per_message"
    with pytest.raises(KeyframeLimitError, match=r"26 emotion keyframes.*max_keyframes_per_stream"):
        check_keyframes(cfg, 10, 16)


def test_watch_real_time_any_chunk_size_is_never_behind() -> None:
    cfg = ServerConfig(slow_feed_s=1.0)
    for chunk in (0.1, 1.0, 10.0):
        w = StreamWatch(cfg, 0.0)
        t, audio = 0.0, 0.0
        while t < 60:
            if audio <= t + 1e-9:  # chunk k (from the first on) arrives at k x chunk
                while audio <= t + 1e-9:
                    audio += chunk
                w.on_audio(t, audio)
            assert w.check(t) is None, (chunk, t)
            t += 0.25


def test_watch_slow_feed_is_cut_after_slow_feed_s() -> None:
    cfg = ServerConfig(slow_feed_s=7.0, min_feed_rate=0.967)
    w = StreamWatch(cfg, 0.0)
    t, audio, cut_at = 0.0, 0.0, None
    while t < 100:
        audio += 0.25 * 0.9  # 90 % of real time
        w.on_audio(t, audio)
        err = w.check(t)
        if err is not None:
            assert limit_of(err) == "min_feed_rate" and "slow_feed_s" in str(err)
            cut_at = t
            break
        t += 0.25
    # behind once 0.9 t + 0.225 < 0.967 t, i.e. from t ~ 3.4 s; cut 7 s later
    assert cut_at is not None and 10 < cut_at < 11.5
    w = StreamWatch(cfg, 0.0)
    w.on_audio(0.0, 1.0)
    w.on_end()  # after end_of_audio nothing more is expected
    assert w.check(50.0) is None


def test_watch_wall_time_and_stalled_writes() -> None:
    cfg = ServerConfig(max_stream_s=360, client_read_timeout_s=10)
    w = StreamWatch(cfg, 0.0)
    w.on_audio(0.0, 500.0)
    w.on_end()
    assert w.check(359.0) is None
    err = w.check(361.0)
    assert err is not None and limit_of(err) == "max_stream_s" and err.status == \
        "DEADLINE_EXCEEDED"
    w = StreamWatch(cfg, 0.0)
    w.write_started = 5.0
    assert w.check(14.0) is None
    err = w.check(15.5)
    assert err is not None and limit_of(err) == "client_read_timeout_s"
    assert err.status == "RESOURCE_EXHAUSTED" and "10 s" in str(err)
