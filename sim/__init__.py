"""d7y.sim: the SimPy + networkx harness that drives the same d7y.core objects.

Modules (importing this package imports none of them, so ``d7y`` works without the
simulator's extra dependencies: simpy, networkx, matplotlib, numpy, dask):

- :mod:`~d7y.sim.cli`: ``d7y sim run SCENARIO ...`` (``main(argv) -> int``);
- :mod:`~d7y.sim.scenario`: scenario files, validated (every key documented in
  docs/simulation.md);
- :mod:`~d7y.sim.topology`: networkx topologies (flat, racks, multi-IDC, from a file);
- :mod:`~d7y.sim.network`: the flow-level max-min bandwidth model;
- :mod:`~d7y.sim.maxmin`: exact progressive filling, the model's reference;
  :mod:`~d7y.sim.maxmin_np`: its numpy twin, for large systems;
- :mod:`~d7y.sim.swarm`: simulated peers and scheduler service around d7y.core;
- :mod:`~d7y.sim.runner`, :mod:`~d7y.sim.results`, :mod:`~d7y.sim.plots`: running
  policies, the Kumar-Ross bound and metrics, JSON/CSV/PNG output;
- :mod:`~d7y.sim.sweep`: ``d7y sim sweep``, grids of runs on Dask.
"""
