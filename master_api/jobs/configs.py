"""The relay config each target of a deployment gets, rendered by the master.

A deploy or reload installs on every host the config the master would push to its agent: the
node's config version rendered with the whole fleet as peers (``NodeService.render_version``,
the same code as ``GET /nodes/{id}/config``). Rendering here rather than in the role's
``gost_config`` filter matters because a deployment's inventory holds only its targets: an
edge deployed alone still chains to every online core the master knows.

Which version a node gets:

* the deployment's ``config_version`` when that version is for the node's type (it may be a
  draft: deploying a version before publishing it is how an operator tries it on a canary);
* otherwise the version active for the node's type and region;
* none at all when neither exists: the role then renders its built-in template.

A version that cannot be rendered for a target refuses the whole run before any host is touched
(:class:`~master_api.jobs.job.JobError` naming the node and the checker's issues).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from master_api.deployment_models import Deployment
from master_api.errors import ApiError
from master_api.models import Node
from master_api.repos import Repos
from master_api.services.configs import ConfigService
from master_api.services.nodes import NodeService
from master_api.settings import Settings

__all__ = ["NodeConfig", "RenderError", "render_targets"]

#: Playbooks that install a config on the hosts.
CONFIG_PLAYBOOKS = ("deploy", "reload")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One target's rendered config and the version it came from."""

    version: int
    text: str


class RenderError(Exception):
    """A target's config cannot be rendered; the message names the node and why."""


def _describe(exc: ApiError) -> str:
    issues = exc.extra.get("issues") or []
    details = "; ".join(f"{i['path']}: {i['message']}" for i in issues)
    return f"{exc.message} ({details})" if details else exc.message


def render_targets(
    deployment: Deployment, nodes: Sequence[Node], repos: Repos, settings: Settings
) -> Mapping[str, NodeConfig]:
    """``{node id: NodeConfig}`` for the targets that have a version (see the module doc);
    empty for playbooks that install no config. Raises :class:`RenderError`."""
    if deployment.playbook not in CONFIG_PLAYBOOKS:
        return {}
    configs = ConfigService(repos, settings)
    renderer = NodeService(repos, settings, configs)
    requested_type = None
    if deployment.config_version is not None:
        try:
            requested_type = configs.get(deployment.config_version).node_type
        except ApiError as exc:
            raise RenderError(exc.message) from None
    pointers = configs.pointers()
    out: dict[str, NodeConfig] = {}
    for node in nodes:
        if requested_type == node.type:
            version = deployment.config_version
        else:
            version = renderer.desired_version(node, pointers)
        if version is None:
            continue
        try:
            rendered = renderer.render_version(node, version)
        except ApiError as exc:
            message = _describe(exc)
            if node.name not in message:
                message = f"node {node.name}: {message}"
            raise RenderError(message) from None
        out[node.id] = NodeConfig(version, rendered.yaml)
    return out
