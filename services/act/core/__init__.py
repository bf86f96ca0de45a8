"""Pure statistical core of ACT: budget transforms, sampling, the ACT loss, metrics, selection.

No I/O lives here; the services are thin adapters around these functions, so the embedded
single-process mode and the microservices share one implementation of every formula.
"""
