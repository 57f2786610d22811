"""Clipper's package path ``clipper_admin.docker``; the manager is ``schooner.admin.managers.docker``."""
