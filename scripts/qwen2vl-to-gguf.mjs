#!/usr/bin/env node
// A Hugging Face Qwen2-VL folder -> llama.cpp's text GGUF + mmproj GGUF (same names and keys as
// llama.cpp's convert_hf_to_gguf.py; see lib/convert_qwen2vl.ts). Tensors keep their dtype.
//
//   node scripts/qwen2vl-to-gguf.mjs <hf-folder> <text.gguf> <mmproj.gguf>
//
// Needs dist/ (npx tsc -p tsconfig.json) and the addon (node scripts/build-addon.mjs).
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
if (args.includes('--help') || args.includes('-h')) {
  console.log('usage: node scripts/qwen2vl-to-gguf.mjs <hf-folder> <text.gguf> <mmproj.gguf>');
  process.exit(0);
}
const unknown = args.find((a) => a.startsWith('-'));
if (unknown || args.length !== 3) {
  console.error(unknown ? `unknown option ${unknown}` : 'expected 3 arguments: <hf-folder> <text.gguf> <mmproj.gguf> (--help)');
  process.exit(2);
}
const [folder, text, mmproj] = args;
try {
  const { convertQwen2VLToGguf } = await import(pathToFileURL(join(root, 'dist', 'convert_qwen2vl.js')).href);
  await convertQwen2VLToGguf(folder, { text, mmproj });
  console.log(`wrote ${text} and ${mmproj}`);
} catch (e) {
  console.error(`qwen2vl-to-gguf: ${e?.code ? `${e.code}: ` : ''}${e?.message ?? e}`);
  process.exit(1);
}
