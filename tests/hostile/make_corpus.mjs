#!/usr/bin/env node
// Writes the hostile-input corpus (tests/hostile/files/) and its manifest (tests/hostile/corpus.json).
// Every entry names the typed error (or documented result) it must end in; the corpus test
// (tests/js/hostile_corpus.test.ts) runs them all. Re-run after adding an entry:
//   node tests/hostile/make_corpus.mjs
// Everything is generated from constants here (no randomness), so the files are reproducible.
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deflateSync } from 'node:zlib';

const here = dirname(fileURLToPath(import.meta.url));
const files = join(here, 'files');
rmSync(files, { recursive: true, force: true });
mkdirSync(files, { recursive: true });
const entries = [];
function add(kind, name, bytes, expect, why) {
  const rel = join(kind, name);
  mkdirSync(dirname(join(files, rel)), { recursive: true });
  writeFileSync(join(files, rel), bytes);
  entries.push({ kind, file: rel, expect, why });
}

// ---------------------------------------------------------------- GGUF
const u32 = (v) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; };
const u64 = (v) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; };
const str = (s) => Buffer.concat([u64(Buffer.byteLength(s)), Buffer.from(s)]);
const ggufHead = (nt, nkv) => Buffer.concat([Buffer.from('GGUF'), u32(3), u64(nt), u64(nkv)]);
add('models', 'empty.gguf', Buffer.alloc(0), 'ERR_MALFORMED_FILE', 'no bytes at all');
add('models', 'bad-magic.gguf', Buffer.from('GGML\x03\x00\x00\x00'), 'ERR_MALFORMED_FILE', 'wrong magic');
add('models', 'version-99.gguf', Buffer.concat([Buffer.from('GGUF'), u32(99), u64(0), u64(0)]), 'ERR_UNSUPPORTED', 'unknown version');
add('models', 'huge-tensor-count.gguf', ggufHead(2n ** 62n, 0), 'ERR_MALFORMED_FILE', 'claims 2^62 tensors in 24 bytes');
add('models', 'huge-kv-count.gguf', ggufHead(0, 2n ** 60n), 'ERR_MALFORMED_FILE', 'claims 2^60 metadata entries');
add('models', 'huge-string.gguf', Buffer.concat([ggufHead(0, 1), u64(2n ** 63n), Buffer.from('x')]), 'ERR_MALFORMED_FILE', 'a key of 2^63 bytes');
add(
  'models',
  'tensor-past-eof.gguf',
  Buffer.concat([ggufHead(1, 0), str('w'), u32(2), u64(64), u64(64), u32(0), u64(0), Buffer.alloc(8)]),
  'ERR_MALFORMED_FILE',
  'a 64x64 f32 tensor in a file of a few bytes',
);
add(
  'models',
  'dims-overflow.gguf',
  Buffer.concat([ggufHead(1, 0), str('w'), u32(4), u64(2n ** 40n), u64(2n ** 40n), u64(2n ** 40n), u64(2n ** 40n), u32(0), u64(0)]),
  'ERR_MALFORMED_FILE',
  'element count overflows 64 bits',
);
add(
  'models',
  'array-bomb.gguf',
  Buffer.concat([ggufHead(0, 1), str('k'), u32(9), u32(4), u64(2n ** 61n)]),
  'ERR_MALFORMED_FILE',
  'an array of 2^61 u32 in metadata',
);

// ---------------------------------------------------------------- safetensors
const st = (header, data = Buffer.alloc(0), len) => {
  const h = Buffer.from(header);
  return Buffer.concat([u64(len ?? h.length), h, data]);
};
add('models', 'st-empty.safetensors', Buffer.alloc(0), 'ERR_MALFORMED_FILE', 'no bytes');
add('models', 'st-header-past-eof.safetensors', st('{}', Buffer.alloc(0), 1n << 40n), 'ERR_MALFORMED_FILE', 'header length 1 TiB');
add('models', 'st-not-json.safetensors', st('{"a": [1, 2'), 'ERR_MALFORMED_FILE', 'torn JSON header');
add(
  'models',
  'st-offsets-past-eof.safetensors',
  st('{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,1000000]}}', Buffer.alloc(16)),
  'ERR_MALFORMED_FILE',
  'data_offsets beyond the file',
);
add(
  'models',
  'st-shape-mismatch.safetensors',
  st('{"w":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}}', Buffer.alloc(16)),
  'ERR_MALFORMED_FILE',
  'shape says 20 bytes, offsets 16',
);
add(
  'models',
  'st-deep-json.safetensors',
  st('['.repeat(100000) + ']'.repeat(100000)),
  'ERR_MALFORMED_FILE',
  'nesting 100 000 deep (stack exhaustion)',
);

// ---------------------------------------------------------------- configs (each one a model folder: config.json only)
add('configs', 'not-json/config.json', '{"model_type": "llama", ', 'ERR_MALFORMED_FILE', 'torn JSON');
add('configs', 'unknown-type/config.json', JSON.stringify({ model_type: 'skynet' }), 'ERR_UNSUPPORTED', 'unknown model_type');
add(
  'configs',
  'negative-layers/config.json',
  JSON.stringify({ model_type: 'llama', hidden_size: 64, num_hidden_layers: -5, num_attention_heads: 8, intermediate_size: 172, vocab_size: 512 }),
  'ERR_BAD_CONFIG',
  'negative layer count',
);
add(
  'configs',
  'huge-sizes/config.json',
  JSON.stringify({ model_type: 'llama', hidden_size: 1e15, num_hidden_layers: 1e9, num_attention_heads: 8, intermediate_size: 1e15, vocab_size: 1e12 }),
  'ERR_BAD_CONFIG|ERR_FILE_NOT_FOUND|ERR_MALFORMED_FILE',
  'absurd sizes: refused from the config or for the missing weights, never allocated',
);

// ---------------------------------------------------------------- images
const crcTable = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
const crc32 = (b) => {
  let c = 0xffffffff;
  for (const x of b) c = crcTable[(c ^ x) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
};
const chunk = (type, data) => {
  const t = Buffer.from(type);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([t, data])));
  return Buffer.concat([len, t, data, crc]);
};
const png = (w, h, idat) => {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', idat), chunk('IEND', Buffer.alloc(0))]);
};
const tiny = png(2, 2, deflateSync(Buffer.from([0, 1, 2, 3, 4, 5, 6, 0, 7, 8, 9, 10, 11, 12])));
add('images', 'ok-2x2.png', tiny, 'ok', 'a valid 2x2 PNG (control entry: decodes)');
add('images', 'empty.png', Buffer.alloc(0), 'ERR_BAD_IMAGE', 'no bytes');
add('images', 'truncated.png', tiny.subarray(0, 40), 'ERR_BAD_IMAGE', 'cut inside IDAT');
add('images', 'bomb-30000x30000.png', png(30000, 30000, deflateSync(Buffer.alloc(1000))), 'ERR_BAD_IMAGE', '900 MP declared in a few hundred bytes');
add('images', 'bomb-1x1e9.png', png(1, 1_000_000_000, deflateSync(Buffer.alloc(100))), 'ERR_BAD_IMAGE', 'a billion rows');
add('images', 'text.jpg', 'this is not a JPEG\n', 'ERR_BAD_IMAGE', 'text with an image extension');
add(
  'images',
  'script.svg',
  '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><image href="file:///etc/passwd"/></svg>',
  'ERR_BAD_IMAGE',
  'SVG (a renderer that can fetch files) is refused',
);
add('images', 'zero-size.png', png(0, 0, deflateSync(Buffer.alloc(0))), 'ERR_BAD_IMAGE', 'a 0x0 image');

// ---------------------------------------------------------------- benchmark lines (one JSONL file each)
const ok = { id: 'H/test/0', task: 'emo-c', source: 'H', split: 'test', media: null, text: 't', options: ['happy', 'sad'], answer: 'happy' };
const line = (o) => JSON.stringify(o) + '\n';
add('bench', 'not-json.jsonl', '{"id": "x", \n', 'ERR_MALFORMED_FILE', 'torn first line');
add('bench', 'not-object.jsonl', '[1,2,3]\n', 'ERR_MALFORMED_FILE', 'an array, not a sample');
add('bench', 'unknown-task.jsonl', line({ ...ok, task: 'rm -rf' }), 'ERR_MALFORMED_FILE', 'unknown task');
add('bench', 'answer-not-option.jsonl', line({ ...ok, answer: 'angry' }), 'ERR_MALFORMED_FILE', 'answer outside the options');
add('bench', 'duplicate-id.jsonl', line(ok) + line(ok), 'ERR_MALFORMED_FILE', 'the same id twice');
add('bench', 'proto-pollution.jsonl', '{"__proto__": {"polluted": true}, "id": "H/test/0", "task": "emo-c", "source": "H", "split": "test", "media": null, "text": "t", "options": ["happy", "sad"], "answer": "happy"}\n', 'ok', 'a __proto__ key: parsed as data, Object.prototype untouched');
add('bench', 'media-absolute.jsonl', line({ ...ok, media: { type: 'image', path: '/etc/passwd' } }), 'record:ERR_UNSAFE_PATH', 'absolute media path');
add('bench', 'media-dotdot.jsonl', line({ ...ok, media: { type: 'image', path: '../../../../etc/passwd' } }), 'record:ERR_UNSAFE_PATH', '.. in the media path');
add('bench', 'media-backslash-dotdot.jsonl', line({ ...ok, media: { type: 'image', path: 'a\\..\\..\\x.png' } }), 'record:ERR_UNSAFE_PATH', 'Windows-style .. segments');
add('bench', 'media-nul.jsonl', line({ ...ok, media: { type: 'image', path: 'a.png\u0000/etc/passwd' } }), 'record:ERR_UNSAFE_PATH', 'a NUL byte in the path');
add('bench', 'media-missing.jsonl', line({ ...ok, media: { type: 'image', path: 'nope/missing.png' } }), 'record:skipped', 'media that does not exist: skipped, listed');
add('bench', 'huge-text.jsonl', line({ ...ok, text: 'é'.repeat(30_000) }), 'ok', 'a 60 KB caption: answered (the prompt limit applies to models)');

// ---------------------------------------------------------------- HTTP replies (status, headers, body served by a loopback server)
const replies = [
  ['not-json', { status: 200, body: '<html>hello</html>' }, 'record:ERR_MALFORMED_FILE', 'HTML instead of JSON'],
  ['no-choices', { status: 200, body: '{"id": 1}' }, 'record:ERR_MALFORMED_FILE', 'JSON without choices'],
  ['content-number', { status: 200, body: '{"choices":[{"message":{"content":42}}]}' }, 'record:ERR_MALFORMED_FILE', 'content is not a string'],
  ['bad-request', { status: 400, body: '{"error":"no"}' }, 'record:ERR_INVALID_ARGUMENT', 'HTTP 400 is not retried'],
  ['server-error', { status: 503, body: 'busy' }, 'record:ERR_INTERNAL', 'HTTP 503 every time: gives up after the retries'],
  ['oversized', { status: 200, repeat: 10 * 1024, body: 'x'.repeat(1024) }, 'record:ERR_LIMIT_EXCEEDED', '10 MiB reply over the 8 MiB limit'],
  ['lying-length', { status: 200, headers: { 'content-length': '999999999999' }, body: '{}' }, 'record:ERR_LIMIT_EXCEEDED', 'declares a 1 TB body'],
  ['slow-drip', { status: 200, drip: true, body: '{"choices": [' }, 'record:ERR_INTERNAL', 'one byte every 100 ms, never finishing: the request timeout ends it'],
  ['garbage-answer', { status: 200, body: JSON.stringify({ choices: [{ message: { content: '\u0000\uffff'.repeat(1000) } }] }) }, 'record:unparsed', 'a reply with no label: unparsed, not wrong'],
  ['deep-json', { status: 200, body: '['.repeat(50000) + ']'.repeat(50000) }, 'record:ERR_MALFORMED_FILE', 'nested 50 000 deep: no choices'],
];
for (const [name, reply, expect, why] of replies) add('http', `${name}.json`, JSON.stringify(reply), expect, why);

writeFileSync(join(here, 'corpus.json'), JSON.stringify({ note: 'generated by make_corpus.mjs; see docs/security.md', entries }, null, 2) + '\n');
console.log(`${entries.length} entries`);
