"""Shapes with smooth edges drawn without multisampling, for the .kv rules.

The window has no multisample buffers (`kiosk.ui`: a 4x copy of the window's colour and
depth buffers, some 30 MB of the UI process under Mesa's software GL). The screens' shapes
soften their own edges instead: `SmoothRoundedRectangle` for panels and buttons, and
`RoundLine` for strokes, since Kivy's `SmoothLine` has no round caps or joints.
"""

from __future__ import annotations

import math
from typing import Any

from kivy.factory import Factory
from kivy.graphics import InstructionGroup, SmoothLine

#: `SmoothLine`'s soft edge lies inside its width, so a line of the same width looks a
#: little thinner than Kivy's `Line`; this much wider, it covers the same pixels.
SOFT_EDGE = 1 / 3
#: How far (px) a mitred corner may stick out past a round one.
MITRE_PX = 0.75


class RoundLine(InstructionGroup):
    """A polyline (`points`) or a ring (`circle`: x, y, radius) of `width` (as Kivy's
    `Line`: the stroke is twice as thick), with round caps and joints and smooth edges:
    `SmoothLine`s from one sharp corner to the next, and a disc (a `SmoothLine` ring with
    no hole) on each sharp corner and open end. Draw it in an opaque colour: where parts
    overlap, a translucent one would show twice."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self._points: list[float] = []
        self._circle: tuple[float, ...] = ()
        self._width = 1.0
        self._close = False
        self._kinds: list[str] = []
        self._lines: list[Any] = []
        self._discs: list[Any] = []
        for key, value in kwargs.items():
            setattr(self, key, value)

    @property
    def points(self) -> list[float]:
        return self._points

    @points.setter
    def points(self, value: Any) -> None:
        self._points = [float(v) for v in value]
        self._build()

    @property
    def circle(self) -> tuple[float, ...]:
        return self._circle

    @circle.setter
    def circle(self, value: Any) -> None:
        self._circle = tuple(float(v) for v in value)
        self._build()

    @property
    def width(self) -> float:
        return self._width

    @width.setter
    def width(self, value: float) -> None:
        self._width = float(value)
        self._build()

    @property
    def close(self) -> bool:
        return self._close

    @close.setter
    def close(self, value: bool) -> None:
        self._close = bool(value)
        self._build()

    def _build(self) -> None:
        """Move the parts to the new shape; new parts only when their number changes
        (each `SmoothLine` makes a texture of its own: not on every layout pass)."""
        w = self._width
        lines: list[dict[str, Any]] = []
        discs: list[tuple[float, float]] = []
        if len(self._circle) == 3:
            lines.append({"circle": self._circle})
        elif len(self._points) >= 4:
            runs, discs = _runs(self._points, w, self._close)
            # A closed line without a sharp corner is one run that closes on itself.
            whole = self._close and not discs
            lines = [{"points": run, "close": whole} for run in runs]
        kinds = [next(iter(line)) for line in lines] + ["disc"] * len(discs)
        if kinds != self._kinds:
            # noadd: made while the .kv rules fill a widget's canvas, the parts would
            # also land in that canvas on their own.
            self.clear()
            self._lines = [SmoothLine(noadd=True, **line) for line in lines]
            self._discs = [SmoothLine(noadd=True) for _ in discs]
            for part in [*self._lines, *self._discs]:
                self.add(part)
            self._kinds = kinds
        for part, line in zip(self._lines, lines, strict=True):
            for key, value in line.items():
                setattr(part, key, value)
            part.width = w + SOFT_EDGE
        for disc, (x, y) in zip(self._discs, discs, strict=True):
            # A segment per pixel of the rim: Kivy's default of 180 per circle, on every
            # corner of every star, costs MBs of vertices under software GL.
            disc.circle = (x, y, w / 2, 0, 360, max(12, round(2 * math.pi * w)))
            disc.width = w / 2 + SOFT_EDGE


def _runs(
    points: list[float], w: float, close: bool
) -> tuple[list[list[float]], list[tuple[float, float]]]:
    """A polyline cut at its sharp corners into runs (each one `SmoothLine`), and where
    its discs go: the cuts and the open ends. `SmoothLine` mitres the corners within a
    run, which is as good as round while the mitre sticks out less than `MITRE_PX`; a
    sharper corner gets a disc instead (fewer parts: each costs memory under software GL)."""
    corners: list[tuple[float, float]] = []
    for xy in zip(points[::2], points[1::2], strict=True):
        if not corners or xy != corners[-1]:  # a segment of no length has no direction
            corners.append(xy)
    if close and len(corners) > 1 and corners[0] == corners[-1]:
        corners.pop()
    n = len(corners)
    if n < 2:
        return [], []

    def sharp(i: int) -> bool:
        (ax, ay), (bx, by), (cx, cy) = corners[i - 1], corners[i], corners[(i + 1) % n]
        turn = abs(
            math.remainder(math.atan2(cy - by, cx - bx) - math.atan2(by - ay, bx - ax), math.tau)
        )
        return turn >= math.pi / 2 or w * (1 / math.cos(turn / 2) - 1) > MITRE_PX

    inner = range(n) if close else range(1, n - 1)
    cuts = [i for i in inner if sharp(i)]
    if not close:
        cuts = [0, *cuts, n - 1]
    elif not cuts:
        return [[c for xy in corners for c in xy]], []
    runs = []
    for a, b in zip(cuts, cuts[1:] + ([cuts[0] + n] if close else []), strict=False):
        runs.append([c for i in range(a, b + 1) for c in corners[i % n]])
    return runs, [corners[i] for i in cuts]


Factory.register("RoundLine", cls=RoundLine)
