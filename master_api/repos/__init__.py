"""Repositories: one class per collection, the only code that talks to the database (STYLE B2).

:class:`Repos` bundles them for one :class:`~master_api.store.Store`; views and services reach
them through ``master_api.extensions.repos()``.
"""

from __future__ import annotations

from pymongo.database import Database

from master_api.repos.alerts import AlertsRepo
from master_api.repos.audit_log import AuditLogRepo
from master_api.repos.autoscale_decisions import AutoscaleDecisionsRepo
from master_api.repos.base import BaseRepo, Document, db_call
from master_api.repos.config_active import ActivePointersRepo
from master_api.repos.config_history import ConfigHistoryRepo
from master_api.repos.config_rollbacks import ConfigRollbacksRepo
from master_api.repos.config_versions import ConfigVersionsRepo
from master_api.repos.counters import CountersRepo
from master_api.repos.deployment_events import DeploymentEventsRepo
from master_api.repos.deployment_locks import DeploymentLocksRepo
from master_api.repos.deployments import DeploymentsRepo
from master_api.repos.election_members import ElectionMembersRepo
from master_api.repos.leaders import LeadersRepo
from master_api.repos.login_attempts import LoginAttemptsRepo
from master_api.repos.nodes import NodeFilter, NodesRepo
from master_api.repos.revoked_tokens import RevokedTokensRepo
from master_api.repos.usage import QuotasRepo, UsageRecordsRepo
from master_api.repos.users import UsersRepo

__all__ = ["NodeFilter", "Repos"]


class Repos:
    """Every repository of one database."""

    def __init__(self, db: Database[Document]) -> None:
        self._db = db
        self.nodes = NodesRepo(db)
        self.users = UsersRepo(db)
        self.revoked_tokens = RevokedTokensRepo(db)
        self.login_attempts = LoginAttemptsRepo(db)
        self.counters = CountersRepo(db)
        self.config_versions = ConfigVersionsRepo(db)
        self.config_active = ActivePointersRepo(db)
        self.config_history = ConfigHistoryRepo(db)
        self.config_rollbacks = ConfigRollbacksRepo(db)
        self.leaders = LeadersRepo(db)
        self.election_members = ElectionMembersRepo(db)
        self.alerts = AlertsRepo(db)
        self.audit_log = AuditLogRepo(db)
        self.deployments = DeploymentsRepo(db)
        self.deployment_events = DeploymentEventsRepo(db)
        self.deployment_locks = DeploymentLocksRepo(db)
        self.autoscale_decisions = AutoscaleDecisionsRepo(db)
        self.usage_records = UsageRecordsRepo(db)
        self.usage_quotas = QuotasRepo(db)

    def all(self) -> list[BaseRepo]:
        return [value for value in vars(self).values() if isinstance(value, BaseRepo)]

    def ensure_indexes(self) -> None:
        """Create every collection's indexes (start-up; idempotent)."""
        for repo in self.all():
            repo.ensure_indexes()

    @db_call()
    def ping(self) -> None:
        """Raise ``StoreUnavailable`` (503) unless the server answers."""
        self._db.command("ping")
