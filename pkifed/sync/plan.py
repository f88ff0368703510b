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
      "problems": [{"object": "<what>", "message": "<why nothing can be done>"}]
    }

Kinds: ``create-key``, ``adopt-key``, ``record-key``, ``issue-certificate`` and
``publish``. New kinds may be added; existing fields keep their meaning.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum


class ActionKind(StrEnum):
    CREATE_KEY = "create-key"
    ADOPT_KEY = "adopt-key"
    RECORD_KEY = "record-key"
    ISSUE_CERTIFICATE = "issue-certificate"
    PUBLISH = "publish"


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
    """Something that blocks part of the plan and needs a person."""

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
    up_to_date: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not self.actions

    def to_json(self) -> str:
        document = {
            "format_version": 1,
            "federation": self.federation,
            "generated_at": self.generated_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "actions": [
                {**asdict(action), "kind": str(action.kind)} for action in self.actions
            ],
            "problems": [asdict(problem) for problem in self.problems],
        }
        return json.dumps(document, indent=2)
