"""The kit: what tests/, bench/ and load_tests/ share to start a Surety server and talk to it.

- :mod:`surety_kit.server`: free ports, readiness, stopping a process, ``surety serve`` as a
  subprocess, the app served by uvicorn in a thread.
- :mod:`surety_kit.wire`: a minimal HTTP/1.1 client over asyncio streams (pre-built requests,
  keep-alive connections), for load generators that must not eat the cores they measure.
- :mod:`surety_kit.payloads`: request bodies of real digits and real fortune texts.
- :mod:`surety_kit.metrics`: the server's /metrics read back (in-flight requests, counters).

Not part of the wheel: the development virtualenv finds it through a ``.pth`` file that
``make build`` writes (docs/development.md, "The kit").
"""
