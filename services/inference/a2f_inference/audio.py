"""Audio helpers: one WAV rule and one synthetic voice for every caller of the package.

One WAV rule: :func:`read_wav` accepts 16-bit mono PCM only (the wire format the service
takes, ``channel_count`` 1, 16 bits) and refuses anything else with :class:`WavFormatError`,
naming what it found and the ``sox`` command that converts the file. Nothing is resampled
or mixed silently.

One synthetic voice: :func:`speech_like` (float samples) and :func:`synthetic_speech` (the
same signal as 16-bit PCM bytes), deterministic for a given ``seed``.
"""

from __future__ import annotations

import os
import wave

import numpy as np

WAV_RULE = "only 16-bit mono PCM WAV is accepted (convert with: sox IN.wav -b 16 -c 1 OUT.wav)"


class WavFormatError(ValueError):
    """The WAV file is not 16-bit mono PCM."""


def read_wav(path: str | os.PathLike[str]) -> tuple[bytes, int]:
    """PCM bytes and sample rate of a 16-bit mono WAV; anything else is refused clearly."""
    try:
        with wave.open(os.fspath(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            if channels != 1 or width != 2:
                raise WavFormatError(f"{path}: {channels} channel(s), {8 * width}-bit; {WAV_RULE}")
            return w.readframes(w.getnframes()), rate
    except (wave.Error, EOFError) as err:
        detail = str(err) or "the file ends early"
        raise WavFormatError(f"{path}: not a PCM WAV file ({detail}); {WAV_RULE}") from err


def write_wav(path: str | os.PathLike[str], pcm: bytes, rate: int) -> None:
    """Write 16-bit mono PCM bytes as a WAV file."""
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


def to_pcm16(x: np.ndarray) -> bytes:
    """float [-1, 1] -> 16-bit little-endian PCM bytes."""
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def speech_like(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A deterministic speech-like float32 signal in [-1, 1]: voiced syllables (a gliding
    fundamental with formant-shaped harmonics, 3-6 per second, varied vowels) and short
    pauses, starting with a little silence."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    out = np.zeros(n, dtype=np.float64)
    vowels = [(730, 1090), (270, 2290), (300, 870), (530, 1840), (570, 840)]  # a i u e o
    pos = int(0.15 * rate)
    while pos < n:
        dur = int(rng.uniform(0.12, 0.3) * rate)
        end = min(n, pos + dur)
        out[pos:end] += _syllable(end - pos, rate, rng, vowels)
        pos = end + int(rng.choice([0.03, 0.06, 0.25], p=[0.6, 0.3, 0.1]) * rate)
    peak = np.max(np.abs(out)) if n else 0.0
    if peak > 0:
        out *= 0.7 / peak
    return out.astype(np.float32)


def _syllable(m: int, rate: int, rng: np.random.Generator,
              vowels: list[tuple[int, int]]) -> np.ndarray:
    """One voiced syllable of ``m`` samples with a sin^2 envelope."""
    t = np.arange(m) / rate
    f0 = rng.uniform(100, 190) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    f1, f2 = vowels[int(rng.integers(len(vowels)))]
    sig = np.zeros(m)
    for h in range(1, 30):
        fh = h * f0.mean()
        if fh > rate / 2 - 500:
            break
        amp = (np.exp(-(((fh - f1) / 120) ** 2)) + 0.6 * np.exp(-(((fh - f2) / 180) ** 2))
               + 0.02 / h)
        sig += amp * np.sin(h * phase)
    env = np.sin(np.pi * np.arange(m) / max(1, m)) ** 2
    return env * sig


def synthetic_speech(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    """:func:`speech_like` as 16-bit PCM bytes (for clients, tests and load generators)."""
    return to_pcm16(speech_like(seconds, rate, seed))
