"""The screens' colours, without Kivy: the .kv files take them from here (base.kv), and
tests check their contrast (WCAG 2.x: text and the countdown bar at least 4.5:1 against
what they sit on) without opening a window."""

from __future__ import annotations

INK = (0.96, 0.97, 0.99, 1.0)
NAVY = (0.06, 0.13, 0.23, 1.0)
AMBER = (1.0, 0.76, 0.03, 1.0)
OK_GREEN = (0.09, 0.47, 0.22, 1.0)
NO_RED = (0.70, 0.15, 0.12, 1.0)
#: Quiet text on a white field (the phone placeholder).
MUTED_ON_INK = (0.30, 0.35, 0.42, 1.0)
#: Quiet text on the navy screens (small print, secondary lines).
MUTED_ON_NAVY = (0.72, 0.76, 0.82, 1.0)


def result_colours(ok: bool, wait: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Background and ink of the result screen: green, red, or amber (with navy ink) for
    a refusal that time will mend."""
    if wait:
        return AMBER, NAVY
    return (OK_GREEN if ok else NO_RED), INK
