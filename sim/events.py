"""The simulator's own event queue (see :mod:`d7y.sim._events_py`).

``backend`` is the implementation in use: the compiled ``d7y.sim._events`` (setup.py
builds it with the kernels) or, with ``D7Y_NO_EXTENSIONS=1`` or when it was not built,
the twin ``d7y.sim._events_py``; they give the same order
(tests/test_sim_events_twins.py).
"""

from d7y.ext import load_backend

backend = load_backend("events", "d7y.sim")

EventHeap = backend.EventHeap

__all__ = ["EventHeap", "backend"]
