"""Split-K ticket counters: int32 blocks, zero whenever a launch may take them.

Every serial split-K launch counts its finished splits per output tile in counters that it
leaves at zero (kernels.skinny_linear_kernel), so a block can serve launch after launch
as long as no two launches use it at once:

- eager launches use one block per (device, stream): a stream runs one launch at a time;
- a launch captured in a CUDA graph gets counters no other launch ever gets, since the
  graph may be replayed on any stream, before or after other graphs. They must be zero at
  its first replay, and zeros written during capture would be written only then, as one
  more graph node per launch: so they are carved from a reserve zeroed eagerly (renewed by
  eager launches once half spent). Only when the reserve is missing or too small does a
  capture zero its counters inside the graph.

Blocks are never freed: graphs may still use them after they are replaced. They are
allocated from a helper thread, on its default stream, outside any CUDA-graph memory pool:
torch.compile's CUDA graphs ("reduce-overhead") route the calling thread's allocations
(in older torch, those on its current stream) to their pool, whose memory they hand out
again at each new run, and a block kept from there would then be in use twice.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from . import dispatch

STREAM_COUNTERS = 1024  # per (device, stream), 4 KB: growth is rare
CAPTURE_RESERVE = 1 << 18  # per device, 1 MB: ~2,700 captured 6144-wide launches


def _persistent_zeros(device: torch.device, count: int) -> torch.Tensor:
    if device.type != "cuda":
        return torch.zeros(count, dtype=torch.int32, device=device)

    def allocate() -> torch.Tensor:
        zeros = torch.zeros(count, dtype=torch.int32, device=device)
        torch.cuda.current_stream(device).synchronize()  # zero before any stream uses it
        return zeros

    with ThreadPoolExecutor(1) as helper:
        return helper.submit(allocate).result()


@dataclass
class DeviceCounters:
    """The counters of one device (threads launching at once take the lock)."""

    device: torch.device
    streams: dict[int, torch.Tensor] = field(default_factory=dict)
    reserve: torch.Tensor | None = None
    reserve_used: int = 0
    retired: list[torch.Tensor] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def for_stream(self, stream: int, count: int) -> torch.Tensor:
        """At least `count` int32 counters (zero between launches) for an eager launch on
        `stream` (a raw stream handle; 0 on a CPU): the stream's own block, grown if too
        small. Also renews the capture reserve once half of it is spent."""
        with self.lock:
            return self._for_stream(stream, count)

    def for_capture(self, count: int) -> torch.Tensor:
        """`count` zeroed int32 counters [count] for a launch being captured in a CUDA
        graph, never handed out again: carved from the reserve, or (reserve missing or
        too small) zeros allocated, and written, inside the graph."""
        with self.lock:
            return self._for_capture(count)

    def retire_stream(self, stream: int) -> None:
        """Stop handing out `stream`'s block (kept alive: a launch may still use it); the
        next launch there gets a new, zeroed one."""
        with self.lock:
            block = self.streams.pop(stream, None)
            if block is not None:
                self.retired.append(block)

    def _for_stream(self, stream: int, count: int) -> torch.Tensor:
        block = self.streams.get(stream)
        if block is None or block.numel() < count:
            if block is not None:
                self.retired.append(block)
            block = _persistent_zeros(self.device, max(count, STREAM_COUNTERS))
            self.streams[stream] = block
        if self.reserve is None or 2 * self.reserve_used > self.reserve.numel():
            if self.reserve is not None:
                self.retired.append(self.reserve)
            self.reserve, self.reserve_used = _persistent_zeros(self.device, CAPTURE_RESERVE), 0
        return block

    def _for_capture(self, count: int) -> torch.Tensor:
        start = self.reserve_used
        if self.reserve is None or start + count > self.reserve.numel():
            return torch.zeros(count, dtype=torch.int32, device=self.device)  # a graph node
        # Each block starts 16-byte aligned, as eager blocks do: Triton compiles a kernel
        # per pointer alignment, and one first met under capture would compile there.
        self.reserve_used += -(-count // 4) * 4
        return self.reserve[start : start + count]


_DEVICES: dict[torch.device, DeviceCounters] = {}


def split_k_counters(device: torch.device, count: int) -> torch.Tensor:
    """`count` int32 counters on `device` (a tensor's: with its index), zero when the
    launch issued now runs, that no launch able to run at the same time uses."""
    counters = _DEVICES.get(device)
    if counters is None:
        counters = _DEVICES.setdefault(device, DeviceCounters(device))
    if dispatch.capturing(device):
        return counters.for_capture(count)
    return counters.for_stream(_current_stream(device), count)


def retire_stream_counters(device: torch.device) -> None:
    """After a launch on `device`'s current stream raised part-way: its counters may not
    be back at zero (an interpreted kernel stopped mid-run, by an exception or Ctrl-C),
    so later launches there get a new block."""
    counters = _DEVICES.get(device)
    if counters is not None and not dispatch.capturing(device):
        counters.retire_stream(_current_stream(device))


def _current_stream(device: torch.device) -> int:
    """The raw stream handle Triton launches on (its driver's get_current_stream), 0 on a
    CPU: cheaper than a torch.cuda.Stream object, which eager decode would build at every
    call."""
    return torch._C._cuda_getCurrentRawStream(device.index) if device.type == "cuda" else 0
