"""``a2f-bench``: benchmarks and load generators of the Audio2Face-3D serving stack.

Tools, not product code: nothing under ``lib/`` or ``services/`` imports this package.

- :mod:`a2f_bench.cli`: the ``a2f-bench`` command (``pipeline``, ``serve``).
- :mod:`a2f_bench.pipeline`: the pipeline library against the network alone.
- :mod:`a2f_bench.load`: N concurrent gRPC streams and their frame latencies.
- :mod:`a2f_bench.serve`: the server in a subprocess under that load, then the library alone.
- :mod:`a2f_bench.transports`: the gRPC layer alone (canned frames) on grpc.aio and on the
  thread-pool server.
- :mod:`a2f_bench.postprocess`: frames per second of post-processing alone.
- :mod:`a2f_bench.standins`: cached stand-in model folders for all of the above.
- :mod:`a2f_bench.proc`: process helpers (free port, CPU seconds of a child).
"""
