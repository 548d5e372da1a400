"""The one WAV rule (16-bit mono PCM, anything else refused) and the one synthetic voice."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from a2f_inference.audio import (
    WavFormatError,
    read_wav,
    speech_like,
    synthetic_speech,
    to_pcm16,
    write_wav,
)


def _wav(path: Path, channels: int, width: int, frames: int = 160) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(16000)
        w.writeframes(b"\x01" * frames * channels * width)
    return path


def test_a_mono_16_bit_wav_round_trips(tmp_path: Path) -> None:
    pcm = synthetic_speech(0.25, 22050, seed=3)
    write_wav(tmp_path / "a.wav", pcm, 22050)
    assert read_wav(tmp_path / "a.wav") == (pcm, 22050)


@pytest.mark.parametrize(("channels", "width", "found"), [(2, 2, "2 channel(s), 16-bit"),
                                                          (1, 1, "1 channel(s), 8-bit"),
                                                          (1, 3, "1 channel(s), 24-bit")])
def test_anything_but_16_bit_mono_is_refused_with_the_conversion(
        tmp_path: Path, channels: int, width: int, found: str) -> None:
    path = _wav(tmp_path / "x.wav", channels, width)
    with pytest.raises(WavFormatError) as exc:
        read_wav(path)
    assert found in str(exc.value)
    assert "only 16-bit mono PCM WAV is accepted (convert with: sox" in str(exc.value)


@pytest.mark.parametrize("data", [b"RIFF", b"not a wav at all, just text\n" * 4])
def test_a_broken_file_is_refused_as_not_a_wav(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "broken.wav"
    path.write_bytes(data)
    with pytest.raises(WavFormatError, match="not a PCM WAV file"):
        read_wav(path)


def test_the_synthetic_voice_is_deterministic_speech_like_pcm() -> None:
    x = speech_like(1.0, 16000, seed=7)
    assert x.dtype == np.float32 and x.shape == (16000,)
    assert np.abs(x).max() == pytest.approx(0.7, abs=1e-6)
    assert not np.any(x[: int(0.15 * 16000)])  # it starts with a little silence
    assert synthetic_speech(1.0, 16000, seed=7) == to_pcm16(x)
    assert synthetic_speech(1.0, 16000, seed=8) != to_pcm16(x)
