// Chat about an image and score candidate answers with a LLaVA model.
//   node examples/llava-chat.mjs [model-folder] [image]
// Defaults to the tiny LLaVA in ../shared (random weights: the words are noise, the numbers are
// exactly what transformers computes for this model).
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { loadModel } from '../dist/index.js';

const here = dirname(fileURLToPath(import.meta.url));
const modelDir = process.argv[2] ?? join(here, '..', '..', 'shared', 'models', 'llava-tiny-hf');
const image = process.argv[3] ?? join(modelDir, 'photo.jpg');

const model = await loadModel(modelDir);
const messages = [
  {
    role: 'user',
    content: [
      { type: 'image', image },
      { type: 'text', text: 'How does the person in this photo feel?' },
    ],
  },
];

process.stdout.write('chat: ');
const gen = model.chat({ messages, maxTokens: 16 });
for await (const chunk of gen) process.stdout.write(chunk.text);
const { tokens, stopReason } = await gen.result;
console.log(`\n  (${tokens.length} tokens, ${stopReason})`);

const scored = await model.scoreOptions(messages, ['happy', 'sad', 'angry', 'surprised']);
console.log('scoreOptions:');
for (const [i, o] of scored.options.entries())
  console.log(`  ${o.option.padEnd(10)} p=${scored.probabilities[i].toFixed(4)}  mean logprob ${o.meanLogprob.toFixed(3)}`);
console.log(`  best: ${scored.best} (margin ${scored.margin.toFixed(4)})`);
await model.close();
