// Switches of norm.cpp's paths, for same-process A/B runs and the tests that compare them.
#pragma once

namespace emollm {

// LayerNorm rows in blocks of 4, each pass over the block's rows before the next (norm_rows.inc
// layernorm_blocks): the same arithmetic row by row, so the same bits, with the rows' latency
// chains side by side. add_layernorm fuses its add into the first pass only on this path (off:
// add() then the row-by-row layernorm). On at start; off for the tests' reference.
bool layernorm_row_blocks();
void set_layernorm_row_blocks(bool on);

}  // namespace emollm
