"""Wire constants of the Audio2Face-3D service beyond NVIDIA's protobuf messages.

The client (``a2f-client``, the load generator) and the server import them from here.
"""

from __future__ import annotations

#: Request metadata: the model folder a stream runs on (default: the server's default model).
MODEL_METADATA = "x-a2f-model"
#: Request metadata: the identity of a multi-identity (diffusion) model.
IDENTITY_METADATA = "x-a2f-identity"
#: Response initial metadata: the model version the stream runs on to its end.
VERSION_METADATA = "x-a2f-model-version"
