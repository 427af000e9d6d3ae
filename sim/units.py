"""Parsing of the quantities a scenario file spells out: sizes, bandwidths, durations.

- Sizes (bytes): an int, or a string with a binary or decimal suffix: ``4MiB``,
  ``1GiB``, ``500MB``, ``64KiB``, ``123`` (``B`` optional).
- Bandwidths (returned in **bytes per second**): a number of bits per second, or a
  string in bits (``100Mbit``, ``1Gbit``, ``10Gbps``, ``2.5Gbit/s``; decimal prefixes,
  as network links are sold) or in bytes (``125MB/s``, ``100MiB/s``).
- Durations (seconds): a number, or ``500ms``, ``30s``, ``2m``, ``1h``, ``100us``.

Every parser raises ValueError naming the bad value and showing a valid spelling.
"""

from __future__ import annotations

import math
import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_BIT_PREFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BYTE_PREFIX = {
    "": 1,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "t": 1e12,
    "ki": 1024.0,
    "mi": 1024.0**2,
    "gi": 1024.0**3,
    "ti": 1024.0**4,
}
_DURATION_UNITS = {
    "": 1.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

_NUMBER = r"([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_size(value: object, what: str = "size") -> int:
    """Bytes from an int or a string like ``4MiB``; ValueError otherwise."""
    if _is_number(value):
        if value != int(value) or value < 0:  # type: ignore[operator]
            raise ValueError(f"{what} must be a whole number of bytes >= 0, got {value!r}")
        return int(value)  # type: ignore[arg-type]
    if isinstance(value, str):
        m = re.fullmatch(_NUMBER + r"\s*([A-Za-z]*)", value.strip())
        if m:
            unit = m.group(2).lower()
            if unit in _SIZE_UNITS:
                number = float(m.group(1)) * _SIZE_UNITS[unit]
                if number == int(number):
                    return int(number)
    raise ValueError(f"{what} {value!r} is not a size: write e.g. 4194304, '4MiB' or '1GiB'")


def parse_bandwidth(value: object, what: str = "bandwidth") -> float:
    """Bytes per second from bits/s (a number) or a string like ``1Gbit`` / ``125MB/s``."""
    if _is_number(value):
        bits = float(value)  # type: ignore[arg-type]
        if not math.isfinite(bits) or bits <= 0:
            raise ValueError(f"{what} must be a finite number of bits/s > 0, got {value!r}")
        return bits / 8.0
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        m = re.fullmatch(_NUMBER + r"([kKmMgGtT]?)(bit|bps|bit/s|b/s)", text)
        if m:
            rate = float(m.group(1)) * _BIT_PREFIX[m.group(2).lower()] / 8.0
            if rate > 0:
                return rate
        m = re.fullmatch(_NUMBER + r"([kKmMgGtT]i?)?(B/s|Bps)", text)
        if m:
            prefix = (m.group(2) or "").lower()
            rate = float(m.group(1)) * _BYTE_PREFIX[prefix]
            if rate > 0:
                return rate
    raise ValueError(
        f"{what} {value!r} is not a bandwidth > 0: write bits/s as a number or "
        f"'100Mbit', '1Gbit', '10Gbps', or bytes as '125MB/s', '100MiB/s'"
    )


def parse_duration(value: object, what: str = "duration", allow_inf: bool = False) -> float:
    """Seconds from a number or a string like ``500ms``; ``inf``/``never`` if allowed."""
    if allow_inf and (value is None or value in ("inf", "never", "forever")):
        return math.inf
    if _is_number(value):
        seconds = float(value)  # type: ignore[arg-type]
        if seconds >= 0 and (math.isfinite(seconds) or allow_inf):
            return seconds
    elif isinstance(value, str):
        m = re.fullmatch(_NUMBER + r"\s*([a-z]*)", value.strip())
        if m and m.group(2) in _DURATION_UNITS:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    extra = ", or 'never'" if allow_inf else ""
    raise ValueError(
        f"{what} {value!r} is not a duration >= 0: write seconds as a number or "
        f"'500ms', '30s', '2m', '1h', '1d'{extra}"
    )


def format_bandwidth(bytes_per_second: float) -> str:
    """``1.25e8`` -> ``'1Gbit'`` (for tables and plots)."""
    bits = bytes_per_second * 8
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g}{prefix}bit"
    return f"{bits:g}bit"


def format_size(n: float) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:g}{unit}"
    return f"{n:g}B"
