"""Argument checks shared by every kernel and reference in ``_core``.

The compiled modules call them before they touch memory, so a bad argument is a
``ValueError`` naming the array and what was expected, never a crash.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

_INT_RANGE = {np.dtype(t): (int(np.iinfo(t).min), int(np.iinfo(t).max))
              for t in (np.int32, np.int64)}


def describe(array: np.ndarray) -> str:
    return f"{array.dtype} array of shape {array.shape}"


def _as_ndarray(name: str, value: Any, expected: Any) -> np.ndarray:
    """``expected``: what was expected, as text or a function giving it."""
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        text = expected() if callable(expected) else expected
        raise ValueError(f"{name}: expected {text}, got {type(value).__name__} "
                         f"({error})") from None


def integer_array(name: str, value: Any, dtype: type = np.int32, *, length: int | None = None,
                  lower: int | None = None, upper: int | None = None) -> np.ndarray:
    """``value`` as a C-contiguous 1-D array of ``dtype`` whose values lie in
    ``[lower, upper)``; any integer dtype is accepted when its values fit.

    >>> integer_array("v", [1, 2], upper=3).dtype
    dtype('int32')
    """
    dtype = np.dtype(dtype)

    def expected() -> str:  # built only for a message: this runs once per kernel call
        shape = "(n,)" if length is None else f"({length},)"
        return f"a 1-D integer array of shape {shape} (stored as {dtype})"

    array = _as_ndarray(name, value, expected)
    empty_ok = array.size == 0 and array.dtype.kind in "iuf"
    if array.ndim != 1 or (array.dtype.kind not in "iu" and not empty_ok) or \
            (length is not None and array.shape[0] != length):
        raise ValueError(f"{name}: expected {expected()}, got {describe(array)}")
    low, high = _INT_RANGE[dtype]
    low = low if lower is None else max(low, lower)
    high = high if upper is None else min(high, upper - 1)
    if array.size:
        smallest, largest = int(array.min()), int(array.max())
        if smallest < low or largest > high:
            bad = smallest if smallest < low else largest
            raise ValueError(f"{name}: value {bad} at index "
                             f"{int(np.flatnonzero(array == bad)[0])} is outside "
                             f"[{low}, {high}]")
    return np.ascontiguousarray(array, dtype=dtype)


def float_array(name: str, value: Any, *, length: int, nonnegative: bool = False) -> np.ndarray:
    """``value`` as a C-contiguous float64[length] of finite numbers (``>= 0`` if asked)."""
    expected = f"a 1-D float64 array of shape ({length},)"
    array = _as_ndarray(name, value, expected)
    if array.ndim != 1 or array.shape[0] != length or \
            (array.dtype.kind not in "iuf" and array.size):
        raise ValueError(f"{name}: expected {expected}, got {describe(array)}")
    array = np.ascontiguousarray(array, dtype=np.float64)
    bad = ~np.isfinite(array) | ((array < 0) if nonnegative else False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        need = "finite and >= 0" if nonnegative else "finite"
        raise ValueError(f"{name}: value {float(array[i])!r} at index {i} is not {need}")
    return array


def csr_arrays(indptr_name: str, indices_name: str, indptr: Any, indices: Any,
               n_rows: int | None, n_cols: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a CSR pair: ``indptr`` int64[n_rows+1] from 0, non-decreasing, ending at
    ``len(indices)``; ``indices`` int32 in ``[0, n_cols)``. ``None`` sizes mean "as given"
    (``n_cols`` then equals ``n_rows``)."""
    ptr = integer_array(indptr_name, indptr, np.int64,
                        length=None if n_rows is None else n_rows + 1)
    if ptr.shape[0] == 0:
        raise ValueError(f"{indptr_name}: expected a 1-D integer array of shape (n+1,) "
                         "(stored as int64), got an empty array")
    n_rows = ptr.shape[0] - 1
    n_cols = n_rows if n_cols is None else n_cols
    idx = integer_array(indices_name, indices, np.int32, lower=0, upper=n_cols)
    if ptr[0] != 0 or ptr[-1] != idx.shape[0] or (n_rows and (np.diff(ptr) < 0).any()):
        raise ValueError(f"{indptr_name}: must start at 0, never decrease and end at "
                         f"len({indices_name}) = {idx.shape[0]}; got start {int(ptr[0])}, "
                         f"end {int(ptr[-1])}")
    return ptr, idx


def count_arg(name: str, value: Any) -> int:
    """A non-negative Python int (a batch size)."""
    count = scalar_index(name, value)
    if count < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {count}")
    return count


def scalar_index(name: str, value: Any, upper: int | None = None) -> int:
    """An integer scalar, in ``[0, upper)`` when ``upper`` is given."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    try:
        index = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None
    if upper is not None and not 0 <= index < upper:
        raise ValueError(f"{name}: {index} is outside [0, {upper})")
    return index


# ---- the reference engine -----------------------------------------------------------
