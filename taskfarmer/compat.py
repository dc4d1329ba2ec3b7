"""What PyTaskFarmer 0.1.0's users type, read as this version understands it."""

from __future__ import annotations

from typing import Final

_PTF_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_PTF_FALSE: Final = frozenset({"false", "0", "no", "off"})


def ptf_verbose(argv: list[str]) -> list[str]:
    """PyTaskFarmer's ``-v``/``--verbose`` took a value (``-v True``, ``-v 1``): read it as ``-v``, or as nothing
    for a false one, so that its users' job scripts run unchanged.
    """
    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word not in {"-v", "--verbose"}:
            out.append(word)
            continue
        value = next(words, None)
        if value is None or value.lower() not in _PTF_TRUE | _PTF_FALSE:
            out.append(word)
            if value is not None:
                out.append(value)
        elif value.lower() in _PTF_TRUE:
            out.append(word)
    return out
