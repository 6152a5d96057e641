"""Shapes with smooth edges drawn without multisampling, for the .kv rules.

The window has no multisample buffers (`kiosk.ui`: a 4x copy of the window's colour and
depth buffers, some 30 MB of the UI process under Mesa's software GL). The screens' shapes
soften their own edges instead: `SmoothRoundedRectangle` for panels and buttons, and
`RoundLine` for strokes, since Kivy's `SmoothLine` has no round caps or joints.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from kivy.clock import Clock
from kivy.factory import Factory
from kivy.graphics import InstructionGroup, Rectangle
from kivy.graphics.texture import Texture


class RoundLine(InstructionGroup):
    """A polyline (`points`) or a ring (`circle`: x, y, radius) of `width` (as Kivy's
    `Line`: the stroke is twice as thick), with round caps and joints and smooth edges.

    It is drawn into a texture of its own, one pixel per pixel, from each pixel's distance
    to the line: one texture and one rectangle per shape. Built from Kivy's `SmoothLine`s
    (one per run between sharp corners, and a disc on each corner), the start and result
    screens' strokes were some two hundred draws, which cost about 4 MB under Mesa's
    software GL. Put a `Color` before it: the texture is white, its alpha the coverage."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self._points: list[float] = []
        self._circle: tuple[float, ...] = ()
        self._width = 1.0
        self._close = False
        # noadd: made while the .kv rules fill a widget's canvas, it would also land in
        # that canvas on its own, and be drawn twice.
        self._rect = Rectangle(size=(0, 0), noadd=True)
        self.add(self._rect)
        #: What the texture holds: the shape moved to the texture's origin, and its size.
        self._drawn: tuple[Any, ...] = ()
        # The .kv rules set one property at a time: draw once, before the next frame.
        self._redraw = Clock.create_trigger(self._draw, -1)
        for key, value in kwargs.items():
            setattr(self, key, value)

    @property
    def points(self) -> list[float]:
        return self._points

    @points.setter
    def points(self, value: Any) -> None:
        self._points = [float(v) for v in value]
        self._redraw()

    @property
    def circle(self) -> tuple[float, ...]:
        return self._circle

    @circle.setter
    def circle(self, value: Any) -> None:
        self._circle = tuple(float(v) for v in value)
        self._redraw()

    @property
    def width(self) -> float:
        return self._width

    @width.setter
    def width(self, value: float) -> None:
        self._width = float(value)
        self._redraw()

    @property
    def close(self) -> bool:
        return self._close

    @close.setter
    def close(self, value: bool) -> None:
        self._close = bool(value)
        self._redraw()

    def _reloaded(self, _texture: Any) -> None:
        """The GL context came back empty (Kivy reloads textures): draw the stroke again."""
        self._drawn = ()
        self._redraw()

    def _draw(self, _dt: float = 0.0) -> None:
        w, ring = self._width, len(self._circle) == 3
        if ring:
            cx, cy, r = self._circle
            xs, ys = [cx - r, cx + r], [cy - r, cy + r]
        elif len(self._points) >= 4:
            xs, ys = self._points[::2], self._points[1::2]
        else:
            self._rect.size = (0, 0)
            return
        margin = w + 1.0
        x0, y0 = math.floor(min(xs) - margin), math.floor(min(ys) - margin)
        size = (math.ceil(max(xs) + margin) - x0, math.ceil(max(ys) + margin) - y0)
        # Moved to the texture's origin: the same shape elsewhere is the same texture.
        circle = (cx - x0, cy - y0, r) if ring else ()
        points = [] if ring else [v - (y0 if i % 2 else x0) for i, v in enumerate(self._points)]
        key = (tuple(points), circle, w, self._close, size)
        if key != self._drawn:
            rgba = np.full((size[1], size[0], 4), 255, np.uint8)
            rgba[..., 3] = coverage(points, circle, w, self._close, size)
            texture = self._rect.texture
            if texture is None or tuple(texture.size) != size:
                texture = Texture.create(size=size, colorfmt="rgba")
                texture.add_reload_observer(self._reloaded)
            texture.blit_buffer(rgba.tobytes(), colorfmt="rgba", bufferfmt="ubyte")
            self._rect.texture = texture
            self._drawn = key
        self._rect.pos, self._rect.size = (x0, y0), size


def coverage(
    points: list[float],
    circle: tuple[float, ...],
    w: float,
    close: bool,
    size: tuple[int, int],
) -> Any:
    """How much of each pixel (0-255, rows from the bottom) a stroke of half-thickness `w`
    along the polyline `points` (or round the ring `circle`: x, y, radius) covers, in a
    `size` texture whose origin is (0, 0): 255 within w - 0.5 of the line, fading to 0 at
    w + 0.5, which makes round caps and joints and edges without stairs."""
    cols, rows = size
    px = np.arange(cols, dtype=np.float32) + 0.5
    py = (np.arange(rows, dtype=np.float32) + 0.5)[:, None]
    if circle:
        cx, cy, r = circle
        distance = np.abs(np.hypot(px - cx, py - cy) - r)
    else:
        corners = list(zip(points[::2], points[1::2], strict=True))
        if close:
            corners.append(corners[0])
        distance = np.full((rows, cols), np.inf, np.float32)
        for (ax, ay), (bx, by) in itertools.pairwise(corners):
            dx, dy = bx - ax, by - ay
            length2 = dx * dx + dy * dy
            t = 0.0 if length2 == 0 else np.clip(((px - ax) * dx + (py - ay) * dy) / length2, 0, 1)
            np.minimum(distance, np.hypot(px - ax - t * dx, py - ay - t * dy), out=distance)
    return (np.clip(w + 0.5 - distance, 0, 1) * 255 + 0.5).astype(np.uint8)


Factory.register("RoundLine", cls=RoundLine)
