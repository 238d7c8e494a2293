"""cocotb bench for the NSM core (runs inside the simulator; launched by :mod:`sim.runner`).

It reads a job directory (``NSM_JOB``): ``job.json`` and ``pixels.npy``; streams every image
through ``s_axis`` (AXI4-Stream style, data held until accepted), collects every result from
``m_axis`` and writes ``rtl.npz``: classes, scores and, per image, the latency in cycles from the
last pixel's handshake to ``m_axis_tvalid`` and the cycles between successive results. It
compares nothing itself: :mod:`sim.runner` compares with the golden model, so that a mismatch is
reported with the image, class and values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge, RisingEdge

PERIOD_NS = 10


def _signed(v: int, bits: int) -> int:
    return v - (1 << bits) if v >> (bits - 1) else v


@cocotb.test()
async def stream_images(dut):
    job = Path(os.environ["NSM_JOB"])
    spec = json.loads((job / "job.json").read_text())
    pixels = np.load(job / "pixels.npy", allow_pickle=False)
    n_img, n_in = pixels.shape
    C, sb = spec["n_classes"], spec["score_bits"]
    rng = np.random.default_rng(spec.get("seed", 0))
    in_gap = float(spec.get("in_idle_prob", 0.0))

    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    dut.s_axis_tvalid.value = 0
    dut.s_axis_tdata.value = 0
    dut.s_axis_tlast.value = 0
    dut.m_axis_tready.value = 1
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0

    last_in = []          # sim time (ns) of each image's last-pixel handshake

    async def drive():
        for n in range(n_img):
            for j in range(n_in):
                while in_gap and rng.random() < in_gap:
                    dut.s_axis_tvalid.value = 0
                    await RisingEdge(dut.clk)
                dut.s_axis_tdata.value = int(pixels[n, j])
                dut.s_axis_tlast.value = int(j == n_in - 1)
                dut.s_axis_tvalid.value = 1
                while True:
                    await FallingEdge(dut.clk)
                    if dut.s_axis_tready.value:
                        break
                await RisingEdge(dut.clk)
            last_in.append(get_sim_time("ns"))
            dut.s_axis_tvalid.value = 0
            dut.s_axis_tlast.value = 0

    cocotb.start_soon(drive())

    classes = np.zeros(n_img, dtype=np.int64)
    scores = np.zeros((n_img, C), dtype=np.int64)
    latency = np.zeros(n_img, dtype=np.int64)
    done_at = np.zeros(n_img, dtype=np.int64)
    log_every = max(1, n_img // 20)
    for n in range(n_img):
        await FallingEdge(dut.clk)
        if dut.m_axis_tvalid.value != 1:
            await RisingEdge(dut.m_axis_tvalid)
        t_valid = get_sim_time("ns")
        while True:
            await FallingEdge(dut.clk)
            if dut.m_axis_tready.value:
                break
        classes[n] = dut.m_axis_tdata.value.to_unsigned()
        packed = dut.m_axis_tuser.value.to_unsigned()
        scores[n] = [_signed((packed >> (c * sb)) & ((1 << sb) - 1), sb) for c in range(C)]
        latency[n] = round((t_valid - last_in[n]) / PERIOD_NS)
        await RisingEdge(dut.clk)
        done_at[n] = round(get_sim_time("ns") / PERIOD_NS)
        (job / "progress").write_text(str(n + 1))
        if (n + 1) % log_every == 0 or n + 1 == n_img:
            dut._log.info("image %d/%d: class %d, latency %d cycles", n + 1, n_img, classes[n],
                      latency[n])
    np.savez(job / "rtl.npz", classes=classes, scores=scores, latency=latency, done_at=done_at)
