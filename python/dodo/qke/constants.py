"""Physical constants of the QKE solver (one place; units cm, s, cm^-3)."""
from ..conventions import GROWTH_RATE_PER_NTOT

#: mu = sqrt(2) G_F / hbar in cm^3 s^-1 (dodo.conventions: PDG G_F/(hbar c)^3 and hbar).
SELF_INTERACTION_PER_DENSITY = GROWTH_RATE_PER_NTOT
#: Speed of light, cm s^-1 (exact).
SPEED_OF_LIGHT = 2.99792458e10
