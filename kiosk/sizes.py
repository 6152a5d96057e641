"""Locker sizes and which lockers fit an order: written once, for decisions and devices."""

from __future__ import annotations

from collections.abc import Iterable

SIZES = ("S", "M", "L")
#: A size nobody wrote down is taken as the middle one.
DEFAULT_SIZE = "M"


def rank(size: str | None) -> int:
    """S < M < L; an unknown size counts as M."""
    return SIZES.index(size) if size in SIZES else SIZES.index(DEFAULT_SIZE)


def fitting(need: str | None, lockers: Iterable[tuple[int, str]]) -> list[int]:
    """Numbers of the lockers an order of size `need` fits in, smallest size first (then
    lowest number), so large lockers stay free for large orders. None needs the smallest."""
    want = rank(need) if need is not None else 0
    fits = [(rank(size), number) for number, size in lockers if rank(size) >= want]
    return [number for _, number in sorted(fits)]
