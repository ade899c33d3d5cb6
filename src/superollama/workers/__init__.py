"""``superollama serve --workers N``: N processes on one port, one primary and N-1 replicas.

    master (supervisor)      binds N SO_REUSEPORT sockets, forks, restarts, orders the shutdown
    ├── agent process        the node agent (``agent_process``): the model processes are its children
    ├── worker 0: primary    the whole app (controller, jobs, admin API) + the hub for replicas; drives
    │                        the agent through ``remote_agent`` (the ``NodeAgent`` seam)
    └── worker 1..N-1        the data plane (``replica``); everything else proxied to the primary

State shared between the workers, and how:

- routing snapshot: the primary pushes each new ``RoutingTable`` to every replica over a WebSocket on
  its control socket; an admin call that changes state returns once every replica acknowledged it;
- API keys: the same push tells replicas to reload their key cache after a key is created, revoked or
  rotated, here or through another gateway on the same registry (the primary's change feed,
  ``control/feed.py``, brings those);
- rate limits and budgets: Redis when configured (as for separate servers), else a shared-memory table
  made by the master (``security.shared_limits``), exact across the workers;
- in-flight counts: replicas report theirs to the primary, which adds them to its own and reports the
  sum to the agent process (``activity``), so idle unloading and drains see every worker's requests;
- usage ledger: every worker writes its own batches to the shared registry;
- metrics: ``/metrics`` (the primary) sums every worker's series.

One worker (``--workers 1``, or one CPU) is the plain single process, with none of this, except under
``--cluster``: there the master, one worker (the primary, with no replica) and the agent process run as
above, so that the agent process is the one Ray driver and no gateway process imports Ray.
"""

from superollama.workers.context import WORKER_HEADER, WorkerContext
from superollama.workers.posix import resolve_workers
from superollama.workers.supervisor import SERVER_FILE, supervise

__all__ = ["SERVER_FILE", "WORKER_HEADER", "WorkerContext", "resolve_workers", "supervise"]
