"""Container managers: what runs a cluster's frontend and model replicas.

* ``base`` — the abstract ``ContainerManager`` that ``ClipperConnection`` delegates to, and
  the labels every manager marks its containers with (Clipper's names).
* ``local/`` — processes on this machine under a detached supervisor (no Docker).
* ``docker`` — containers on a Docker engine, from images built by ``schooner.admin.images``.
* ``kubernetes`` — Deployments and Services on a Kubernetes cluster, the objects rendered by
  ``kubernetes_manifests`` (what ``schooner render`` prints).

What they share lives beside them, not inside one of them: the replica contract
(``schooner.runtime.config.ContainerConfig.to_env``), packaging an artifact with its base
image and requirements (``schooner.admin.packaging``), and the wait for new replicas
(``schooner.admin.replicas``).
"""
