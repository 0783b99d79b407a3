"""`flywheel deploy` fails fast and in one line: an unknown version, or no daemon listening."""

from __future__ import annotations

import zmq

from flywheel.cli import main
from flywheel.contracts.registry import ModelRegistry
from flywheel.contracts.security import Security, make_keys
from flywheel.rollout.hotswap import HotSwap
from tests.netutil import destroy_keyed_context, free_address


def _registry_with_one_version(tmp_path) -> ModelRegistry:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    registry = ModelRegistry(tmp_path / "models")
    registry.publish(model)
    return registry


def test_unknown_version_is_one_line_naming_it_and_the_registry(tmp_path, capsys):
    registry = _registry_with_one_version(tmp_path)
    assert main(["deploy", "--version=99", f"--registry={registry.root}"]) == 2
    err = capsys.readouterr().err
    assert "v0099" in err and str(registry.root) in err and "[1]" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_absent_daemon_is_reported_by_the_connect_check(tmp_path, capsys):
    """Not the 30 s reply timeout: the message is the connect check's."""
    registry = _registry_with_one_version(tmp_path)
    address = free_address()  # nothing listens there
    args = ["deploy", f"--registry={registry.root}", f"--wire.deploy={address}", "--timeout_s=30"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "wire.deploy" in err and address in err and "nothing accepted a connection within 1 s" in err


def test_a_listening_daemon_passes_the_connect_check(capsys):
    ctx = zmq.Context()
    address = free_address()
    server = HotSwap(ctx, address, load=None, observe=lambda: (None, ""), action_dim=4, current=None).start()
    try:
        assert main(["deploy", "--rollback", f"--wire.deploy={address}", "--timeout_s=10"]) == 1
        assert "status=rejected" in capsys.readouterr().out  # the daemon's own answer came back
    finally:
        server.stop()
        ctx.destroy(linger=0)


def test_deploy_key_names_the_key_of_a_policy_server(tmp_path, capsys):
    """With keys, `flywheel deploy` reaches a deploy endpoint that holds the `policy_server` key
    (`flywheel serve`) when told so, and says which key is missing otherwise."""
    keys = tmp_path / "keys"
    make_keys(keys, ("operator", "policy_server"))
    ctx = zmq.Context()
    address = free_address()
    server = HotSwap(
        ctx,
        address,
        load=None,
        observe=lambda: (None, ""),
        action_dim=4,
        current=None,
        security=Security(keys, "policy_server"),
    ).start()
    args = ["deploy", "--rollback", f"--wire.deploy={address}", f"--wire.keys_dir={keys}", "--timeout_s=10"]
    try:
        assert main([*args, "--wire.deploy_key=policy_server"]) == 1
        assert "status=rejected" in capsys.readouterr().out  # the server's own answer came back
        assert main(args) == 2  # the default key, `daemon`'s, was never made here
        err = capsys.readouterr().err
        assert "daemon.key" in err and "Traceback" not in err
    finally:
        server.stop()
        destroy_keyed_context(ctx)
