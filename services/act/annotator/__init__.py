"""The annotator service: gRPC `act.v1.Annotator` over an inference backend, y_m = f_m(x).

Run it with `actctl serve annotator` or `python -m act.annotator` (settings from `ACT_*`
variables, see `act.serving.settings`).
"""

from act.annotator.servicer import SERVICE_NAME, AnnotatorServicer

__all__ = ["SERVICE_NAME", "AnnotatorServicer"]
