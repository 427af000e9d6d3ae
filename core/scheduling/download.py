"""The peer's download loop, sans-IO: one state machine for dfdaemon and the simulator.

Documented in its source, :mod:`d7y.core.scheduling._download_py`. ``backend`` is the
implementation in use: ``d7y.core.scheduling._download``, that very source compiled by
Cython's pure-Python mode with the C types of ``_download.pxd`` (setup.py
``PURE_MODE``), or the Python module itself (``D7Y_NO_EXTENSIONS=1``, not built, or
built from another version of the source). The two give the same results bit for bit
(tests/test_core_compiled_twins.py). The actions, states and configuration below are
the backend's own: compare actions by ``type(action) is Fetch`` with these names.
"""

from d7y.ext import load_backend

backend = load_backend("download", "d7y.core.scheduling")

BUSY = backend.BUSY
CONNECTION = backend.CONNECTION
CORRUPT = backend.CORRUPT
DONE = backend.DONE
DOWNLOAD_POLICIES = backend.DOWNLOAD_POLICIES
DOWNLOAD_POLICY_DEFAULTS = backend.DOWNLOAD_POLICY_DEFAULTS
ERROR = backend.ERROR
KINDS = backend.KINDS
NOT_FOUND = backend.NOT_FOUND
ORIGIN = backend.ORIGIN
P2P = backend.P2P
COST_EWMA = backend.COST_EWMA
AskParents = backend.AskParents
Cancel = backend.Cancel
Download = backend.Download
DownloadConfig = backend.DownloadConfig
Fetch = backend.Fetch
Finished = backend.Finished
Follow = backend.Follow
GoToOrigin = backend.GoToOrigin
ReportFailed = backend.ReportFailed
Unfollow = backend.Unfollow

__all__ = [*backend.__all__, "COST_EWMA", "backend"]
