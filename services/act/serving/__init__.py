"""What the model services share: settings, the server runner, limits, metrics and logs.

`act.annotator` and `act.criticizer` are thin servicers over `act.serving.handling`;
`ModelServer` runs either one (health checking, reflection, Prometheus metrics, graceful
shutdown) and `serve`/`run` add signal handling for `actctl serve annotator|criticizer`
and `python -m act.annotator|act.criticizer`.
"""

from act.serving.server import ModelServer, load_backend, run, serve
from act.serving.settings import ServingSettings

__all__ = ["ModelServer", "ServingSettings", "load_backend", "run", "serve"]
