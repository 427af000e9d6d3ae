"""One simulated run: hosts, peers and one policy on a flow-level network.

Documented in its source, :mod:`d7y.sim._swarm_py`. ``backend`` is the implementation in
use: ``d7y.sim._swarm``, that very source compiled by Cython's pure-Python mode with the
C types of ``_swarm.pxd`` (setup.py ``PURE_MODE``), or the Python module itself
(``D7Y_NO_EXTENSIONS=1``, not built, or built from another version of the source or of
a compiled module it imports). The two give the same results bit for bit
(tests/test_sim_unchanged.py runs on both). Module settings such as ``GC_EVERY`` and
``Network`` are read from ``backend`` at run time: set them there.
"""

from d7y.ext import load_backend

backend = load_backend("swarm", "d7y.sim")

BTS = backend.BTS
DONE = backend.DONE
FAILED = backend.FAILED
LEFT = backend.LEFT
ORIGIN_ID = backend.ORIGIN_ID
PENDING = backend.PENDING
RUNNING = backend.RUNNING
STATE_NAMES = backend.STATE_NAMES
Host = backend.Host
Peer = backend.Peer
SimTask = backend.SimTask
Simulation = backend.Simulation
Transfer = backend.Transfer

__all__ = [
    "BTS",
    "DONE",
    "FAILED",
    "LEFT",
    "ORIGIN_ID",
    "PENDING",
    "RUNNING",
    "STATE_NAMES",
    "Host",
    "Peer",
    "SimTask",
    "Simulation",
    "Transfer",
    "backend",
]
