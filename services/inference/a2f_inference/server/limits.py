"""The server's limits on clients: message size, keyframes, stream time, feed rate, reads and
connections.

Every limit is a :class:`~a2f_inference.server.config.ServerConfig` setting (flag and
``A2F_INFERENCE_*`` variable, documented in docs/server.md). This module holds what the limits
mean: the gRPC server options derived from them (:func:`server_options`), the receive-message
cap (:func:`max_receive_bytes`), the errors a cut stream ends with (each names its limit, which
``a2f_inference_limit_cuts_total{limit}`` counts), and :class:`StreamWatch`, the time-based
checks of one stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, Protocol, get_args

from a2f_volume.errors import (
    A2FError,
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
)

#: The highest input sample rate (Hz); the receive cap makes room for a full buffer at it.
MAX_INPUT_RATE = 144000
#: Upper bound on one encoded ``EmotionWithTimeCode`` with all 10 emotions (about 200 bytes).
KEYFRAME_BYTES = 256
#: Room for the message framing, the stream header's parameters and the like.
MESSAGE_MARGIN_BYTES = 64 * 1024
#: How often a stream's time limits are checked; a limit trips at most this much late.
WATCH_PERIOD_S = 0.25

#: The limits a stream can be cut by (the ``limit`` label of ``limit_cuts_total``).
Limit = Literal["max_keyframes_per_message", "max_keyframes_per_stream", "idle_timeout_s",
                "max_stream_s", "min_feed_rate", "client_read_timeout_s"]
LIMITS: tuple[Limit, ...] = get_args(Limit)


class LimitSettings(Protocol):
    """The settings this module reads (a :class:`ServerConfig`)."""

    @property
    def max_buffer_s(self) -> float: ...
    @property
    def idle_timeout_s(self) -> float: ...
    @property
    def max_keyframes_per_message(self) -> int: ...
    @property
    def max_keyframes_per_stream(self) -> int: ...
    @property
    def max_stream_s(self) -> float: ...
    @property
    def min_feed_rate(self) -> float: ...
    @property
    def slow_feed_s(self) -> float: ...
    @property
    def client_read_timeout_s(self) -> float: ...
    @property
    def keepalive_time_s(self) -> float: ...
    @property
    def keepalive_timeout_s(self) -> float: ...
    @property
    def max_connection_idle_s(self) -> float: ...
    @property
    def max_connection_age_s(self) -> float: ...
    @property
    def max_connection_age_grace_s(self) -> float: ...
    @property
    def handshake_timeout_s(self) -> float: ...


def check_limits(s: LimitSettings, need: Callable[[bool, str], None]) -> None:
    """Validate the limit settings; ``need(ok, what)`` raises for a failed one."""
    need(1 <= s.max_keyframes_per_message <= 100_000,
         f"max_keyframes_per_message {s.max_keyframes_per_message}, expected 1..100000")
    need(s.max_keyframes_per_stream >= s.max_keyframes_per_message,
         f"max_keyframes_per_stream {s.max_keyframes_per_stream}, expected >= "
         f"max_keyframes_per_message ({s.max_keyframes_per_message})")
    for name in ("max_stream_s", "slow_feed_s", "client_read_timeout_s", "keepalive_time_s",
                 "keepalive_timeout_s", "max_connection_idle_s", "max_connection_age_s",
                 "handshake_timeout_s"):
        value = getattr(s, name)
        need(math.isfinite(value) and value > 0, f"{name} {value}, expected > 0")
    need(math.isfinite(s.max_connection_age_grace_s) and s.max_connection_age_grace_s >= 0,
         f"max_connection_age_grace_s {s.max_connection_age_grace_s}, expected >= 0")
    need(0 <= s.min_feed_rate <= 1,
         f"min_feed_rate {s.min_feed_rate}, expected 0 (off)..1 (real time)")


def max_receive_bytes(s: LimitSettings) -> int:
    """The largest request message the server takes: a full ``max_buffer_s`` buffer at the
    highest rate, plus ``max_keyframes_per_message`` keyframes, plus a margin. gRPC rejects
    a bigger message with RESOURCE_EXHAUSTED before it is parsed."""
    audio = int(s.max_buffer_s * MAX_INPUT_RATE) * 2
    return audio + s.max_keyframes_per_message * KEYFRAME_BYTES + MESSAGE_MARGIN_BYTES


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def server_options(s: LimitSettings) -> list[tuple[str, Any]]:
    """gRPC server channel arguments: message caps, keepalive and connection lifetimes."""
    return [
        ("grpc.max_receive_message_length", max_receive_bytes(s)),
        ("grpc.keepalive_time_ms", _ms(s.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", _ms(s.keepalive_timeout_s)),
        ("grpc.max_connection_idle_ms", _ms(s.max_connection_idle_s)),
        ("grpc.max_connection_age_ms", _ms(s.max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", _ms(s.max_connection_age_grace_s)),
        ("grpc.server_handshake_timeout_ms", _ms(s.handshake_timeout_s)),
    ]


class _LimitMixin:
    limit: Limit


class KeyframeLimitError(InvalidArgumentError, _LimitMixin):
    """Too many emotion keyframes in a message or a stream."""

    def __init__(self, limit: Limit, message: str) -> None:
        super().__init__(message)
        self.limit = limit


class TimeLimitError(DeadlineExceededError, _LimitMixin):
    """A stream went over one of its time limits."""

    def __init__(self, limit: Limit, message: str) -> None:
        super().__init__(message)
        self.limit = limit


class ReadLimitError(ResourceExhaustedError, _LimitMixin):
    """The client stopped taking responses while frames waited."""

    def __init__(self, limit: Limit, message: str) -> None:
        super().__init__(message)
        self.limit = limit


def limit_of(exc: BaseException) -> Limit | None:
    """The limit an error says was exceeded, if it is a limit error."""
    return exc.limit if isinstance(exc, _LimitMixin) else None


def check_keyframes(s: LimitSettings, in_message: int, before: int) -> None:
    """Raise :class:`KeyframeLimitError` when a message with ``in_message`` keyframes, after
    ``before`` keyframes on its stream, goes over a keyframe limit. Callers pass ``len()``
    of the repeated field, so nothing is read from an oversized message."""
    if in_message > s.max_keyframes_per_message:
        raise KeyframeLimitError(
            "max_keyframes_per_message",
            f"{in_message} emotion keyframes in one message, over the limit of "
            f"{s.max_keyframes_per_message} per message (max_keyframes_per_message); send a "
            "few keyframes per second of audio")
    if before + in_message > s.max_keyframes_per_stream:
        raise KeyframeLimitError(
            "max_keyframes_per_stream",
            f"{before + in_message} emotion keyframes on this stream, over the limit of "
            f"{s.max_keyframes_per_stream} per stream (max_keyframes_per_stream); send a few "
            "keyframes per second of audio")


class StreamWatch:
    """The time limits of one stream, checked by :meth:`check` every ``WATCH_PERIOD_S``.

    All times are ``time.monotonic()`` seconds (or any one clock).

    - ``max_stream_s``: wall time since the stream opened.
    - ``min_feed_rate`` / ``slow_feed_s``: from the first audio on, until ``end_of_audio``,
      the client is *behind* while ``audio seconds received < min_feed_rate * wall seconds
      since the first audio``; it is cut once it has been behind without a break for more
      than ``slow_feed_s``. A client sending in real time is never behind, whatever its
      chunk size (each chunk's audio is at least the wall time it took to record).
    - ``client_read_timeout_s``: a response write that has not completed for this long (the
      client stopped reading and flow control stopped the server).

    The idle timeout is not here: the request reader waits for the next message with it.
    """

    def __init__(self, s: LimitSettings, now: float) -> None:
        self.settings = s
        self.opened_at = now
        self.first_audio_at: float | None = None
        self.audio_s = 0.0
        self.ended = False
        self.behind_since: float | None = None
        self.write_started: float | None = None

    def on_audio(self, now: float, total_audio_s: float) -> None:
        if self.first_audio_at is None:
            self.first_audio_at = now
        self.audio_s = total_audio_s

    def on_end(self) -> None:
        self.ended = True
        self.behind_since = None

    def check(self, now: float) -> A2FError | None:
        """The limit error this stream is over at ``now``, or None."""
        s = self.settings
        if self.write_started is not None and now - self.write_started > s.client_read_timeout_s:
            return ReadLimitError(
                "client_read_timeout_s",
                f"the client took no response for {now - self.write_started:.1f} s while "
                f"frames waited (client_read_timeout_s = {s.client_read_timeout_s:g} s)")
        if now - self.opened_at > s.max_stream_s:
            return TimeLimitError(
                "max_stream_s", f"stream open longer than {s.max_stream_s:g} s (max_stream_s)")
        if self.ended or self.first_audio_at is None or s.min_feed_rate <= 0:
            return None
        if self.audio_s >= s.min_feed_rate * (now - self.first_audio_at):
            self.behind_since = None
            return None
        if self.behind_since is None:
            self.behind_since = now
        if now - self.behind_since > s.slow_feed_s:
            wall = now - self.first_audio_at
            return TimeLimitError(
                "min_feed_rate",
                f"audio arrives slower than real time: {self.audio_s:.2f} s of audio in "
                f"{wall:.2f} s, below {s.min_feed_rate:g} audio seconds per second "
                f"(min_feed_rate) for more than {s.slow_feed_s:g} s (slow_feed_s)")
        return None
