"""Dodo's fast-flavour quantum-kinetic solver: ground truth Dodo can make itself (docs/qke.md).

Never imports torch. Main pieces:
- :func:`make_box` (backends.py) / :class:`SolverConfig` (solver.py): batched periodic 1D boxes, stepped by the
  compiled kernel of the C++ core (:class:`CompiledFlavourBox`, compiled.py) or by the NumPy
  :class:`FastFlavourBox` (the test oracle and fallback), as ``SolverConfig.backend`` says;
- :func:`asymptotic_states` (asymptotic.py): Emu/Rhea asymptotic state and growth rate;
- :func:`box_growth_rate`, :func:`fastest_wavevector` (linear.py): linear dispersion relation;
- :func:`simulate_states` (campaign.py): chunked, resumable runs writing Emu databases;
- ``dodo simulate`` (cli.py).
"""
from .asymptotic import AsymptoticState, asymptotic_states
from .campaign import simulate_states
from .compiled import CompiledFlavourBox
from .directions import uniform_sphere
from .initial import initial_density_matrices, maxent_direction_weights
from .linear import box_growth_rate, dispersion_eigenvalues, fastest_wavevector
from .backends import make_box, resolve_backend
from .solver import FastFlavourBox, SolverConfig
from .states import random_crossing_states, read_states

__all__ = ["AsymptoticState", "CompiledFlavourBox", "FastFlavourBox", "SolverConfig", "asymptotic_states",
           "box_growth_rate", "dispersion_eigenvalues", "fastest_wavevector", "initial_density_matrices",
           "make_box", "maxent_direction_weights", "random_crossing_states", "read_states", "resolve_backend",
           "simulate_states", "uniform_sphere"]
