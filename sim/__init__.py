"""cocotb co-simulation: run the generated RTL on real inputs and compare with the golden model."""
