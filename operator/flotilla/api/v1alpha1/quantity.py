"""Kubernetes resource quantities in Python, as the API server's CEL `quantity()` reads them.

The CRD checks serving.resources with CEL's `isQuantity`/`quantity` (Kubernetes' own parser);
the api models check the same values with `parse_quantity`, so a unit test and the API server
refuse the same manifests.
"""

from __future__ import annotations

import re
from fractions import Fraction

# <signedNumber><suffix>: suffix = binarySI | decimalExponent | decimalSI (k8s.io/apimachinery resource.Quantity)
_QUANTITY = re.compile(r"^([+-]?)([0-9]+\.?[0-9]*|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[numkMGTPE])?$")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def parse_quantity(value: int | str) -> Fraction | None:
    """The quantity's exact value (cores, bytes, ...), or None when it is not a quantity."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Fraction(value)
    match = _QUANTITY.match(value)
    if match is None:
        return None
    sign, number, suffix = match.group(1), match.group(2), match.group(3) or ""
    amount = Fraction(number if not number.endswith(".") else number[:-1])
    if suffix in _BINARY:
        amount *= 1024 ** _BINARY[suffix]
    elif suffix[:1] in {"e", "E"} and len(suffix) > 1:
        amount *= Fraction(10) ** int(suffix[1:])
    else:
        amount *= Fraction(10) ** _DECIMAL[suffix]
    return -amount if sign == "-" else amount
