"""The latency model: per DVFS level, latency = cycles / frequency, from the kernels of the compiled model.

Every kernel of a compiled model (`rt3c.stages.lower.lower_model`) gets a cost per call in one of two units,
and every number says which (`source`):

- `qemu`: executed instructions, counted under qemu for the board's target (aarch64 under qemu-aarch64,
  Cortex-M under qemu-system-arm) with rt3c's TCG plugin (`rt3c.stages.instruction_count`), over the kernel's
  own functions; cycles = instructions x the board's `cycles_per_instruction` (docs/BOARDS.md).
- `host`: processor time of each kernel built for the host and run alone on its real shapes under TVM's
  runtime (least of 5 runs); cycles = seconds x the host's clock (`cpu MHz` in /proc/cpuinfo).

A level's cost is the sum over its calls. The search needs it for plans it has not compiled, so the
SparseLinear kernel gets a linear cost model fitted on calibration kernels of the model's own layer
shapes (`LinearCostModel`, features in `kernel_features`), and the rest of the model (attention,
LayerNorm, GELU, embeddings, layers left dense) is the measured cost of the non-SparseLinear kernels of
a compiled reference plan, which does not depend on the plan. Measurements are cached by what they
depend on (layer shapes or model structure, target, source, rt3c's kernel code) under the kernel cache
directory.

Modules: `units` (costs and their units; no TVM, so `rt3c simulate` and `rt3c report` stay light),
`measure` (compile and measure kernels), `cost_model` (`LinearCostModel`, `LatencyModel`), `calibrate`
(build the latency model, cached).
"""
