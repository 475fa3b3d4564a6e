"""Type stubs of the compiled placement kernel (placement.pyx); see _ref_placement."""

import numpy as np
import numpy.typing as npt

from ._ref_placement import POLICIES as POLICIES
from ._ref_placement import policy_weights as policy_weights

def place(load: npt.ArrayLike, capacity: npt.ArrayLike, server_host: npt.ArrayLike,
          input_vertex: npt.ArrayLike, input_host: npt.ArrayLike,
          input_bytes: npt.ArrayLike, *, n_vertices: int,
          cost: npt.ArrayLike | None = None, exclude_vertex: npt.ArrayLike | None = None,
          exclude_server: npt.ArrayLike | None = None, locality_weight: float = 0.0,
          load_weight: float = 1.0) -> npt.NDArray[np.int32]: ...

__all__: list[str]
