"""cocotb bench for the NSM core (runs inside the simulator; launched by :mod:`sim.runner`).

It reads a job directory (``NSM_JOB``): ``job.json`` and ``pixels.npy``. It streams the images
through ``s_axis`` (AXI4-Stream style: data held until accepted, optional random idle gaps),
takes every result from ``m_axis`` (optional random back-pressure; the result must hold still
while it waits), optionally resets the core in the middle of chosen images and feeds them again,
and writes ``rtl.npz``: per finished image its class, scores, latency (cycles from the last
pixel's handshake to ``m_axis_tvalid``) and the cycle of its handshake; with ``debug`` also every
hidden spike vector from the ``dbg_*`` ports. It judges nothing about values itself:
:mod:`sim.runner` compares them with the golden model and locates the first mismatch.

A core with ``ram`` weights first takes the weight image (``weights.npy``, 16-bit beats) on
``w_axis``, once: the weights must survive every later reset.

``seeds`` is a list of ``[k, S]``: before image ``k`` the run seed ``S`` is handed over on the
``seed`` port.

Reset semantics under test: ``resets`` is a list of ``[k, c]``: once images ``0..k-1`` have
produced their results, image ``k`` is fed and ``c`` cycles after its last pixel ``rst`` is held
for 2 cycles; no result may appear for it; feeding resumes at image ``k`` on a freshly reset core.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge

PERIOD_NS = 10


def _signed(v: int, bits: int) -> int:
    return v - (1 << bits) if v >> (bits - 1) else v


def _uint(value) -> int:
    """A signal's value as an unsigned int (1-bit signals read as Logic, wider as LogicArray)."""
    return value.to_unsigned() if hasattr(value, "to_unsigned") else int(value)


def _cycle() -> int:
    return round(get_sim_time("ns") / PERIOD_NS)


async def _transfer(dut, ready) -> None:
    """With valid already high: wait for a cycle whose settled ``ready`` is 1 (sampled at the
    falling edge, the same on every simulator), then for the rising edge that transfers."""
    while True:
        await FallingEdge(dut.clk)
        if ready.value == 1:
            break
    await RisingEdge(dut.clk)


async def _reset(dut, cycles: int = 2) -> None:
    dut.rst.value = 1
    dut.s_axis_tvalid.value = 0
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
    dut.s_axis_tdata.value = 0
    dut.s_axis_tlast.value = 0
    dut.m_axis_tready.value = 1
    dut.seed_valid.value = 0
    dut.seed.value = 0
    load_weights = (job / "weights.npy").exists()
    if load_weights:
        dut.w_axis_tvalid.value = 0
        dut.w_axis_tlast.value = 0
        dut.w_axis_tdata.value = 0
    await _reset(dut, 3)
    if load_weights:
        beats = np.load(job / "weights.npy", allow_pickle=False)
        for i, b in enumerate(beats):
            while in_gap and rng.random() < in_gap:
                dut.w_axis_tvalid.value = 0
                await RisingEdge(dut.clk)
            dut.w_axis_tdata.value = int(b)
            dut.w_axis_tlast.value = int(i == len(beats) - 1)
            dut.w_axis_tvalid.value = 1
            await _transfer(dut, dut.w_axis_tready)
        dut.w_axis_tvalid.value = 0
        await FallingEdge(dut.clk)
        assert dut.w_axis_tready.value == 0, "w_axis still ready after the whole weight image"
        await RisingEdge(dut.clk)      # drivers change their signals just after a rising edge

    results = {"classes": [], "scores": [], "latency": [], "done_at": []}
    spikes: list[tuple[int, int]] = []       # (layer, bits) in the order they appear

    async def feed(n: int) -> int:
        """Stream image ``n``; returns the cycle of its last pixel's handshake."""
        for j in range(n_in):
            while in_gap and rng.random() < in_gap:
                dut.s_axis_tvalid.value = 0
                await RisingEdge(dut.clk)
            dut.s_axis_tdata.value = int(pixels[n, j])
            dut.s_axis_tlast.value = int(j == n_in - 1)
            dut.s_axis_tvalid.value = 1
            await _transfer(dut, dut.s_axis_tready)
        dut.s_axis_tvalid.value = 0
        dut.s_axis_tlast.value = 0
        return _cycle()

    async def take(n: int, last_in: list) -> None:
        """Wait for image ``n``'s result, with random back-pressure, and record it."""
        await FallingEdge(dut.clk)
        if dut.m_axis_tvalid.value != 1:
            await RisingEdge(dut.m_axis_tvalid)
        t_valid = _cycle()
        first = None
        while True:
            await FallingEdge(dut.clk)
            assert dut.m_axis_tvalid.value == 1, (
                f"image {n}: m_axis_tvalid dropped before handshake")
            now = (_uint(dut.m_axis_tdata.value), _uint(dut.m_axis_tuser.value))
            if first is None:
                first = now
            assert now == first, f"image {n}: the result changed while waiting for tready"
            ready = not (out_stall and rng.random() < out_stall)
            dut.m_axis_tready.value = int(ready)
            if ready:
                break
        cls, packed = first
        await RisingEdge(dut.clk)
        dut.m_axis_tready.value = int(rng.random() < 0.5) if out_stall else 1
        results["classes"].append(cls)
        results["scores"].append([_signed((packed >> (c * sb)) & ((1 << sb) - 1), sb)
                                  for c in range(C)])
        results["latency"].append(t_valid - last_in[0])
        results["done_at"].append(_cycle())

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

    if debug and hidden:
        cocotb.start_soon(watch_spikes())

    log_every = max(1, n_img // 20)
    n = 0
    while n < n_img:
        if n in resets:
            # Feed image n, then reset the core in the middle of its inference.
            await feed(n)
            dut.m_axis_tready.value = 0            # a finished result would now stay visible
            await ClockCycles(dut.clk, resets.pop(n))
            await FallingEdge(dut.clk)
            assert dut.m_axis_tvalid.value != 1, f"image {n}: finished before the planned reset"
            await _reset(dut)
            dut.m_axis_tready.value = 1
            # Drop what the aborted image produced: keep T vectors per layer per finished image.
            keep, seen = len(results["classes"]) * spec.get("samples", 1), {}
            kept_spikes = []
            for h, v in spikes:
                seen[h] = seen.get(h, 0) + 1
                if seen[h] <= keep:
                    kept_spikes.append((h, v))
            spikes[:] = kept_spikes
            dut._log.info("reset in the middle of image %d; feeding it again", n)
            continue
        if n in seeds:
            dut.seed.value = seeds.pop(n)
            dut.seed_valid.value = 1
            await _transfer(dut, dut.seed_ready)
            dut.seed_valid.value = 0
        last_in = [0]

        async def drive(n=n, last_in=last_in):
            last_in[0] = await feed(n)

        cocotb.start_soon(drive())
        await take(n, last_in)
        n += 1
        (job / "progress").write_text(str(n))
        if n % log_every == 0 or n == n_img:
            dut._log.info("image %d/%d: class %d, latency %d cycles", n, n_img,
                          results["classes"][-1], results["latency"][-1])
    np.savez(job / "rtl.npz", classes=np.array(results["classes"], dtype=np.int64),
             scores=np.array(results["scores"], dtype=np.int64).reshape(n_img, C),
             latency=np.array(results["latency"], dtype=np.int64),
             done_at=np.array(results["done_at"], dtype=np.int64),
             spike_layers=np.array([s[0] for s in spikes], dtype=np.int64),
             spike_bits=np.array([str(s[1]) for s in spikes]))

