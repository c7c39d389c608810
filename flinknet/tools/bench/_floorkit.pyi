"""Type stubs for flinknet.tools.bench._floorkit (compiled): the native relay of the I/O-thread floor."""

import numpy as np
import numpy.typing as npt

def relay_send(sock: int, count: int, chunk: int, window: int, rate: float = 0.0,
               credits: int = 0, record: int = 0) -> int: ...
def relay_receive(sock: int, count: int, chunk: int, window: int, stamps: bool = False,
                  credits: bool = False, record: int = 0) -> tuple[int, float, npt.NDArray[np.float64]]: ...
