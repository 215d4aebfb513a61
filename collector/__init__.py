"""Node agent: NVML, simulated and trace backends that produce gpuledger.sample/v1 ticks."""
