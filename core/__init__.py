"""d7y.core: the pure domain logic (sans-IO).

Nothing in here touches a socket, a file, a clock or global random state: time and
randomness arrive as arguments, so the same objects run under a daemon's event loop or
a SimPy environment. ``core`` never imports ``d7y.daemons`` or ``d7y.sim``.
"""
