"""Domain logic between the views and the repositories: no Flask request objects, no pymongo.

:class:`Services` bundles them for one app (``master_api.extensions.services()``).
"""

from __future__ import annotations

from master_api.repos import Repos
from master_api.services.configs import ConfigService
from master_api.services.deployments import DeploymentService
from master_api.services.external_runs import ExternalRuns
from master_api.services.nodes import NodeService
from master_api.services.passwords import Passwords
from master_api.services.usage import UsageService
from master_api.settings import Settings

__all__ = ["Services"]


class Services:
    """The services of one app, sharing its repositories and settings."""

    def __init__(self, repos: Repos, settings: Settings) -> None:
        self.passwords = Passwords(settings)
        self.configs = ConfigService(repos, settings)
        self.nodes = NodeService(repos, settings, self.configs)
        self.deployments = DeploymentService(repos, settings)
        self.external_runs = ExternalRuns(repos)
        self.usage = UsageService(repos, settings)
