"""The machine code of a compiled kernel, read with triton's bundled NVIDIA tools (for
compile_report.py): its resource usage (cuobjdump), its SASS (nvdisasm), and the main loop
found in that SASS with the global loads the loop issues."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import triton

RESOURCE_LINE = re.compile(r"Function (\w+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")
LABEL_LINE = re.compile(r"^(\.L_x_\d+):")
GLOBAL_LOAD = re.compile(r"\b(LDGSTS|LDG)((?:\.[A-Z0-9]+)*)")
BRANCH = re.compile(r"\bBRA\b.*`\((\.L_x_\d+)\)")


def _tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _run_tool(tool: str, flag: str, cubin: bytes) -> str:
    """stdout of one of triton's bundled NVIDIA tools run on a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        return subprocess.run(
            [_tool(tool), flag, handle.name], capture_output=True, text=True, check=True
        ).stdout


def resource_usage(cubin: bytes, kernel: str) -> tuple[int, int, int]:
    """(registers, stack + local bytes, static shared bytes) from cuobjdump."""
    text = _run_tool("cuobjdump", "--dump-resource-usage", cubin)
    for name, reg, stack, shared, local in RESOURCE_LINE.findall(text):
        if name == kernel:
            return int(reg), int(stack) + int(local), int(shared)
    raise RuntimeError(f"cuobjdump reports no function {kernel}:\n{text}")


def disassemble(cubin: bytes) -> list[tuple[int, str]]:
    """[(address, instruction)] with labels as (address of the next instruction, label)."""
    lines, pending = [], []
    for raw in _run_tool("nvdisasm", "-c", cubin).splitlines():
        label = LABEL_LINE.match(raw.strip())
        if label:
            pending.append(label.group(1))
            continue
        match = SASS_LINE.search(raw)
        if match:
            address = int(match.group(1), 16)
            lines += [(address, f"{name}:") for name in pending]
            pending = []
            lines.append((address, match.group(2).strip()))
    return lines


def main_loop(sass: list[tuple[int, str]]) -> list[str]:
    """Instructions of the longest backward-branch loop that loads weights from global
    memory (the loop over K tiles; the split-K partial sums, read with .cg, i.e. STRONG.GPU
    loads, are not counted as such); [] if there is none."""
    labels = {text[:-1]: address for address, text in sass if text.endswith(":")}
    best: list[str] = []
    for address, text in sass:
        branch = BRANCH.search(text)
        if not branch or labels.get(branch.group(1), address + 1) > address:
            continue
        body = [
            t
            for a, t in sass
            if labels[branch.group(1)] <= a <= address and not t.endswith(":") and t != "NOP"
        ]
        loads = any(GLOBAL_LOAD.search(t) and "STRONG.GPU" not in t for t in body)
        if loads and len(body) > len(best):
            best = body
    return best


def loop_global_loads(body: list[str]) -> dict:
    """Global loads (LDG, and LDGSTS: global to shared) in the loop, by access width."""
    counts: dict[str, int] = {}
    for text in body:
        match = GLOBAL_LOAD.search(text)
        if match:
            suffix = match.group(2) or ""
            width = next((w for w in ("128", "64", "U16", "U8") if w in suffix), "32")
            name = f"{match.group(1)}.{width}"
            counts[name] = counts.get(name, 0) + 1
    return counts
