"""Deployments through ansible-runner (STYLE L4, B4, X1, X2; DESIGN §6).

* :mod:`~master_api.jobs.job` -- :class:`DeploymentJob`: one playbook run, built in overridable
  ``build_*`` steps (private data dir, inventory, extravars, env settings) and run in one
  ``run()`` pipeline with runner's event, status, finished and cancel callbacks;
* :mod:`~master_api.jobs.events` -- events numbered and stored in batches;
* :mod:`~master_api.jobs.inventory` -- the inventory from the node documents;
* :mod:`~master_api.jobs.files` -- 0700/0600 files, ``!unsafe`` YAML;
* :mod:`~master_api.jobs.processes` -- stopping the worker processes a stopped run leaves;
* :mod:`~master_api.jobs.executor` -- a claimed deployment from start to end (auto-rollback,
  node versions, final status, node locks);
* :mod:`~master_api.jobs.dispatch` -- claiming queued deployments, reaping interrupted ones.

The leader's :class:`~master_api.leader.DeploymentWorker` drives them. Never a shell call to
``ansible-playbook``.
"""

from __future__ import annotations

from master_api.jobs.dispatch import DeploymentDispatcher
from master_api.jobs.events import EventSink, RunRecorder
from master_api.jobs.executor import DeploymentExecutor, Outcome
from master_api.jobs.job import CancelCheck, DeploymentJob, JobError, RollbackJob

__all__ = [
    "CancelCheck",
    "DeploymentDispatcher",
    "DeploymentExecutor",
    "DeploymentJob",
    "EventSink",
    "JobError",
    "Outcome",
    "RollbackJob",
    "RunRecorder",
]
