"""The scheduling core (sans-IO): resources, evaluators, the scheduler and the picker.

- :class:`Scheduler` (scheduler.py): hosts/tasks/peers, registration, reports and GC, the
  facade over the decisions: a scheduling round (rounds.py), candidate parents
  (candidates.py, ranking.py), seed trigger and back-to-source (fallbacks.py). Returns
  result objects (results.py); its errors are in errors.py.
- translate.py: protocol messages <-> scheduler calls and results, for the daemon.
- :class:`SchedulerConfig` (config.py): every limit, with Dragonfly's defaults.
- Evaluators (evaluator.py): :class:`LoadAwareEvaluator` (default),
  :class:`BaseEvaluator`, :class:`RandomEvaluator`.
- :class:`PiecePicker` (picker.py): the peer-side choice of pieces and parents.
- :class:`HashRing` (hashring.py): which seed host fetches a task.

No I/O, no clock (``now`` is an argument), no global randomness (an injected
``random.Random``). The daemons and the simulator drive these same objects.
"""

from d7y.core.scheduling.config import SchedulerConfig
from d7y.core.scheduling.evaluator import (
    BaseEvaluator,
    Evaluator,
    LoadAwareEvaluator,
    RandomEvaluator,
    make_evaluator,
)
from d7y.core.scheduling.hashring import HashRing
from d7y.core.scheduling.picker import PieceFailure, PiecePicker
from d7y.core.scheduling.resource import DAG, Host, HostType, Peer, Reservation, Task
from d7y.core.scheduling.results import (
    DownloadEnded,
    EmptyTask,
    GCResult,
    HostAnnounced,
    MetadataOnly,
    NeedBackToSource,
    NormalTask,
    ParentInfo,
    PeerLeft,
    PieceFailedResult,
    RegisterResult,
    Retry,
    ScheduleFailed,
    ScheduleResult,
    SmallTask,
    TaskMeta,
    TinyTask,
    TriggerSeedPeer,
)
from d7y.core.scheduling.scheduler import (
    DuplicatePeer,
    PeerStateError,
    PieceNumberError,
    Scheduler,
    SchedulerError,
    UnknownHost,
    UnknownPeer,
    UnknownTask,
)

__all__ = [
    "DAG",
    "BaseEvaluator",
    "DownloadEnded",
    "DuplicatePeer",
    "EmptyTask",
    "Evaluator",
    "GCResult",
    "HashRing",
    "Host",
    "HostAnnounced",
    "HostType",
    "LoadAwareEvaluator",
    "MetadataOnly",
    "NeedBackToSource",
    "NormalTask",
    "ParentInfo",
    "Peer",
    "PeerLeft",
    "PeerStateError",
    "PieceFailedResult",
    "PieceFailure",
    "PieceNumberError",
    "PiecePicker",
    "RandomEvaluator",
    "RegisterResult",
    "Reservation",
    "Retry",
    "ScheduleFailed",
    "ScheduleResult",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerError",
    "SmallTask",
    "Task",
    "TaskMeta",
    "TinyTask",
    "TriggerSeedPeer",
    "UnknownHost",
    "UnknownPeer",
    "UnknownTask",
    "make_evaluator",
]
