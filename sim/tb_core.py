"""cocotb bench for the NSM core (runs inside the simulator; launched by :mod:`sim.runner`).

It reads a job directory (``NSM_JOB``): ``job.json`` and ``pixels.npy``. cocotbext-axi's
drivers carry the three streams: an ``AxiStreamSource`` puts the images on ``s_axis`` (one
frame per image, optional random idle cycles between beats), an ``AxiStreamSink`` takes every
result from ``m_axis`` (class in ``tdata``, packed scores in ``tuser``; optional random
back-pressure) and an ``AxiStreamMonitor`` on ``s_axis`` reports when each image's last pixel
was taken. All images wait in the source's queue, as the cycle model assumes (input always
valid), up to the next image that a seed or a reset waits for: that one is queued once every
image before it has its result (a core that overlaps images would take its pixels early).
A checker of our own watches ``m_axis``: the cycle ``m_axis_tvalid`` goes high, and a result
that changes or drops before its handshake. The bench writes ``rtl.npz``: per finished image
its class, scores, latency (cycles from the last pixel's handshake to ``m_axis_tvalid``) and
the cycle of its handshake; with ``debug`` also every hidden spike vector from the ``dbg_*``
ports. It judges nothing about values itself: :mod:`sim.runner` compares them with the golden
model and locates the first mismatch.

cocotbext-axi's drivers and the ``m_axis`` checker sample their signals just after a rising
clock edge, where they still hold the values that edge clocked in (on Icarus and on Verilator
alike); so a cycle number is the edge's own: a handshake at edge ``e`` is cycle ``e``, and a
``tvalid`` first seen at edge ``e`` went high at edge ``e - 1``. The seed handover and the spike
watcher sample at the falling edge instead, where every signal has settled.

A core with ``ram`` weights first takes the weight image (``weights.npy``, 16-bit beats) on
``w_axis``, once: the weights must survive every later reset.

``seeds`` is a list of ``[k, S]``: the run seed ``S`` is handed over on the ``seed`` port
before image ``k``'s first pixel (in the same cycle at the latest).

Reset semantics under test: ``resets`` is a list of ``[k, c]``: once images ``0..k-1`` have
produced their results, image ``k`` is fed and ``c`` cycles after its last pixel ``rst`` is held
for 2 cycles; no result may appear for it; feeding resumes at image ``k`` on a freshly reset core.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge
from cocotb.utils import get_time_from_sim_steps
from cocotbext.axi import (AxiStreamBus, AxiStreamFrame, AxiStreamMonitor, AxiStreamSink,
                           AxiStreamSource)

PERIOD_NS = 10

# cocotbext-axi 0.1.28 still calls cocotb 1.x names that cocotb 2.1 keeps but deprecates
# (setimmediatevalue, Edge, Task.kill); the version is pinned in pyproject.toml.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"cocotbext\.axi")


def _signed(v: int, bits: int) -> int:
    return v - (1 << bits) if v >> (bits - 1) else v


def _uint(value) -> int:
    """A signal's value as an unsigned int (1-bit signals read as Logic, wider as LogicArray)."""
    return value.to_unsigned() if hasattr(value, "to_unsigned") else int(value)


def _cycle(steps: int | None = None) -> int:
    """The clock edge at simulation time ``steps`` (default: now)."""
    ns = get_sim_time("ns") if steps is None else get_time_from_sim_steps(steps, "ns")
    return round(ns / PERIOD_NS)


def _stalls(rng, prob: float):
    """Pause generator for cocotbext-axi: each clock cycle, pause with probability ``prob``."""
    while True:
        yield rng.random() < prob


async def _transfer(dut, ready) -> None:
    """With valid already high: wait for a cycle whose settled ``ready`` is 1 (sampled at the
    falling edge), then for the rising edge that transfers."""
    while True:
        await FallingEdge(dut.clk)
        if ready.value == 1:
            break
    await RisingEdge(dut.clk)


async def _reset(dut, cycles: int = 2) -> None:
    dut.rst.value = 1
    await ClockCycles(dut.clk, cycles)
    dut.rst.value = 0


@cocotb.test()
async def stream_images(dut):
    job = Path(os.environ["NSM_JOB"])
    spec = json.loads((job / "job.json").read_text())
    pixels = np.load(job / "pixels.npy", allow_pickle=False)
    n_img, n_in = pixels.shape
    C, sb = spec["n_classes"], spec["score_bits"]
    rng = np.random.default_rng(spec.get("seed", 0))
    in_gap = float(spec.get("in_idle_prob", 0.0))
    out_stall = float(spec.get("out_stall_prob", 0.0))
    resets = {int(k): int(c) for k, c in spec.get("resets", [])}
    seeds = {int(k): int(v) for k, v in spec.get("seeds", [])}
    debug = bool(spec.get("debug", False))
    hidden = spec.get("hidden_sizes", [])

    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    for bus in ("s_axis", "w_axis", "m_axis"):         # no banner, no line per frame
        logging.getLogger(f"cocotb.{dut._name}.{bus}").setLevel(logging.WARNING)
    dut.seed_valid.value = 0
    dut.seed.value = 0
    # One beat per pixel, weight word and result: byte_lanes=1 makes a "byte" the whole tdata,
    # whatever its width (a 4-bit class, a 16-bit weight beat).
    pixels_in = AxiStreamSource(AxiStreamBus.from_prefix(dut, "s_axis"), dut.clk, dut.rst,
                                byte_lanes=1)
    pixels_taken = AxiStreamMonitor(AxiStreamBus.from_prefix(dut, "s_axis"), dut.clk, dut.rst,
                                    byte_lanes=1)
    results_out = AxiStreamSink(AxiStreamBus.from_prefix(dut, "m_axis"), dut.clk, dut.rst,
                                byte_lanes=1)
    if in_gap:
        pixels_in.set_pause_generator(_stalls(rng, in_gap))
    if out_stall:
        results_out.set_pause_generator(_stalls(rng, out_stall))
    load_weights = (job / "weights.npy").exists()
    if load_weights:
        weights_in = AxiStreamSource(AxiStreamBus.from_prefix(dut, "w_axis"), dut.clk,
                                     byte_lanes=1)            # no reset: loaded once
        if in_gap:
            weights_in.set_pause_generator(_stalls(rng, in_gap))
    await _reset(dut, 3)
    if load_weights:
        beats = np.load(job / "weights.npy", allow_pickle=False)
        await weights_in.send(AxiStreamFrame([int(b) for b in beats]))
        await weights_in.wait()                  # returns at the last beat's handshake
        await FallingEdge(dut.clk)
        assert dut.w_axis_tready.value == 0, "w_axis still ready after the whole weight image"

    results = {"classes": [], "scores": [], "latency": [], "done_at": [], "last_pixel": [],
               "samples": []}
    spikes: list[tuple[int, int]] = []       # (layer, bits) in the order they appear
    valid_at: list[int] = []                 # per result: the cycle m_axis_tvalid went high

    async def check_results() -> None:
        """m_axis protocol: a result holds still, valid high, until its handshake."""
        held = None
        while True:
            if held is None and dut.m_axis_tvalid.value != 1:
                await RisingEdge(dut.m_axis_tvalid)        # just after the edge that set it
            await RisingEdge(dut.clk)
            if dut.rst.value == 1 or dut.m_axis_tvalid.value != 1:
                assert held is None or dut.rst.value == 1, (
                    f"result {len(valid_at) - 1}: m_axis_tvalid dropped before handshake")
                held = None
                continue
            now = (_uint(dut.m_axis_tdata.value), _uint(dut.m_axis_tuser.value))
            if held is None:
                valid_at.append(_cycle() - 1)
                held = now
            assert now == held, f"result {len(valid_at) - 1} changed while waiting for tready"
            if dut.m_axis_tready.value == 1:
                held = None

    async def watch_spikes() -> None:
        offsets = np.concatenate([[0], np.cumsum(hidden)]).astype(int)
        while True:
            await RisingEdge(dut.clk)
            await FallingEdge(dut.clk)
            valid = _uint(dut.dbg_valid.value)
            if valid:
                bits = _uint(dut.dbg_spikes.value)
                for h in range(len(hidden)):
                    if valid >> h & 1:
                        spikes.append((h, (bits >> int(offsets[h])) & ((1 << hidden[h]) - 1)))

    async def hand_over_seed(value: int) -> None:
        dut.seed.value = value
        dut.seed_valid.value = 1
        await _transfer(dut, dut.seed_ready)
        dut.seed_valid.value = 0

    def queue_images(first: int) -> int:
        """Queue images from ``first`` up to the next image that a seed or a reset waits for
        (a core that overlaps images would otherwise take its pixels early); returns where
        the queue stops."""
        stop = min([k for k in (*seeds, *resets) if k > first], default=n_img)
        for n in range(first, stop):
            pixels_in.send_nowait(AxiStreamFrame([int(p) for p in pixels[n]]))
        return stop

    cocotb.start_soon(check_results())
    if debug and hidden:
        cocotb.start_soon(watch_spikes())

    log_every = max(1, n_img // 20)
    n = queued = 0
    while n < n_img:
        if n == queued:
            # Images 0..n-1 have their results: the core is empty; hand the seed over (for a
            # reset image, after the reset) and queue the images up to the next stop.
            if n in seeds and n not in resets:
                await hand_over_seed(seeds.pop(n))
            queued = queue_images(n)
        taken = await pixels_taken.recv()
        last_in = _cycle(taken.sim_time_end)
        if n in resets:
            # Image n is in; reset the core in the middle of its inference, feed it again.
            await ClockCycles(dut.clk, resets.pop(n))
            await FallingEdge(dut.clk)
            assert dut.m_axis_tvalid.value != 1 and len(valid_at) == n, (
                f"image {n}: finished before the planned reset")
            pixels_in.clear()
            await _reset(dut)
            while not pixels_taken.empty():                # images taken before the reset
                pixels_taken.recv_nowait()
            if n in seeds:
                await hand_over_seed(seeds.pop(n))
            queued = queue_images(n)
            # Drop what the aborted image produced: keep T vectors per layer per finished image.
            keep, seen = n * spec.get("samples", 1), {}
            kept_spikes = []
            for h, v in spikes:
                seen[h] = seen.get(h, 0) + 1
                if seen[h] <= keep:
                    kept_spikes.append((h, v))
            spikes[:] = kept_spikes
            dut._log.info("reset in the middle of image %d; feeding it again", n)
            continue
        out = await results_out.recv()
        packed = out.tuser                       # one beat: compact() made the list an int
        results["classes"].append(out.tdata[0])
        results["scores"].append([_signed((packed >> (c * sb)) & ((1 << sb) - 1), sb)
                                  for c in range(C)])
        results["samples"].append(packed >> (C * sb) if spec.get("early_exit") else
                                  spec.get("samples", 1))
        results["latency"].append(valid_at[n] - last_in)
        results["done_at"].append(_cycle(out.sim_time_end))
        results["last_pixel"].append(last_in)
        n += 1
        (job / "progress").write_text(str(n))
        if n % log_every == 0 or n == n_img:
            dut._log.info("image %d/%d: class %d, latency %d cycles", n, n_img,
                          results["classes"][-1], results["latency"][-1])
    np.savez(job / "rtl.npz", classes=np.array(results["classes"], dtype=np.int64),
             scores=np.array(results["scores"], dtype=np.int64).reshape(n_img, C),
             latency=np.array(results["latency"], dtype=np.int64),
             done_at=np.array(results["done_at"], dtype=np.int64),
             last_pixel=np.array(results["last_pixel"], dtype=np.int64),
             samples=np.array(results["samples"], dtype=np.int64),
             spike_layers=np.array([s[0] for s in spikes], dtype=np.int64),
             spike_bits=np.array([str(s[1]) for s in spikes]))
