"""The criticizer service: gRPC `act.v1.Criticizer` over an inference backend,
eps = g(x, y_m) ≈ P(y != y_m | x).

Run it with `actctl serve criticizer` or `python -m act.criticizer` (settings from `ACT_*`
variables, see `act.serving.settings`).
"""

from act.criticizer.servicer import SERVICE_NAME, CriticizerServicer

__all__ = ["SERVICE_NAME", "CriticizerServicer"]
