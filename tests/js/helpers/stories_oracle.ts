// llama2.c's run.c outputs for the real stories260K model (<shared>/models/stories260K/oracle),
// shared by the tests that hold converted or re-quantised copies of the model against them
// (quantize, quantize_kquant, quantize_mix).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * The prompt "Once upon a time" at positions 0-4 (oracle/logits_prompt_once_upon_a_time_pos0-4.txt:
 * "# pos P input_token T" lines, each followed by the 512 f32 logits of that position): the input
 * tokens in order and their logits concatenated. `dir`: the stories260K folder.
 */
export function onceUponATimeLogits(dir: string): { tokens: number[]; logits: Float32Array } {
  const tokens: number[] = [];
  const values: number[] = [];
  for (const line of readFileSync(join(dir, 'oracle', 'logits_prompt_once_upon_a_time_pos0-4.txt'), 'utf8').split('\n')) {
    const m = /^# pos \d+ input_token (\d+)/.exec(line);
    if (m) tokens.push(Number(m[1]));
    else if (line.trim() !== '') values.push(Number(line));
  }
  return { tokens, logits: Float32Array.from(values) };
}
