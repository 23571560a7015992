"""How connection ids (``conn_id`` in the config) reach the core: an injected resolver.

The core (engine, commands, ``backupctl``) never imports Airflow nor :mod:`backups.orchestration`. It asks
:func:`resolver_for` for a :class:`~backups.storage.Resolver`:

* a config without any ``conn_id`` needs none (``None``): ``backupctl`` works with Airflow uninstalled;
* otherwise the resolver registered under the entry point group ``backups.resolvers`` (name ``airflow``) is
  loaded — ``pyproject.toml`` registers :class:`backups.orchestration.connections.AirflowResolver`, the Airflow
  layer's implementation (S3/SFTP hooks, ``Connection.get``). The dependency points from the Airflow layer to
  the core's protocol, not the other way round; a deployment may register another resolver (a vault) instead.

The DAG task adapters pass their resolver explicitly (``orchestration.connections.AirflowResolver``), so the
DAGs do not depend on the package being pip-installed.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config
    from .storage import Resolver

GROUP = "backups.resolvers"
DEFAULT = "airflow"


def registered_resolver(name: str = DEFAULT) -> Resolver:
    """The resolver registered as ``name`` in the ``backups.resolvers`` entry point group (instantiated)."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise ConfigError(f"the config names connection ids (conn_id) but no {name!r} connection resolver is installed",
                          hint="pip install the package with its Airflow extra (pip install '.[airflow]'), or use "
                               "local storages / a dsn instead of conn_id")
    try:
        factory = found[0].load()
        for module in getattr(factory, "requires", ()):  # what its methods import lazily must be importable now
            import_module(module)
    except ImportError as exc:
        raise ConfigError(f"the config names connection ids (conn_id), resolved through Airflow, which cannot be "
                          f"imported ({exc.name or exc})",
                          hint="install the Airflow stack (pip install '.[airflow]')") from None
    return factory()


def resolver_for(cfg: Config) -> Resolver | None:
    """The resolver the config's ``conn_id`` need (the registered one), or None when it names none."""
    return registered_resolver() if cfg.needs_airflow() else None
