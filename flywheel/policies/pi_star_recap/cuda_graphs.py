"""Action sampling as a replayed CUDA graph.

At batch size 1 pi05 is launch-bound on a GPU: the prefix (27 SigLIP + 18 Gemma layers) and ten
Euler steps of the 18-layer expert are ~12k small kernels, and Python takes longer to launch them
than the GPU to run them (pi05 preset on an H200, docs/benchmarks.md). Here the inputs are copied
into static buffers, the captured kernels replayed, and the output cloned, so the result is the
eager computation's bit for bit (tests/policies/test_cuda_graphs.py).

Two things another thread must not do while a graph is being captured, both seen on an H200 when a
hot-swap's smoke inference ran beside the worker's first chunk (tests/policies/test_cuda_graphs.py):
draw from the CUDA random generator, which PyTorch ties to the capture ("Offset increment outside
graph capture"), so the policy draws its noise on the CPU; and start a capture of its own, whose
device-wide synchronize fails while a stream is capturing, so captures take a process-wide lock.
Other code drawing CUDA random numbers in the daemon's process would have to avoid it as well.

One graph per key and input shapes (prompt length, batch, CFG branches, steps, guidance scale); the
daemon, one task at batch 1, captures once. The least recently used graph is dropped past
`max_graphs`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# One capture at a time in the process (see above).
_CAPTURE_LOCK = threading.Lock()
GraphedFn = Callable[[list[Tensor]], Tensor]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[Tensor]
    output: Tensor


class CudaGraphCache:
    def __init__(self, max_graphs: int = 4, warmup_runs: int = 2) -> None:
        self.max_graphs = max_graphs
        self.warmup_runs = warmup_runs
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._weights: tuple[int, ...] = ()
        self.captures = 0  # how many graphs were captured (tests and benchmarks read it)

    def __call__(self, fn: GraphedFn, key: tuple, weights: tuple[int, ...], inputs: list[Tensor]) -> Tensor:
        """fn(inputs) through the graph captured for `key` and the inputs' shapes. `weights` (the
        parameters' addresses) changing drops every graph: they read the old addresses."""
        if weights != self._weights:
            self._graphs.clear()
            self._weights = weights
        key = (key, tuple((tuple(x.shape), x.dtype, x.device) for x in inputs))
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._capture(fn, inputs)
            self._graphs[key] = captured
            if len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        for static, new in zip(captured.inputs, inputs, strict=True):
            static.copy_(new)
        captured.graph.replay()
        return captured.output.clone()

    def _capture(self, fn: GraphedFn, inputs: list[Tensor]) -> _Captured:
        with _CAPTURE_LOCK:
            return self._capture_alone(fn, inputs)

    def _capture_alone(self, fn: GraphedFn, inputs: list[Tensor]) -> _Captured:
        static = [x.clone() for x in inputs]
        device = static[0].device
        # Warm up on a side stream first (cuBLAS/cuDNN pick and allocate their workspaces outside
        # the capture), as torch.cuda.graphs' documentation asks.
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_runs):
                fn(static)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the daemon's hot-swap thread may be loading the next policy meanwhile.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = fn(static)
        self.captures += 1
        return _Captured(graph, static, output)
