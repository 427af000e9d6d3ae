"""Flow-level network: piece transfers as flows sharing capacities max-min fairly.

The model is documented in its pure-Python implementation, :mod:`d7y.sim._network_py`.
``backend`` is the implementation in use: the compiled ``d7y.sim._network`` (a typed
Cython port, setup.py builds it with the kernels of d7y.ext) or, with
``D7Y_NO_EXTENSIONS=1`` or when it was not built, the twin ``d7y.sim._network_py``. The
two give the same results bit for bit (tests/test_sim_network_twins.py); objects of the
two cannot be mixed (a pair's path holds resources of its own network's backend).
"""

from d7y.ext import load_backend

backend = load_backend("network", "d7y.sim")

Network = backend.Network
Resource = backend.Resource
Pair = backend.Pair
Flow = backend.Flow
INF: float = backend.INF
REL_TOL: float = backend.REL_TOL
MAX_FULL_SOLVES: int = backend.MAX_FULL_SOLVES
SMALL_GROUP: int = backend.SMALL_GROUP

__all__ = [
    "INF",
    "MAX_FULL_SOLVES",
    "REL_TOL",
    "SMALL_GROUP",
    "Flow",
    "Network",
    "Pair",
    "Resource",
    "backend",
]
