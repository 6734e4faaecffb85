"""One playbook run of a deployment through ansible-runner (STYLE B4, X1; AWX ``BaseTask.run``).

:class:`DeploymentJob` prepares a private data dir in overridable ``build_*`` steps and runs it
in one :meth:`DeploymentJob.run` pipeline::

    <private data dir>/      0700, removed when the run ends (also on errors)
      inventory/hosts.yml    the target nodes from MongoDB (master_api.jobs.inventory)
      env/extravars          the deployment's variables, every string !unsafe
      env/settings           idle_timeout, job_timeout, pexpect_timeout, suppress_output_file
      env/envvars            ANSIBLE_CONFIG, PATH, ANSIBLE_LOCAL_TEMP; AICDN_* blanked
      env/cmdline            --check --diff in check mode
                             (every file 0600, created so from the start)

The playbooks are ``<Settings.ansible_playbook_dir>/<playbook>.yml`` (default: the repository's
``playbooks/``) run with ``Settings.ansible_config`` (the repository's ``ansible.cfg``).

Variables passed to every playbook (absent when not given, so the playbook default applies):

==============================  =============================================================
``aicdn_deployment_id``         the deployment's id
``aicdn_requested_by``          who created it
``aicdn_check_mode``            true in check mode (also run with ``--check --diff``)
``relay_version``               ``release`` (deploy, reload)
``relay_rollback_to``           ``release`` (rollback: the release to return to; absent: the
                                previous one)
``relay_config_version``        per host: the version of its rendered config (below)
``relay_config_rendered``       per host (deploy, reload): the node's config rendered by the
                                master (:mod:`master_api.jobs.configs`)
``aicdn_serial``                ``serial`` (also as ``aicdn_deploy_serial``,
                                ``aicdn_rollback_serial`` or ``aicdn_reload_serial``)
``aicdn_max_fail_percentage``   ``max_fail_percentage``
==============================  =============================================================

The inventory holds only the deployment's targets, so the playbooks' default host patterns
(``core``, ``edge``) mean exactly them. When a run ends, processes it left behind (Ansible's
detached workers of a canceled or timed-out run) are stopped before the directory goes.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ansible_runner

from master_api.deployment_models import Deployment, PhaseResult
from master_api.errors import StoreUnavailable
from master_api.jobs.configs import NodeConfig, RenderError, render_targets
from master_api.jobs.events import EventSink, RunRecorder
from master_api.jobs.files import dump_unsafe_yaml, dump_yaml, make_private_dir, write_private
from master_api.jobs.inventory import InventoryError, inventory_document
from master_api.jobs.processes import stop_leftovers
from master_api.models import Node
from master_api.repos import Repos
from master_api.settings import Settings

__all__ = ["CancelCheck", "DeploymentJob", "JobError", "RollbackJob"]

log = logging.getLogger(__name__)

#: How much of the runner's output a run without an exit code reports.
_OUTPUT_TAIL = 1500


def _runner_output_tail(private_data_dir: Path, ident: str) -> str:
    """The end of what ansible-runner wrote for the run ``ident`` (its ``stdout`` artifact)."""
    path = private_data_dir / "artifacts" / ident / "stdout"
    try:
        text = path.read_text(errors="replace").strip()
    except OSError as exc:
        return f"no runner output ({exc.strerror or exc})"
    return text[-_OUTPUT_TAIL:] or "the runner wrote nothing"


#: How long runner waits for output before it calls the cancel callback again (seconds): the
#: bound on how late a cancel is noticed, and how often quiet runs flush their events.
PEXPECT_TIMEOUT = 0.5


def _search_path() -> str:
    """PATH for the playbook: this interpreter's ``bin`` (its ``ansible-playbook``) first."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


class JobError(Exception):
    """The run cannot be prepared (a node variable refused, no target left, no playbook)."""


class CancelCheck:
    """The job's ``cancel_callback``: True once the deployment's cancel flag is set, or it is
    no longer ``running`` (another master's reaper took it for dead: this run must not go on
    beside whatever happens next), both read from the store at most every ``interval``
    seconds; or once ``shutdown`` is set (this master stops).

    Never raises: an exception here would make runner abandon the playbook still running.
    :attr:`reason` says why it answered True: ``"canceled"``, ``"lost"`` or ``"shutdown"``.
    """

    def __init__(
        self,
        repos: Repos,
        deployment_id: str,
        shutdown: threading.Event,
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repos = repos
        self._deployment_id = deployment_id
        self._shutdown = shutdown
        self._interval = interval
        self._clock = clock
        self._next_read = 0.0
        self.reason: str | None = None

    def __call__(self) -> bool:
        if self.reason is not None:
            return True
        if self._shutdown.is_set():
            self.reason = "shutdown"
            return True
        now = self._clock()
        if now < self._next_read:
            return False
        self._next_read = now + self._interval
        try:
            state = self._repos.deployments.run_state(self._deployment_id)
            if state is None or state[0] != "running":
                self.reason = "lost"
            elif state[1]:
                self.reason = "canceled"
        except StoreUnavailable as exc:
            log.warning(
                "deployment %s: cannot read the cancel flag: %s", self._deployment_id, exc.message
            )
        except Exception:  # runner callback boundary (STYLE E6): the run must go on
            log.exception("deployment %s: cancel check failed", self._deployment_id)
        return self.reason is not None


class DeploymentJob:
    """Runs ``deployment``'s playbook once on its targets (or on ``hosts`` of them).

    Subclasses override a ``build_*`` step or :meth:`extravars`; :meth:`run` stays the one
    pipeline. Events go to ``sink``; ``cancel`` is polled while the playbook runs.
    """

    playbook: str

    def __init__(
        self,
        deployment: Deployment,
        repos: Repos,
        settings: Settings,
        sink: EventSink,
        cancel: CancelCheck,
        hosts: Sequence[str] | None = None,
    ) -> None:
        self.deployment = deployment
        self.repos = repos
        self.settings = settings
        self.sink = sink
        self.cancel = cancel
        self.hosts = None if hosts is None else tuple(hosts)
        self.playbook = deployment.playbook

    # -- build steps ---------------------------------------------------------------------------

    def build_private_data_dir(self) -> Path:
        """A new 0700 directory for this run (under ``Settings.deploy_work_dir``)."""
        return make_private_dir(self.settings.deploy_work_dir, f"aicdn-{self.deployment.id}-")

    def build_nodes(self) -> list[Node]:
        """The target nodes as they are now (names may have changed since creation); targets
        deleted since are left out. Restricted to :attr:`hosts` when given. Raises
        :class:`JobError` when none is left."""
        nodes = []
        for node_id in self.deployment.target_ids:
            node = self.repos.nodes.get(node_id)
            if node is None:
                self.sink.emit("warning", self.playbook, data={"msg": f"node {node_id} is gone"})
                continue
            if self.hosts is None or node.name in self.hosts:
                nodes.append(node)
        if not nodes:
            raise JobError("no target node is left to run on")
        return nodes

    def build_configs(self, nodes: Sequence[Node]) -> Mapping[str, NodeConfig]:
        """The relay config each of ``nodes`` gets, rendered by the master (deploy and reload;
        see :mod:`master_api.jobs.configs`); :class:`JobError` when one cannot be rendered."""
        try:
            return render_targets(self.deployment, nodes, self.repos, self.settings)
        except RenderError as exc:
            raise JobError(str(exc)) from None

    def build_inventory(
        self,
        private_data_dir: Path,
        nodes: Sequence[Node],
        configs: Mapping[str, NodeConfig] | None = None,
    ) -> Path:
        """Write ``inventory/hosts.yml`` for ``nodes``, with each node's rendered config
        (``relay_config_rendered``) and its version (``relay_config_version``) from
        ``configs``; :class:`JobError` for a refused node variable."""
        master_vars = {
            node_id: {"relay_config_rendered": c.text, "relay_config_version": c.version}
            for node_id, c in (configs or {}).items()
        }
        try:
            document = inventory_document(nodes, self.settings.deploy_connections, master_vars)
        except InventoryError as exc:
            raise JobError(str(exc)) from None
        path = private_data_dir / "inventory" / "hosts.yml"
        return write_private(path, dump_unsafe_yaml(document))

    def extravars(self) -> dict[str, Any]:
        """The variables of this run (see the module docstring)."""
        d = self.deployment
        out: dict[str, Any] = {
            "aicdn_deployment_id": d.id,
            "aicdn_requested_by": d.created_by,
            "aicdn_check_mode": d.check_mode,
        }
        if d.release is not None:
            out["relay_rollback_to" if self.playbook == "rollback" else "relay_version"] = d.release
        if d.serial is not None:
            out["aicdn_serial"] = d.serial
            out[f"aicdn_{self.playbook}_serial"] = d.serial
        if d.max_fail_percentage is not None:
            out["aicdn_max_fail_percentage"] = d.max_fail_percentage
        return out

    def build_extravars(self, private_data_dir: Path) -> Path:
        """Write ``env/extravars`` (YAML, every string ``!unsafe``)."""
        text = dump_unsafe_yaml(self.extravars())
        return write_private(private_data_dir / "env" / "extravars", text)

    def build_env_settings(self, private_data_dir: Path) -> Path:
        """Write ``env/settings``: the idle and job timeouts (runner kills the playbook and the
        run ends ``timeout``), how often the cancel flag is checked, and no output files (the
        events are stored in MongoDB)."""
        settings = {
            "idle_timeout": int(self.settings.deploy_idle_timeout),
            "job_timeout": int(self.settings.deploy_job_timeout),
            "pexpect_timeout": PEXPECT_TIMEOUT,
            "suppress_output_file": True,
            "suppress_ansible_output": True,
        }
        return write_private(private_data_dir / "env" / "settings", dump_yaml(settings))

    def build_envvars(self, private_data_dir: Path) -> Path:
        """Write ``env/envvars``: the project's ansible.cfg, this interpreter's ``bin`` first on
        PATH (its ``ansible-playbook``), a controller temp dir inside the private data dir, and
        the master's own ``AICDN_*`` settings blanked (secrets stay out of the playbook)."""
        config = Path(self.settings.ansible_config)
        if not config.is_file():
            raise JobError(f"ansible config {config} does not exist (AICDN_ANSIBLE_CONFIG)")
        env = {name: "" for name in os.environ if name.startswith("AICDN_")}
        env.update(
            {
                "ANSIBLE_CONFIG": str(config.resolve()),
                "PATH": _search_path(),
                "ANSIBLE_LOCAL_TEMP": str(private_data_dir / "tmp"),
                "ANSIBLE_NOCOLOR": "1",
            }
        )
        return write_private(private_data_dir / "env" / "envvars", dump_yaml(env))

    def build_cmdline(self, private_data_dir: Path) -> Path | None:
        """Write ``env/cmdline`` (``--check --diff``) in check mode; None otherwise."""
        if not self.deployment.check_mode:
            return None
        return write_private(private_data_dir / "env" / "cmdline", "--check --diff")

    def build_runner_kwargs(
        self, private_data_dir: Path, inventory: Path, recorder: RunRecorder
    ) -> dict[str, Any]:
        """The arguments of ``ansible_runner.run``."""
        project = Path(self.settings.ansible_playbook_dir)
        if not (project / f"{self.playbook}.yml").is_file():
            raise JobError(f"playbook {project / (self.playbook + '.yml')} does not exist")
        if shutil.which("ansible-playbook", path=_search_path()) is None:
            raise JobError(
                "ansible-playbook is not installed beside the master (pip install '.[ansible]')"
            )
        return {
            "private_data_dir": str(private_data_dir),
            "project_dir": str(project.resolve()),
            "playbook": f"{self.playbook}.yml",
            "inventory": str(inventory),
            "ident": self.playbook,
            "quiet": True,
            "event_handler": recorder.on_event,
            "status_handler": recorder.on_status,
            "cancel_callback": self._cancel_callback,
            "finished_callback": self._finished_callback,
        }

    # -- the pipeline --------------------------------------------------------------------------

    def run(self) -> PhaseResult:
        """Build the private data dir, run the playbook, and return how it ended.

        Never raises: a run that cannot be prepared or crashes ends with status ``error`` and
        the reason in ``error`` (also logged and stored as an event). The private data dir is
        removed in every case.
        """
        private_data_dir: Path | None = None
        try:
            nodes = self.build_nodes()
            configs = self.build_configs(nodes)
            private_data_dir = self.build_private_data_dir()
            inventory = self.build_inventory(private_data_dir, nodes, configs)
            self.build_extravars(private_data_dir)
            self.build_env_settings(private_data_dir)
            self.build_envvars(private_data_dir)
            self.build_cmdline(private_data_dir)
            recorder = RunRecorder(self.sink, self.playbook, {n.name: n.id for n in nodes})
            runner = ansible_runner.run(
                **self.build_runner_kwargs(private_data_dir, inventory, recorder)
            )
            rc = runner.rc if isinstance(runner.rc, int) else None
            error = None
            if rc is None and str(runner.status) == "failed":
                # ansible-playbook never ran to an exit code: the runner's own output is the
                # only account of why, and the private data dir goes away below.
                error = _runner_output_tail(private_data_dir, self.playbook)
                log.warning(
                    "deployment %s: %s ended without an exit code: %s",
                    self.deployment.id, self.playbook, error,
                )  # fmt: skip
            return PhaseResult(
                playbook=self.playbook,
                status=str(runner.status),
                rc=rc,
                hosts=recorder.host_results(),
                touched=recorder.touched,
                config_versions={node_id: c.version for node_id, c in configs.items()},
                error=error,
            )
        except JobError as exc:
            return self._error(str(exc))
        except Exception as exc:  # job boundary (STYLE E6): log with context, record it
            log.exception("deployment %s: %s run crashed", self.deployment.id, self.playbook)
            return self._error(f"{type(exc).__name__}: {exc}")
        finally:
            if private_data_dir is not None:
                self._stop_leftovers(private_data_dir)
            self.sink.flush()
            if private_data_dir is not None:
                self._remove(private_data_dir)

    # -- helpers -------------------------------------------------------------------------------

    def _cancel_callback(self) -> bool:
        # Called by runner at least every PEXPECT_TIMEOUT: also the time-based event flush.
        self.sink.flush_if_due()
        return self.cancel()

    def _finished_callback(self, runner: Any) -> None:
        self.sink.flush()

    def _error(self, message: str) -> PhaseResult:
        self.sink.emit("job_error", self.playbook, data={"msg": message})
        return PhaseResult(playbook=self.playbook, status="error", rc=None, error=message)

    def _stop_leftovers(self, private_data_dir: Path) -> None:
        # A stopped run (cancel, timeout) leaves Ansible's detached workers behind: see
        # master_api.jobs.processes.
        try:
            count = stop_leftovers(str(private_data_dir))
        except OSError as exc:
            log.warning(
                "deployment %s: leftover processes not checked: %s", self.deployment.id, exc
            )
            return
        if count:
            self.sink.emit(
                "processes_stopped", self.playbook, data={"msg": f"stopped {count} process(es)"}
            )

    def _remove(self, private_data_dir: Path) -> None:
        try:
            shutil.rmtree(private_data_dir)
        except OSError as exc:
            log.warning("could not remove private data dir %s: %s", private_data_dir, exc)


class RollbackJob(DeploymentJob):
    """``rollback.yml`` on the hosts a failed deploy touched (its ``auto_rollback``): they go
    back to their previous release, so the deploy's ``release`` is not passed on."""

    def __init__(
        self,
        deployment: Deployment,
        repos: Repos,
        settings: Settings,
        sink: EventSink,
        cancel: CancelCheck,
        hosts: Sequence[str],
    ) -> None:
        super().__init__(deployment, repos, settings, sink, cancel, hosts)
        self.playbook = "rollback"

    def extravars(self) -> dict[str, Any]:
        out = super().extravars()
        out.pop("relay_rollback_to", None)
        out["aicdn_rollback_of"] = self.deployment.id
        return out
