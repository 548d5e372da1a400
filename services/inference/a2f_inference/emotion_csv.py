"""The three emotion CSV files of NVIDIA's sample client, from ``emotion_aggregate`` metadata.

NVIDIA's sample app collects, for every ``AnimationData``, the entries of the unpacked
``EmotionAggregate`` as ``{"time_code": t, "emotion_values": {name: value}}`` records and
writes them with ``pandas.json_normalize(...).to_csv(...)``. The files therefore have an
unnamed index column, ``time_code``, then one ``emotion_values.<name>`` column per emotion
name (an empty cell where an entry lacks a name). pandas orders those columns as the proto
map iterates, which protobuf leaves undefined, so readers go by column name; here the 10 A2F
emotions come first in A2F order, then any other names sorted:

* ``a2e_emotion_output.csv`` from ``a2e_output``;
* ``a2f_smoothed_emotion_output.csv`` from ``a2f_smoothed_output``;
* ``a2f_input_emotions.csv`` from ``input_emotions``.

:class:`EmotionCsvWriter` reproduces that layout without pandas.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from google.protobuf import any_pb2

from a2f_inference.proto_gen.nvidia_audio2face_3d import messages_pb2
from a2f_volume.model_folder import EMOTIONS
from a2f_volume.publish import atomic_write_text

#: aggregate field -> file name, as NVIDIA's sample app names them.
EMOTION_CSV_FILES: dict[str, str] = {
    "a2e_output": "a2e_emotion_output.csv",
    "a2f_smoothed_output": "a2f_smoothed_emotion_output.csv",
    "input_emotions": "a2f_input_emotions.csv",
}

Record = tuple[float, dict[str, float]]


class EmotionCsvWriter:
    """Collects the aggregates of one stream and writes the three CSV files."""

    def __init__(self) -> None:
        self.records: dict[str, list[Record]] = {k: [] for k in EMOTION_CSV_FILES}

    def add(self, aggregate: messages_pb2.EmotionAggregate | any_pb2.Any) -> bool:
        """Add one frame's aggregate (or its packed ``Any``); False if the ``Any`` holds
        something else."""
        if isinstance(aggregate, any_pb2.Any):
            agg = messages_pb2.EmotionAggregate()
            if not aggregate.Unpack(agg):
                return False
            aggregate = agg
        for field, records in self.records.items():
            for entry in getattr(aggregate, field):
                records.append((entry.time_code, dict(entry.emotion)))
        return True

    @staticmethod
    def render(records: list[Record]) -> str:
        """One file's text: ``,time_code,emotion_values.<name>...`` and one row per record."""
        seen = {n for _, values in records for n in values}
        names = [n for n in EMOTIONS if n in seen] + sorted(seen - set(EMOTIONS))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if records:
            w.writerow(["", "time_code", *(f"emotion_values.{n}" for n in names)])
        else:
            w.writerow([""])  # what pandas writes for an empty frame
        for i, (t, values) in enumerate(records):
            w.writerow([i, repr(float(t)),
                        *(repr(float(values[n])) if n in values else "" for n in names)])
        return buf.getvalue()

    def write(self, out_dir: Path) -> list[Path]:
        """Write the three files into ``out_dir``; returns their paths."""
        paths = []
        for field, name in EMOTION_CSV_FILES.items():
            path = Path(out_dir) / name
            atomic_write_text(path, self.render(self.records[field]))
            paths.append(path)
        return paths
