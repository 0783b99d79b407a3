"""The `flywheel` command.

    flywheel demo     [--quick]                                      the whole loop on the sim, with evidence
    flywheel run      --robot sim --episodes 5 --dataset.root=DIR   daemon + teleop, supervised
    flywheel rollout  --robot sim ...                                the rollout daemon alone
    flywheel teleop   --robot sim ...                                the teleop process alone
    flywheel record   --robot sim --episodes 3 ...                   operator-only demonstrations
    flywheel deploy   --version 3 | --rollback                       hot-swap weights into the daemon
    flywheel label    --dataset.root=IN --output.root=OUT            value function + advantage labels
    flywheel trainer  --dataset_root=DIR --every=10                  RECAP iterations in the background
    flywheel uplink   --trainer=tcp://HOST:5560 --dataset_root=DIR    ship an arm's episodes, fetch weights
    flywheel serve    --registry=DIR [--version=N]                   the policy server, for arms elsewhere
    flywheel view     --dataset.root=DIR [--rerun.serve=true]        replay a dataset in Rerun
    flywheel bench    [--quick]                                      speed of the hot paths

Flags are LeRobot's draccus style (--robot.type=sim --robot.task=push-v3 --dataset.root=DIR);
`--robot NAME` first loads configs/robots/NAME.yaml. `flywheel COMMAND --help` lists every option.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import draccus
from draccus.utils import ParsingError

from flywheel import presets

if TYPE_CHECKING:
    from flywheel.configs import CalibrateConfig, DeployConfig, RecordConfig, RunConfig
    from flywheel.rollout.config import RolloutConfig
    from teleop.process import TeleopProcessConfig


@dataclass
class Command:
    # "module:Class", imported only for the command that runs: most configs import LeRobot and so
    # torch (about 1 GB), which `flywheel uplink` on an arm's small computer does not need.
    config: str
    main: Callable
    summary: str

    @property
    def config_class(self) -> type:
        module, name = self.config.split(":")
        return getattr(importlib.import_module(module), name)


def _rollout(cfg: RolloutConfig) -> int:
    from flywheel.rollout.daemon import RolloutDaemon

    daemon = RolloutDaemon(cfg)
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    results = daemon.run()
    _print_summary(results)
    return 0


def _record(cfg: RecordConfig) -> int:
    return _rollout(cfg.rollout_config())


def _teleop(cfg: TeleopProcessConfig) -> int:
    import threading

    from teleop.process import run_teleop

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run_teleop(cfg, stop)
    return 0


def _run(cfg: RunConfig) -> int:
    from flywheel.supervisor import run

    return run(cfg)


def _deploy(cfg: DeployConfig) -> int:
    import zmq

    from flywheel.contracts.messages import DeployRequest, send_deploy
    from flywheel.contracts.registry import ModelRegistry

    if cfg.rollback:
        deploy = DeployRequest.back()
    else:
        registry = ModelRegistry(cfg.registry)
        version = cfg.version or registry.latest()
        if version is None:
            print(f"flywheel deploy: registry: no versions in {cfg.registry}", file=sys.stderr)
            return 2
        try:
            deploy = DeployRequest.of_version(registry, version)
        except FileNotFoundError as e:  # names the version and the registry
            print(f"flywheel deploy: {e} (versions there: {registry.versions() or 'none'})", file=sys.stderr)
            return 2
    try:
        reply = send_deploy(
            zmq.Context.instance(),
            cfg.wire.deploy,
            deploy,
            cfg.timeout_s,
            cfg.wire.security("operator"),
            connect_timeout_s=cfg.connect_timeout_s,
            server=cfg.wire.deploy_key,
        )
    except ConnectionError as e:
        print(f"flywheel deploy: wire.deploy: {e}; is the rollout daemon running?", file=sys.stderr)
        return 1
    except FileNotFoundError as e:  # a key named by --wire.keys_dir / --wire.deploy_key is missing
        print(f"flywheel deploy: {e}", file=sys.stderr)
        return 2
    except TimeoutError as e:
        print(f"flywheel deploy: {e} (is the rollout daemon running?)", file=sys.stderr)
        return 1
    print(" ".join(f"{k}={v}" for k, v in reply.fields().items()))
    return 0 if reply.accepted else 1


def _label(cfg) -> int:
    from flywheel.recap.labeling import label_main

    return label_main(cfg)


def _demo(cfg) -> int:
    from flywheel.demo.run import demo_main

    return demo_main(cfg)


def _calibrate(cfg: CalibrateConfig) -> int:
    from lerobot.robots.utils import make_robot_from_config
    from lerobot.teleoperators.utils import make_teleoperator_from_config

    devices = []
    if cfg.which in ("both", "robot") and cfg.robot is not None:
        devices.append(make_robot_from_config(cfg.robot))
    if cfg.which in ("both", "teleop") and cfg.teleop is not None:
        devices.append(make_teleoperator_from_config(cfg.teleop))
    if not devices:
        print("flywheel calibrate: robot/teleop: nothing to calibrate (use --robot so100)", file=sys.stderr)
        return 2
    for device in devices:  # LeRobot's own procedure, as lerobot-calibrate runs it
        print(f"calibrating {device} -> {device.calibration_fpath}")
        device.connect(calibrate=False)
        device.calibrate()
        device.disconnect()
    return 0


def _keys(cfg) -> int:
    from flywheel.contracts.security import make_keys

    made = make_keys(cfg.keys_dir, cfg.names())
    print(f"{len(made)} new key pair(s) in {cfg.keys_dir} (existing ones kept): {[p.stem for p in made]}")
    print(f"use them with --wire.keys_dir={cfg.keys_dir} on every process")
    return 0


def _view(cfg) -> int:
    from flywheel.viz.view import view_main

    return view_main(cfg)


def _bench(cfg) -> int:
    from benchmarks.run import bench_main

    return bench_main(cfg)


def _trainer(cfg) -> int:
    from trainer.loop import trainer_main

    return trainer_main(cfg)


def _uplink(cfg) -> int:
    from flywheel.uplink.agent import uplink_main

    return uplink_main(cfg)


def _serve(cfg) -> int:
    import zmq

    from flywheel.serve.server import build_server

    try:
        server = build_server(cfg)
        server.start()  # binds: a non-loopback address without keys, or a port in use, fails here
    except (FileNotFoundError, ValueError, zmq.ZMQError) as e:
        print(f"flywheel serve: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, lambda *_: server.request_stop())
    signal.signal(signal.SIGTERM, lambda *_: server.request_stop())
    server.wait()
    server.stop()
    logging.getLogger("flywheel.serve").info("policy server stopped: %s", server.stats())
    return 0


def _print_summary(results) -> None:
    print(
        f"{'episode':>7}  {'frames':>6}  {'success':>7}  {'data_type':>12}  {'interv.':>7}  {'saved':>5}  end"
    )
    for r in results:
        saved = "-" if r.saved is None else ("yes" if r.saved else "NO")
        print(
            f"{r.index:>7}  {r.frames:>6}  {r.success!s:>7}  {r.data_type or 'discarded':>12}  "
            f"{r.intervention_frames:>7}  {saved:>5}  {r.end_reason}"
        )
    if results:
        worst = max(results, key=lambda r: r.cadence.lateness_p99_ms).cadence
        print("worst episode " + worst.line())


COMMANDS: dict[str, Command] = {
    "run": Command("flywheel.configs:RunConfig", _run, "rollout daemon + teleop process, supervised"),
    "rollout": Command(
        "flywheel.rollout.config:RolloutConfig",
        _rollout,
        "the rollout daemon: policy on the robot, takeovers, recording",
    ),
    "teleop": Command(
        "teleop.process:TeleopProcessConfig",
        _teleop,
        "the teleop process: operator device and pedal over ZeroMQ",
    ),
    "record": Command(
        "flywheel.configs:RecordConfig", _record, "operator-only demonstrations (data_type=demo)"
    ),
    "deploy": Command(
        "flywheel.configs:DeployConfig",
        _deploy,
        "swap a registry version (or --rollback) into the running daemon",
    ),
    "demo": Command(
        "flywheel.demo.config:DemoConfig",
        _demo,
        "the whole flywheel on the sim, against baselines, with a report",
    ),
    "label": Command(
        "flywheel.recap.labeling:LabelConfig",
        _label,
        "train a value function, label advantages (new dataset)",
    ),
    "calibrate": Command(
        "flywheel.configs:CalibrateConfig", _calibrate, "LeRobot's calibration of the follower and leader"
    ),
    "keys": Command(
        "flywheel.configs:KeysConfig", _keys, "make CurveZMQ keys (needed to bind beyond loopback)"
    ),
    "view": Command(
        "flywheel.viz.config:ViewConfig", _view, "watch or replay in Rerun (viewer, browser, or .rrd)"
    ),
    "bench": Command("benchmarks.run:BenchConfig", _bench, "measure the hot paths (JSON + table)"),
    "trainer": Command(
        "trainer.loop:TrainerConfig", _trainer, "the background trainer: RECAP iterations, gate, deploy"
    ),
    "uplink": Command(
        "flywheel.uplink.config:UplinkConfig",
        _uplink,
        "beside an arm's daemon: ship its episodes to the trainer, bring its weights home",
    ),
    "serve": Command(
        "flywheel.serve.config:ServeConfig",
        _serve,
        "the policy server: arms' observations in, action chunks out (batched), hot-swappable",
    ),
}


def usage() -> str:
    lines = [__doc__.strip(), "", "commands:"]
    lines += [f"  {name:<9} {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += ["", f"robot presets (configs/robots): {', '.join(presets.available())}"]
    return "\n".join(lines)


def _root_cause(error: BaseException) -> BaseException:
    """draccus wraps a config's own ValueError (which names the field) in ParsingErrors."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _bare_flags_true(args: list[str]) -> list[str]:
    """`--rollback` alone means `--rollback=true` (draccus wants a value for every flag)."""
    out = []
    for i, arg in enumerate(args):
        bare = arg.startswith("--") and "=" not in arg and arg not in ("--help", "-h")
        if bare and (i + 1 == len(args) or args[i + 1].startswith("--")):
            arg += "=true"
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"flywheel: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    try:
        args = presets.expand(_bare_flags_true(rest), command.config_class)
        if "--help" in args or "-h" in args:
            # draccus's help chokes on some preset values (e.g. `--robot.id=x`): the preset's types
            # are enough to list the chosen robot's and teleoperator's options with their defaults.
            args = [a for a in args if a in ("--help", "-h") or ".type=" in a]
        cfg = draccus.parse(command.config_class, args=args, prog=f"flywheel {name}")
    except (ValueError, ParsingError) as e:
        print(f"flywheel {name}: {_root_cause(e)}", file=sys.stderr)
        return 2
    # Only now: draccus sets the root logger's level while it parses.
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    return command.main(cfg) or 0


if __name__ == "__main__":
    sys.exit(main())
