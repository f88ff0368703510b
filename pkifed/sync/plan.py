"""Plans: the typed actions a reconcile pass would take, each with its reason.

``pkifed plan --json`` prints :meth:`Plan.to_json`. Its format (version 1):

.. code-block:: text

    {
      "format_version": 1,
      "federation": "<name>",
      "generated_at": "<ISO-8601 UTC>",
      "actions": [
        {"kind": "<kind>", "object": "<what it acts on>", "reason": "<why>",
         "authority": "<name or null>", "target": "<name or null>",
         "object_name": "<name within the target or null>"}
      ],
      "problems": [{"object": "<what>", "message": "<why nothing can be done>"}],
      "waiting": [{"object": "<what>", "message": "<what it waits for>"}]
    }

Kinds: ``create-key``, ``adopt-key``, ``record-key``, ``issue-certificate``,
``sign-crl``, ``publish`` and ``retire``. New kinds may be added; existing
fields keep their meaning. A ``waiting`` entry is a change that a later pass
makes once an earlier step is confirmed, such as moving children to a new root
only after every target serves it.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass
from enum import StrEnum


class ActionKind(StrEnum):
    """What an action does."""

    CREATE_KEY = "create-key"
    ADOPT_KEY = "adopt-key"
    RECORD_KEY = "record-key"
    ISSUE_CERTIFICATE = "issue-certificate"
    CROSS_SIGN = "cross-sign"
    SIGN_CRL = "sign-crl"
    PUBLISH = "publish"
    RETIRE = "retire"


@dataclass(frozen=True)
class Action:
    """One change a pass would make."""

    kind: ActionKind
    object: str
    reason: str
    authority: str | None = None
    target: str | None = None
    object_name: str | None = None

    def __str__(self) -> str:
        return f"{self.kind:<18} {self.object}: {self.reason}"


@dataclass(frozen=True)
class PlanProblem:
    """An object the plan cannot change now, and why: blocked, or waiting."""

    object: str
    message: str

    def __str__(self) -> str:
        return f"{self.object}: {self.message}"


@dataclass(frozen=True)
class Plan:
    """Every action of one pass, in the order they must run."""

    federation: str
    generated_at: datetime.datetime
    actions: tuple[Action, ...]
    problems: tuple[PlanProblem, ...] = ()
    waiting: tuple[PlanProblem, ...] = ()

    @property
    def empty(self) -> bool:
        """Whether nothing is left to do, now or in a later pass."""
        return not self.actions and not self.waiting

    def to_json(self) -> str:
        document = {
            "format_version": 1,
            "federation": self.federation,
            "generated_at": self.generated_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "actions": [
                {**asdict(action), "kind": str(action.kind)} for action in self.actions
            ],
            "problems": [asdict(problem) for problem in self.problems],
            "waiting": [asdict(entry) for entry in self.waiting],
        }
        return json.dumps(document, indent=2)
