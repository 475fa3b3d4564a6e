"""Type stubs of the compiled context kernels (context.pyx); see _ref_context."""

import numpy as np
import numpy.typing as npt

CONFLICT: int
MISSING: int

FactTable = tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int32],
                  npt.NDArray[np.bool_]]

def propagate_origins(
    parent_indptr: npt.ArrayLike, parent_indices: npt.ArrayLike, topo_order: npt.ArrayLike,
    own_indptr: npt.ArrayLike, own_origins: npt.ArrayLike, n_origins: int,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]: ...

def resolve_nearest(
    reach: npt.ArrayLike, origin_inherited: npt.ArrayLike, fact_origin: npt.ArrayLike,
    fact_key: npt.ArrayLike, fact_value: npt.ArrayLike, n_keys: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int32],
           npt.NDArray[np.int64], npt.NDArray[np.int32]]: ...

def merge_facts(origin: npt.ArrayLike, key: npt.ArrayLike, value: npt.ArrayLike,
                shadowed: npt.ArrayLike, own_origin: npt.ArrayLike, own_key: npt.ArrayLike,
                own_value: npt.ArrayLike, peers: npt.ArrayLike | None = None) -> FactTable: ...

def lookup_fact(origin: npt.ArrayLike, key: npt.ArrayLike, value: npt.ArrayLike,
                shadowed: npt.ArrayLike, wanted_key: int) -> tuple[int, npt.NDArray[np.int64]]: ...

__all__: list[str]
