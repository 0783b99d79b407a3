"""The `remote_policy` bench case: what running the policy on a policy server (`flywheel serve`) adds.

Tiny preset (`tiny_sim_checkpoint`, chunk 50, 10 denoising steps), CPU, one torch thread for the
server and for in-process inference alike.

1. Inference latency: N requests of one fixed sim-shaped observation (39 state values), after a few
   warm-up requests, each timed around `predict_chunk` (wall time, encoding included):
   `latency_inprocess_*` (LeRobotChunkPolicy in this process), `latency_loopback_*`
   (RemoteChunkPolicy here, `flywheel serve` in a subprocess on 127.0.0.1), `latency_netns<ms>_*`
   (the server in namespace "gpu" with CurveZMQ keys, the client in namespace "arm", joined by a veth
   pair with `ms` added each way by benchmarks/netns.py: a round trip gains 2 * ms).
   `added_p50_ms_<setting>`: that setting's p50 minus the in-process p50; `server_p50_ms_<setting>`:
   the server's own inference time (its reply says it).
2. Tick lateness at 30 Hz: the rollout daemon on the sim arm (push-v3, nothing recorded, the pedal
   never pressed: the policy acts every tick), refill_at 25, with the policy in-process (baseline),
   on the loopback server and on the namespace server with 20 and 100 ms added (the daemon then runs
   in namespace "arm", a script of its own); each also with real-time chunking (`_rtc`). Lateness
   is the daemon's own cadence measure (RateKeeper: how late each tick started against its
   schedule), all episodes together; `held_ticks`: ticks with no policy action ready (the arm held;
   a tick waits at most half a period for a chunk, so held ticks raise `work_p99_ms`, not lateness),
   `held_ticks_first_episode` those of the first episode: each episode starts with an empty queue,
   so a remote policy holds for about one round trip (the daemon opens the connection when it
   starts, so the TCP and CurveZMQ handshakes over the delayed link are done by the first request;
   before it did, they held the first episode 37 ticks at 100 ms); `chunk_*`: wall time of each
   chunk request in the policy worker, `chunk_first_ms` the first one; `rtt_*` / `server_p50_ms`:
   the remote policy's own statistics of the answered requests (`RemoteChunkPolicy.rtt_stats`,
   from sending on); `delay_ticks_*` (RTC): the inference delay the runner sent with each prefix
   (from the p95 of its last 20 chunks' latencies).

Where network namespaces cannot be made, `netns` says why and the namespace figures are left out.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.fixtures import tiny_sim_checkpoint
from benchmarks.netns import stop_process
from flywheel.contracts.dataset import DatasetConfig, dataset_features
from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.security import Security, make_keys
from flywheel.rollout.cadence import RateKeeper
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.daemon import RolloutDaemon
from flywheel.rollout.policy_source import LeRobotChunkPolicy, PolicySourceConfig
from flywheel.rollout.remote_policy import RemoteChunkPolicy
from flywheel.rollout.teleop_link import LocalTeleop
from robots.sim import ACTION_NAMES, STATE_NAMES, SimArmConfig
from teleop.pedals import ConstantPedal, ConstantPedalConfig
from teleop.sim_operator import SimOperator, SimOperatorConfig

FPS = 30
CHUNK = 50
REFILL_AT = 25
WARMUP = 5
DELAYS_MS = (0, 20, 100)  # added each way on the namespaces' link (latency); the daemon runs at 20 and 100
DAEMON_DELAYS_MS = (20, 100)
TASK = "push the puck to the goal"
REPO = Path(__file__).resolve().parents[1]
RESULT_MARK = "REMOTE_BENCH_RESULT "

# The client in namespace "arm": latency requests and daemon runs against the server in "gpu".
_ARM_SCRIPT = """\
import json, sys
sys.path.insert(0, sys.argv[1])
from benchmarks.remote import RESULT_MARK, arm_main
print(RESULT_MARK + json.dumps(arm_main(json.loads(sys.argv[2]))), flush=True)
"""


def remote_policy(work: Path, quick: bool) -> dict[str, Any]:
    """Added latency of remote vs in-process inference (loopback; across namespaces with 0, 20, 100 ms
    added each way), and tick lateness at 30 Hz with a remote policy (module doc)."""
    load = os.getloadavg()
    n = 40 if quick else 200
    episodes, frames = (1, 150) if quick else (3, 150)
    out: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_1m_start": load[0],
        "load_5m_start": load[1],
        "load_15m_start": load[2],
        "preset": "tiny",
        "chunk_size": CHUNK,
        "refill_at": REFILL_AT,
        "torch_threads": 1,
        "requests": n,
        "daemon_episodes": episodes,
        "daemon_frames_per_episode": frames,
    }
    checkpoint = tiny_sim_checkpoint(work / "policy", chunk_size=CHUNK)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = LeRobotChunkPolicy(checkpoint, _features(), list(ACTION_NAMES), version=1, device="cpu")
        out |= _summary(_time_requests(local.predict_chunk, n), "latency_inprocess")
        del local

        address, deploy = free_loopback(), free_loopback()
        server = ServeProcess(serve_argv(checkpoint, address, deploy), work / "serve-loopback.log")
        try:
            server.wait_ready()
            remote = RemoteChunkPolicy(address, list(ACTION_NAMES), fps=0, arm="bench-latency")
            try:
                out |= _summary(_time_requests(remote.predict_chunk, n), "latency_loopback")
                out["server_p50_ms_loopback"] = remote.rtt_stats()["server_p50_ms"]
            finally:
                remote.close()
            for rtc in (False, True):
                label = "daemon_loopback" + ("_rtc" if rtc else "")
                out |= _prefixed(_run_daemon(work / label, episodes, frames, rtc, server=address), label)
        finally:
            server.stop()

        for rtc in (False, True):
            label = "daemon_inprocess" + ("_rtc" if rtc else "")
            out |= _prefixed(_run_daemon(work / label, episodes, frames, rtc, path=checkpoint), label)
            torch.set_num_threads(1)

        out |= _across_namespaces(work, checkpoint, n, episodes, frames)
    finally:
        torch.set_num_threads(threads)
    base = out["latency_inprocess_p50_ms"]
    for setting in ("loopback", *(f"netns{ms}" for ms in DELAYS_MS)):
        if f"latency_{setting}_p50_ms" in out:
            out[f"added_p50_ms_{setting}"] = out[f"latency_{setting}_p50_ms"] - base
    out["load_1m_end"], out["load_5m_end"], out["load_15m_end"] = os.getloadavg()
    return out


# --- inference latency -------------------------------------------------------------------------------


def _features() -> dict:
    return dataset_features({n: float for n in STATE_NAMES}, {n: float for n in ACTION_NAMES}, False)


def _observation() -> dict[str, float]:
    values = np.random.default_rng(0).uniform(-1, 1, len(STATE_NAMES))
    return dict(zip(STATE_NAMES, values.tolist(), strict=True))


def _time_requests(predict, n: int, warmup: int = WARMUP) -> list[float]:
    """Wall time (ms) of each of `n` calls of predict(observation, task), after `warmup` untimed ones."""
    observation = _observation()
    times = []
    for i in range(warmup + n):
        start = time.perf_counter()
        chunk = predict(observation, TASK)
        elapsed = (time.perf_counter() - start) * 1000
        if chunk.shape != (CHUNK, len(ACTION_NAMES)):
            raise RuntimeError(f"benchmark: a chunk of shape {chunk.shape}")
        if i >= warmup:
            times.append(elapsed)
    return times


def _summary(values_ms: list[float], prefix: str) -> dict[str, float]:
    if not values_ms:
        return {f"{prefix}_n": 0}
    v = np.asarray(values_ms, dtype=float)
    return {
        f"{prefix}_p50_ms": float(np.percentile(v, 50)),
        f"{prefix}_p95_ms": float(np.percentile(v, 95)),
        f"{prefix}_p99_ms": float(np.percentile(v, 99)),
        f"{prefix}_max_ms": float(v.max()),
    }


def _prefixed(figures: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in figures.items()}


# --- the daemon at 30 Hz ----------------------------------------------------------------------------


def _run_daemon(
    root: Path,
    episodes: int,
    frames: int,
    rtc: bool,
    path: Path | None = None,
    server: str | None = None,
    keys: Path | None = None,
) -> dict[str, Any]:
    """The rollout daemon on the sim at 30 Hz, the policy acting every tick (the pedal never pressed),
    nothing recorded; its figures (module doc)."""
    cfg = RolloutConfig(
        robot=SimArmConfig(task="push-v3"),
        policy=PolicySourceConfig(path=path, server=server, refill_at=REFILL_AT, rtc=rtc),
        dataset=DatasetConfig(root=root, repo_id="bench/remote", record=False),
        wire=WireConfig.in_process("bench-remote"),
        episodes=episodes,
        fps=FPS,
        episode_time_s=frames / FPS,
        report_cadence=False,
    )
    policy = None
    if server is not None and keys is not None:
        # What make_chunk_policy builds for --policy.server with --wire.keys_dir (the daemon's own
        # sockets stay in-process here, without keys).
        policy = RemoteChunkPolicy(server, list(ACTION_NAMES), fps=FPS, security=Security(keys, "daemon"))
    pedal = ConstantPedal(ConstantPedalConfig(pressed=False))
    daemon = RolloutDaemon(cfg, policy=policy, link=LocalTeleop(SimOperator(SimOperatorConfig()), pedal))

    chunk_ms: list[float] = []
    delays: list[int] = []
    predict = daemon.policy.predict_chunk

    def timed_predict(observation, task, prefix=None):
        start = time.perf_counter()
        try:
            if prefix is None:
                return predict(observation, task)
            delays.append(int(prefix.delay))
            return predict(observation, task, prefix)
        finally:
            chunk_ms.append((time.perf_counter() - start) * 1000)

    daemon.policy.predict_chunk = timed_predict  # the instance's: the runner's worker calls this one

    # The daemon's cadence restarts every episode: keep each episode's before the next one clears it.
    lateness: list[float] = []
    work: list[float] = []
    run_episode = daemon.run_episode

    def episode(index: int):
        result = run_episode(index)
        lateness.extend(daemon.rate.lateness_ms)
        work.extend(daemon.rate.work_ms)
        return result

    daemon.run_episode = episode
    start = time.perf_counter()
    results = daemon.run()
    wall = time.perf_counter() - start
    merged = RateKeeper(FPS)
    merged.lateness_ms, merged.work_ms = lateness, work
    cadence = merged.report()
    out: dict[str, Any] = {
        "ticks": cadence.ticks,
        "lateness_p50_ms": cadence.lateness_p50_ms,
        "lateness_p99_ms": cadence.lateness_p99_ms,
        "lateness_max_ms": cadence.lateness_max_ms,
        "work_p99_ms": cadence.work_p99_ms,
        "over_budget": cadence.over_budget,
        "held_ticks": daemon.runner.misses,
        "held_ticks_first_episode": results[0].policy_misses if results else 0,
        "chunks": daemon.runner.chunks_started,
        "errors": daemon.runner.errors,
        "wall_s": wall,
        "chunk_first_ms": chunk_ms[0] if chunk_ms else None,
        **_summary(chunk_ms, "chunk"),
    }
    if rtc:
        out["delay_ticks_mean"] = float(np.mean(delays)) if delays else 0.0
        out["delay_ticks_max"] = max(delays, default=0)
        out["prefixed_requests"] = len(delays)
    if server is not None:
        remote: RemoteChunkPolicy = daemon.policy  # type: ignore[assignment]
        stats = remote.rtt_stats()
        out |= {
            "rtt_n": stats["n"],
            "rtt_p50_ms": stats.get("p50_ms"),
            "rtt_p95_ms": stats.get("p95_ms"),
            "server_p50_ms": stats.get("server_p50_ms"),
            "failures": remote.failures,
            "outages": remote.outages,
            "discarded": remote.discarded,
        }
        remote.close()
    return out


# --- across network namespaces -------------------------------------------------------------------------


def arm_main(args: dict[str, Any]) -> dict[str, Any]:
    """Inside namespace "arm": `latency` requests to the server, then the daemon runs asked for; the
    figures are named after `setting` (netns<ms>)."""
    torch.set_num_threads(1)
    keys, setting = Path(args["keys"]), args["setting"]
    out: dict[str, Any] = {}
    if args.get("latency"):
        remote = RemoteChunkPolicy(
            args["address"], list(ACTION_NAMES), fps=0, arm="bench-latency", security=Security(keys, "daemon")
        )
        try:
            out |= _summary(_time_requests(remote.predict_chunk, args["latency"]), f"latency_{setting}")
            out[f"server_p50_ms_{setting}"] = remote.rtt_stats()["server_p50_ms"]
        finally:
            remote.close()
    for rtc in args.get("daemon", []):
        label = f"daemon_{setting}" + ("_rtc" if rtc else "")
        root = Path(args["root"]) / label
        figures = _run_daemon(root, args["episodes"], args["frames"], rtc, server=args["address"], keys=keys)
        out |= _prefixed(figures, label)
    return out


def _across_namespaces(work: Path, checkpoint: Path, n: int, episodes: int, frames: int) -> dict[str, Any]:
    from benchmarks.netns import DelayUnavailable, NetnsError, NetnsUnavailable, Topology

    try:
        net = Topology(["arm"], hub="gpu")
    except (NetnsUnavailable, NetnsError) as e:
        return {"netns": f"unavailable: {e}"}
    out: dict[str, Any] = {"netns": "veth, CurveZMQ"}
    server = None
    try:
        keys = work / "keys"
        server = ServeProcess.in_namespace(net, checkpoint, keys, work / "serve-netns.log")
        address = server.address
        try:
            server.wait_ready()
        except RuntimeError as e:
            return {"netns": f"server failed: {str(e)[-1000:]}"}
        script = work / "arm_client.py"
        script.write_text(_ARM_SCRIPT)
        for ms in DELAYS_MS:
            try:
                mechanism = net.delay("arm", ms)
            except DelayUnavailable as e:
                out[f"netns{ms}"] = f"delay unavailable: {e}"
                continue
            if ms:
                out["netns_delay_mechanism"] = mechanism
            args = {
                "setting": f"netns{ms}",
                "address": address,
                "keys": str(keys),
                "latency": n,
                "daemon": [False, True] if ms in DAEMON_DELAYS_MS else [],
                "episodes": episodes,
                "frames": frames,
                "root": str(work / "arm"),
            }
            runs = len(args["daemon"])
            budget = 120 + n * (0.5 + 2 * ms / 1000) + runs * (60 + 2 * episodes * frames / FPS)
            try:
                out |= run_in_host(
                    net, "arm", [sys.executable, str(script), str(REPO), json.dumps(args)], budget
                )
            except RuntimeError as e:  # the other settings' figures still count; this one says why not
                out[f"netns{ms}_error"] = str(e)[-1000:]
    finally:
        if server is not None:
            server.stop()
        net.close()
    return out


def run_in_host(net, host: str, argv: list[str], timeout_s: float) -> dict[str, Any]:
    """Run argv inside `host` (bounded), return the JSON of its result line; its stderr goes to a log."""
    proc = net.run(
        host, argv, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_process(proc, grace=5.0)
        raise RuntimeError(f"benchmark: the arm script ran past {timeout_s:.0f} s") from None
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark: the arm script exited {proc.returncode}:\n{stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_MARK) :])


# --- `flywheel serve` in a process of its own ----------------------------------------------------------


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def serve_argv(
    checkpoint: Path, address: str, deploy: str, device: str = "cpu", torch_threads: int = 1
) -> list[str]:
    """`flywheel serve` of one checkpoint (torch_threads 0: torch's default)."""
    return [
        sys.executable,
        "-m",
        "flywheel.cli",
        "serve",
        f"--policy.path={checkpoint}",
        f"--wire.address={address}",
        f"--wire.deploy={deploy}",
        f"--policy.device={device}",
        f"--policy.torch_threads={torch_threads}",
        "--stats_every_s=0",
    ]


def free_loopback() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class ServeProcess:
    """`flywheel serve` in a subprocess (inside a namespace with `net`); its log goes to `log`."""

    def __init__(self, argv: list[str], log: Path, net=None, address: str | None = None):
        self.log, self.address = log, address
        self._file = open(log, "w")  # noqa: SIM115 (closed by stop)
        kwargs: dict[str, Any] = {"cwd": REPO, "env": _env(), "stderr": subprocess.PIPE, "text": True}
        if net is None:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
        else:
            self.proc = net.run("gpu", argv, **kwargs)
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    @classmethod
    def in_namespace(cls, net, checkpoint: Path, keys: Path, log: Path) -> ServeProcess:
        """`flywheel serve` of `checkpoint` in namespace "gpu", bound to its veth address with CurveZMQ
        keys made in `keys` (daemon, policy_server); `address` is where the arm connects."""
        make_keys(keys, ("daemon", "policy_server"))
        host = net.address("gpu")
        address = f"tcp://{host}:5570"
        argv = [*serve_argv(checkpoint, address, f"tcp://{host}:5571"), f"--wire.keys_dir={keys}"]
        return cls(argv, log, net=net, address=address)

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self._file.write(line)
            if "policy server v" in line and " on tcp://" in line:
                self.ready.set()

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"benchmark: flywheel serve did not start:\n{self.log.read_text()[-3000:]}"
                )

    def stop(self) -> None:
        stop_process(self.proc, grace=5.0)
        self._reader.join(5)
        with contextlib.suppress(Exception):
            self._file.close()
