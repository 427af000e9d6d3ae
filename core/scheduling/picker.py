"""The peer-side piece picker: which piece to request next, and from which parent.

Documented in its source, :mod:`d7y.core.scheduling._picker_py`. ``backend`` is the
implementation in use: ``d7y.core.scheduling._picker``, that very source compiled by
Cython's pure-Python mode with the C types of ``_picker.pxd`` (setup.py ``PURE_MODE``),
or the Python module itself (``D7Y_NO_EXTENSIONS=1``, not built, or built from another
version of the source). The two give the same results bit for bit
(tests/test_core_compiled_twins.py); a driver uses one of them throughout.
"""

from d7y.ext import load_backend

backend = load_backend("picker", "d7y.core.scheduling")

PiecePicker = backend.PiecePicker
PieceFailure = backend.PieceFailure

__all__ = ["PieceFailure", "PiecePicker", "backend"]
