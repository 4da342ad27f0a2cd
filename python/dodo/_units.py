"""Arrays that carry a unit (astropy, pint and unyt quantities; an xarray DataArray or h5py dataset whose
attrs name one): their numbers where the unit is cm^-3 (number densities and fluxes) or dimensionless,
a one-line refusal naming the conversion otherwise. One module for dodo.box3d's inputs and
dodo.conventions' layout conversions alike (it imports nothing of dodo, so neither imports the other
for it)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np


#: attrs['units'] spellings read as plain numbers, and (F_init) as cm^-3; any other is refused.
_DIMENSIONLESS_SPELLINGS = frozenset(("", "1", "none", "dimensionless", "-"))
_PER_CM3_SPELLINGS = frozenset(("cm^-3", "cm**-3", "cm-3", "1/cm^3", "1/cm**3", "1/cm3", "cm^{-3}", "1/ccm", "ccm^-1",
                                "1/centimeter**3", "centimeter**-3", "/cm^3", "/cm3", "cm⁻³"))


def _carries_unit(value) -> bool:
    """Whether ``value`` is a quantity of astropy, pint or unyt (numbers with a unit and a conversion)."""
    return (type(value) is not np.ndarray and (hasattr(value, "unit") or hasattr(value, "units"))
            and (hasattr(value, "m_as") or hasattr(value, "to_value")))


def _plain_numbers(name: str, value, density: bool):
    """The numbers of an array that carries a unit (an astropy Quantity, a pint Quantity, a unyt array of
    yt), or ``value`` itself where it carries none. Such an array was read through its numbers, the unit
    dropped without a word: F_init in m^-3 gave a growth_rate (which assumes cm^-3) 1e6 too large, one
    in erg or km/s was computed with (outside probe, Python round fifty). Kept: a unit of factor 1, cm^-3
    (``density``: F_init) or dimensionless; refused, in one line naming the conversion: any other."""
    if type(value) is np.ndarray:
        return value
    if isinstance(value, (list, tuple)) and any(_carries_unit(item) for item in value):
        # A list of quantities (one per cell) was read through np.asarray, each unit dropped (outside
        # probe, Python round fifty-one): each item as an array of its own.
        return [_plain_numbers(f"{name}[{i}]", item, density) for i, item in enumerate(value)]
    attrs = getattr(value, "attrs", None)
    data = getattr(value, "data", None)
    if isinstance(attrs, Mapping) and not _carries_unit(value) and _carries_unit(data):
        return _plain_numbers(name, data, density)  # an xarray DataArray wrapping a pint Quantity
    if isinstance(attrs, Mapping) and isinstance(attrs.get("units"), (str, bytes)) and not _carries_unit(value):
        # An xarray DataArray (or an h5py dataset) whose attrs name its unit: its numbers were read
        # as they are, attrs['units'] = 'm^-3' or 'km/s' not looked at (outside probe, Python round fifty-one).
        unit = attrs["units"].decode(errors="replace") if isinstance(attrs["units"], bytes) else attrs["units"]
        spelled = "".join(unit.split()).lower()
        if spelled in _DIMENSIONLESS_SPELLINGS or density and spelled in _PER_CM3_SPELLINGS:
            return value
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        wanted = ("number densities and fluxes in cm^-3 (attrs['units'] 'cm^-3' or none)" if density else
                  "the fluid four-velocity in plain numbers (u^t = W, u^i = W v^i / c; attrs['units'] '1' or none)")
        raise ValueError(f"{name} has attrs['units'] = {unit!r} ({kind}): dodo computes with its numbers alone and "
                         f"reads {name} as {wanted}; convert its values, or set attrs['units'] if they already are")
    if not (hasattr(value, "unit") or hasattr(value, "units")):
        return value
    convert = getattr(value, "m_as", None) or getattr(value, "to_value", None)  # pint; astropy and unyt
    magnitude = getattr(value, "magnitude", getattr(value, "value", None))
    unit = getattr(value, "unit", None) if hasattr(value, "unit") else getattr(value, "units", None)
    if convert is None or unit is None or magnitude is None or callable(magnitude):
        return value  # not a quantity these libraries make (a unit-less "units" attribute of something else)
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    method = "m_as" if hasattr(value, "m_as") else "to_value"
    magnitude = np.asarray(magnitude)
    for target in ("cm**-3", "") if density else ("",):
        try:
            numbers = np.asarray(convert(target))
        except Exception:  # noqa: BLE001 - the library's "not convertible" (UnitConversionError, DimensionalityError)
            continue
        if numbers.__array_interface__ == magnitude.__array_interface__ or (  # astropy's view at a factor of 1
                numbers.shape == magnitude.shape and np.array_equal(numbers, magnitude, equal_nan=True)):
            return magnitude  # cm^-3 or plain numbers: the numbers are what dodo computes with
        if target:
            shown = np.flatnonzero(np.isfinite(numbers) & (numbers != 0) & np.isfinite(magnitude))
            factor = (f" a rate {magnitude.flat[shown[0]] / numbers.flat[shown[0]]:.3g} times the true one"
                      if shown.size else " the wrong rate")
            raise ValueError(f"{name} is a quantity in {unit} ({kind}): dodo computes with its numbers alone, and "
                             f"growth_rate (s^-1) assumes number densities in cm^-3, so these numbers would give"
                             f"{factor}; give {name}.{method}(\"cm**-3\")")
        break  # a scaled dimensionless unit (percent): which numbers are meant is not known
    if density:
        raise ValueError(f"{name} is a quantity in {unit} ({kind}), not a number density in cm^-3 or plain numbers: "
                         f"F_init holds number densities and number fluxes; give them as {name}.{method}(\"cm**-3\")")
    raise ValueError(f"{name} is a quantity in {unit} ({kind}): u is the fluid four-velocity in plain numbers "
                     "(u^t = W, u^i = W v^i / c); give its numbers")
