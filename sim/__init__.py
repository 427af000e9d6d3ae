"""d7y.sim: the SimPy + networkx harness that drives the same d7y.core objects."""
