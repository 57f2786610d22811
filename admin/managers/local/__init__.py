"""The local container manager and the supervisor it runs (processes, no Docker).

``manager`` is what users construct (``LocalContainerManager``); ``supervisor`` is the
detached process that keeps the frontend and replicas running, driven over ``control``;
``children`` and ``restart`` are one supervised process and its restart policy; ``layout``
is the cluster's directory; ``environments`` the Python environments replicas run in.
"""

from schooner.admin.managers.local.manager import DEFAULT_CLUSTER, LocalContainerManager

__all__ = ["LocalContainerManager", "DEFAULT_CLUSTER"]
