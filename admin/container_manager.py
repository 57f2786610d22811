"""Clipper's module path ``clipper_admin.container_manager``, with the ``schooner`` prefix.

The definitions live in ``schooner.admin.managers.base``.
"""

from schooner.admin.managers.base import *  # noqa: F403
from schooner.admin.managers.base import __all__  # noqa: F401
