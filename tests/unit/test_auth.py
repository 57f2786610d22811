"""The pure parts of container authentication and the credentials: the wire messages of the
challenge (expected bytes written by hand from ``wire``'s docstring), the replica contract's
secret variables, and the secret files."""

from __future__ import annotations

import hashlib
import hmac
import stat
import struct

import pytest

from schooner.runtime import wire
from schooner.runtime.config import ContainerConfig, create_secret_file, read_secret_file
from schooner.runtime.errors import ConfigError, WireError

BASE = {"CLIPPER_MODEL_NAME": "m", "CLIPPER_MODEL_VERSION": "1"}


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def test_challenge_and_answer_golden_bytes():
    nonce = bytes(range(32))
    assert wire.encode_auth_challenge(nonce) == [b"", u32(3), u32(2), u32(2), nonce]
    reply = wire.decode_from_frontend([b"", u32(3), u32(2), u32(2), nonce])
    assert reply == wire.HeartbeatReply(wire.HeartbeatType.AUTH_CHALLENGE, nonce)
    mac = b"\x07" * 32
    assert wire.encode_auth_response(mac) == [b"", u32(4), mac]
    assert wire.decode_from_container([b"", u32(4), mac]) == wire.AuthResponse(mac)


def test_the_mac_covers_the_nonce_and_the_registration():
    info = wire.NewContainer("sum", "1", wire.InputType.DOUBLES, wire.CAP_PACKED | wire.CAP_AUTH)
    nonce = b"n" * 32
    parts = [b"schooner-rpc-auth-v1\0", nonce, b"sum", b"1", b"3", u32(3) + u32(3)]
    expected = hmac.new(b"s3cret", b"".join(u32(len(p)) + p for p in parts),
                        hashlib.sha256).digest()  # fmt: skip
    assert wire.auth_mac(b"s3cret", nonce, info) == expected
    others = [
        wire.auth_mac(b"other", nonce, info),
        wire.auth_mac(b"s3cret", b"m" * 32, info),
        wire.auth_mac(b"s3cret", nonce, wire.NewContainer("sum", "2", info.input_type, 3)),
        wire.auth_mac(b"s3cret", nonce, wire.NewContainer("sum", "1", wire.InputType.INTS, 3)),
    ]
    assert expected not in others and len(set(others)) == len(others)


@pytest.mark.parametrize("frames", [
    [b"", u32(3), u32(2), u32(2)],  # a challenge without its nonce
    [b"", u32(3), u32(2), u32(2), b"short"],
    [b"", u32(3), u32(2), u32(2), b"x" * 65],
])  # fmt: skip
def test_a_malformed_challenge_is_a_wire_error(frames):
    with pytest.raises(WireError):
        wire.decode_from_frontend(frames)


@pytest.mark.parametrize("frames", [
    [b"", u32(4)], [b"", u32(4), b"x" * 31], [b"", u32(4), b"x" * 32, b""],
])  # fmt: skip
def test_a_malformed_answer_is_a_wire_error(frames):
    with pytest.raises(WireError):
        wire.decode_from_container(frames)


def test_names_are_bounded_and_errors_do_not_echo_them():
    for i in (2, 3):
        frames = [b"", u32(0), b"m", b"1", b"3", u32(3)]
        frames[i] = b"q" * 256
        with pytest.raises(WireError, match="of 256 bytes") as caught:
            wire.decode_from_container(frames)
        assert "qqqq" not in str(caught.value)
    limit = [b"", u32(0), b"m" * 255, b"v" * 255, b"3", u32(3)]
    assert wire.decode_from_container(limit).name == "m" * 255
    with pytest.raises(WireError) as caught:
        wire.decode_from_container([b"", u32(0), b"\xff" * 200, b"1", b"3", u32(3)])
    assert len(str(caught.value)) < 200


def test_the_stream_reader_refuses_over_its_limits_from_the_prefix():
    reader = wire.StreamReader(wire.Limits(max_frames=8, max_bytes=2048))
    with pytest.raises(WireError, match="9 frames"):
        reader.feed(struct.pack("<I", 9))
    reader = wire.StreamReader(wire.Limits(max_frames=8, max_bytes=2048))
    with pytest.raises(WireError, match="at most 2048"):
        reader.feed(struct.pack("<3I", 2, 1000, 1041))  # 12 + 2041 bytes declared
    with pytest.raises(ValueError):
        wire.Limits(max_frames=1)


def test_excerpt_keeps_log_lines_short():
    assert wire.excerpt("abc") == "'abc'"
    long = wire.excerpt(b"z" * 10_000_000)
    assert len(long) < 120 and "10000000 bytes" in long


def test_the_secret_never_shows_in_repr_or_errors(tmp_path):
    config = ContainerConfig.from_env({**BASE, "SCHOONER_RPC_SECRET": "hunter2"})
    assert config.secret() == b"hunter2" and "hunter2" not in repr(config)
    with pytest.raises(ConfigError) as caught:
        ContainerConfig.from_env({**BASE, "SCHOONER_RPC_SECRET": "hunter2" * 1000})
    assert "hunter2" not in str(caught.value)
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    config = ContainerConfig.from_env({**BASE, "SCHOONER_RPC_SECRET_FILE": str(secret)})
    assert config.secret() == b"from-a-file"
    assert config.to_env()["SCHOONER_RPC_SECRET_FILE"] == str(secret)
    assert "SCHOONER_RPC_SECRET" not in config.to_env()
    with pytest.raises(ConfigError, match="cannot read"):
        ContainerConfig.from_env({**BASE, "SCHOONER_RPC_SECRET_FILE": str(tmp_path / "no")})


def test_metrics_listen_on_loopback_unless_asked():
    assert ContainerConfig.from_env(BASE).metrics_host == "127.0.0.1"
    with pytest.raises(ConfigError, match="at most 255 bytes"):
        ContainerConfig.from_env({**BASE, "CLIPPER_MODEL_NAME": "n" * 256})


def test_a_secret_file_is_made_once_and_owner_only(tmp_path):
    path = tmp_path / "admin.token"
    first = create_secret_file(path)
    assert len(first) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert create_secret_file(path) == first == read_secret_file(path)
    (tmp_path / "blank").write_text("\n")
    with pytest.raises(ValueError, match="must hold 1 to 4096 bytes"):
        read_secret_file(tmp_path / "blank")


def test_the_frontend_takes_secrets_from_files_or_the_environment_never_argv(tmp_path):
    import argparse

    from schooner.frontend import credentials

    def settings(argv, env):
        p = argparse.ArgumentParser()
        p.add_argument("--state-db", default=str(tmp_path / "state.db"))
        credentials.add_arguments(p)
        problems: list[str] = []
        return credentials.from_arguments(p.parse_args(argv), problems, env), problems

    none, problems = settings([], {})
    assert none["rpc_secret"] is None and problems == []
    assert none["admin_token_file"] == str(tmp_path / "admin.token")
    assert not (tmp_path / "admin.token").exists()  # made when the frontend starts
    from_env, _ = settings([], {"SCHOONER_RPC_SECRET": "s1", "SCHOONER_ADMIN_TOKEN": "t1"})
    assert (from_env["rpc_secret"], from_env["admin_token"]) == (b"s1", b"t1")
    secret = tmp_path / "rpc.secret"
    secret.write_text("s2\n")
    from_file, _ = settings(["--rpc-secret-file", str(secret)], {"SCHOONER_RPC_SECRET": "s1"})
    assert from_file["rpc_secret"] == b"s2"
    _, problems = settings(["--rpc-secret-file", str(tmp_path / "missing"), "--rpc-max-frames",
                            "2"], {})  # fmt: skip
    assert len(problems) == 2 and all("s2" not in p for p in problems)
    token = credentials.admin_token(None, str(tmp_path / "admin.token"))
    assert token == (tmp_path / "admin.token").read_bytes().strip()
    assert stat.S_IMODE((tmp_path / "admin.token").stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="admin token file"):
        credentials.admin_token(None, str(tmp_path / "no-such-dir" / "admin.token"))
