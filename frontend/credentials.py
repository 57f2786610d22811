"""The frontend's security settings: its command-line flags and where its secrets come from.

==================================  ==================================================  ========
flag / variable                     meaning                                             default
==================================  ==================================================  ========
``--rpc-secret-file PATH``          the cluster secret containers must prove they       (none)
                                    hold when they register (``wire``'s authenticated
                                    registration); else ``SCHOONER_RPC_SECRET_FILE``,
                                    else the value of ``SCHOONER_RPC_SECRET``. Without
                                    any, every container is registered (a warning says
                                    so once, at start-up).
``--allow-unauthenticated-          with a secret, still register containers that       off
containers``                        cannot authenticate (Clipper's, plain RPC v3):
                                    anyone who reaches the RPC port can then serve (and
                                    read) a model's queries.
``--admin-token-file PATH``         the management API's token; created (random,        admin.token
                                    owner-only) if missing. ``SCHOONER_ADMIN_TOKEN``    beside
                                    (a value) wins over the file.                       --state-db
``--allow-anonymous-admin``         Clipper compatibility: callers without the token    off
                                    (Clipper's admin client) may use the whole
                                    management API. Anyone who can reach the management
                                    port can then delete apps and repoint models.
``--rpc-max-message-bytes N``       bytes one container message may hold                256 MiB
``--rpc-max-frames N``              frames one container message may hold               65536
==================================  ==================================================  ========

Secrets are never taken from the command line (a process's argv is visible to every user of
the machine), and never logged.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from schooner.runtime.config import (
    ADMIN_TOKEN_ENV,
    ADMIN_TOKEN_FILE,
    RPC_SECRET_ENV,
    RPC_SECRET_FILE_ENV,
    create_secret_file,
    read_secret_file,
)
from schooner.runtime.errors import ConfigError
from schooner.runtime.wire import DEFAULT_MAX_FRAMES, DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["add_arguments", "from_arguments", "admin_token"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security (README: Security)")
    g.add_argument("--rpc-secret-file", default=None,
                   help=f"file holding the cluster secret containers must prove they hold "
                   f"(else ${RPC_SECRET_FILE_ENV} or ${RPC_SECRET_ENV}; none: any container "
                   "is registered)")  # fmt: skip
    g.add_argument("--allow-unauthenticated-containers", action="store_true",
                   help="with a secret, still register containers that cannot authenticate "
                   "(Clipper's): whoever reaches the RPC port can then serve a model")  # fmt: skip
    g.add_argument("--admin-token-file", default=None,
                   help=f"the management API's token, created if missing (default: "
                   f"{ADMIN_TOKEN_FILE} beside --state-db; ${ADMIN_TOKEN_ENV} wins)")  # fmt: skip
    g.add_argument("--allow-anonymous-admin", action="store_true",
                   help="let callers without the token (Clipper's admin client) use the "
                   "management API: whoever reaches its port can change every app")  # fmt: skip
    g.add_argument("--rpc-max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                   help="bytes one message from a container may hold")  # fmt: skip
    g.add_argument("--rpc-max-frames", type=int, default=DEFAULT_MAX_FRAMES,
                   help="frames one message from a container may hold")  # fmt: skip


def from_arguments(
    a: argparse.Namespace, problems: list[str], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The FrontendConfig fields these flags set; what is wrong is appended to ``problems``
    (naming files and variables, never a secret)."""
    env = os.environ if env is None else env
    if a.rpc_max_message_bytes < 1024:
        problems.append("--rpc-max-message-bytes must be at least 1024")
    if a.rpc_max_frames < 8:
        problems.append("--rpc-max-frames must be at least 8")
    secret: bytes | None = None
    secret_file = a.rpc_secret_file or env.get(RPC_SECRET_FILE_ENV)
    try:
        if secret_file:
            secret = read_secret_file(Path(secret_file))
        elif env.get(RPC_SECRET_ENV, "").strip():
            secret = env[RPC_SECRET_ENV].strip().encode()
    except ValueError as exc:
        problems.append(f"the RPC secret: {exc}")
    token: bytes | None = None
    token_file: str | None = None
    if env.get(ADMIN_TOKEN_ENV, "").strip():
        token = env[ADMIN_TOKEN_ENV].strip().encode()
    else:  # read (or made) when the frontend starts: parsing has no side effect
        token_file = os.fspath(a.admin_token_file or Path(a.state_db).parent / ADMIN_TOKEN_FILE)
    return {
        "rpc_secret": secret,
        "allow_unauthenticated_containers": a.allow_unauthenticated_containers,
        "admin_token": token,
        "admin_token_file": token_file,
        "allow_anonymous_admin": a.allow_anonymous_admin,
        "rpc_max_message_bytes": a.rpc_max_message_bytes,
        "rpc_max_frames": a.rpc_max_frames,
    }


def admin_token(token: bytes | None, token_file: str | None) -> bytes | None:
    """The management API's token: ``token``, else the one in ``token_file`` (made there,
    random and owner-only, if the file does not exist). ConfigError names the file only."""
    if token is not None or token_file is None:
        return token
    try:
        return create_secret_file(Path(token_file))
    except (OSError, ValueError) as exc:
        raise ConfigError([f"the admin token file {token_file}: {exc}"]) from None
