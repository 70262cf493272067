import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ChatTemplate, loadChatTemplate, renderChatTemplate } from '../../lib/chat_template.js';
import type { ChatMessage } from '../../lib/chat_template.js';
import { loadHfTokenizer } from '../../lib/tokenizer.js';
import type { Tokenizer } from '../../lib/tokenizer.js';
import { rejects, throws } from './helpers/errors.js';

// Shared files: $EMOLLM_SHARED_DIR, else ../shared next to the repository.
const repoRoot = join(__dirname, '..', '..');
const shared = resolve(process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared'));
const llavaDir = join(shared, 'tokenizers', 'llava-1.5-7b-hf');
const tinyDir = join(shared, 'models', 'llava-tiny-hf');
const haveLlava = existsSync(join(llavaDir, 'oracle_prompts.json'));
const haveTiny = existsSync(join(tinyDir, 'chat_template.json'));
if (!haveLlava || !haveTiny)
  console.warn(`chat_template.test: llava files missing under ${shared} (set EMOLLM_SHARED_DIR); oracle tests skipped`);

interface Oracle {
  messages?: ChatMessage[];
  add_generation_prompt?: boolean;
  rendered_prompt?: string;
  input_ids_with_bos: number[];
}

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'emollm-chat-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function folder(name: string, files: Record<string, unknown>): Promise<string> {
  const d = join(tmp, name);
  await mkdir(d);
  for (const [f, c] of Object.entries(files)) await writeFile(join(d, f), typeof c === 'string' ? c : JSON.stringify(c));
  return d;
}

describe.skipIf(!haveLlava)('llava-1.5 chat template oracles', () => {
  let oracles: [string, Oracle][];
  let tok: Tokenizer;
  beforeAll(async () => {
    const all = JSON.parse(readFileSync(join(llavaDir, 'oracle_prompts.json'), 'utf8')) as Record<string, Oracle>;
    oracles = Object.entries(all).filter(([, o]) => o.messages !== undefined);
    tok = await loadHfTokenizer(llavaDir);
  });

  it('renders every conversation from chat_template.jinja exactly, and its ids match the HF tokenizer', async () => {
    const tpl = await loadChatTemplate(llavaDir);
    expect(tpl.file).toBe(join(llavaDir, 'chat_template.jinja'));
    expect([tpl.bosToken, tpl.eosToken]).toEqual(['<s>', '</s>']);
    expect(oracles).toHaveLength(5);
    for (const [name, o] of oracles) {
      const prompt = tpl.render(o.messages!, { addGenerationPrompt: o.add_generation_prompt });
      expect(prompt, name).toBe(o.rendered_prompt);
      expect(tok.encode(prompt), name).toEqual(o.input_ids_with_bos);
    }
  });

  it('renders the same from chat_template.json and from tokenizer_config.json', async () => {
    const fromJson = JSON.parse(readFileSync(join(llavaDir, 'chat_template.json'), 'utf8')) as { chat_template: string };
    const onlyJson = await folder('llava-json', { 'chat_template.json': fromJson });
    const onlyConfig = await folder('llava-config', {
      'tokenizer_config.json': { bos_token: '<s>', eos_token: { content: '</s>' }, chat_template: fromJson.chat_template },
    });
    const a = await loadChatTemplate(onlyJson);
    const b = await loadChatTemplate(onlyConfig);
    expect(a.file).toBe(join(onlyJson, 'chat_template.json'));
    expect(b.file).toBe(join(onlyConfig, 'tokenizer_config.json'));
    expect(b.eosToken).toBe('</s>');
    for (const [name, o] of oracles) {
      expect(a.render(o.messages!, { addGenerationPrompt: true }), name).toBe(o.rendered_prompt);
      expect(b.render(o.messages!, { addGenerationPrompt: true }), name).toBe(o.rendered_prompt);
    }
  });

  it('leaves out the generation prompt unless asked', async () => {
    const tpl = await loadChatTemplate(llavaDir);
    const [, o] = oracles[0]!;
    expect(tpl.render(o.messages!)).toBe(o.rendered_prompt!.slice(0, -'ASSISTANT:'.length));
  });
});

describe.skipIf(!haveTiny)('llava-tiny-hf', () => {
  it('renders the reference prompt from chat_template.json', async () => {
    const tpl = await loadChatTemplate(tinyDir);
    const ref = JSON.parse(readFileSync(join(tinyDir, 'reference', 'expected.json'), 'utf8')) as { prompt: string; input_ids_unexpanded: number[] };
    const prompt = tpl.render(
      [{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'How does the person in this photo feel?' }] }],
      { addGenerationPrompt: true },
    );
    expect(prompt).toBe(ref.prompt);
    expect((await loadHfTokenizer(tinyDir)).encode(prompt)).toEqual(ref.input_ids_unexpanded);
  });
});

describe('chat templates', () => {
  const chatml =
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('tool messages are not supported: ' + m['content']) }}{% endif %}" +
    "<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

  it('renders string content with bos_token / eos_token and add_generation_prompt', () => {
    const messages: ChatMessage[] = [
      { role: 'system', content: 'Be kind.' },
      { role: 'user', content: 'Hi!' },
    ];
    const tpl = new ChatTemplate(chatml, { bosToken: '<s>', eosToken: '</s>' });
    expect(tpl.render(messages)).toBe('<s><|system|>\nBe kind.</s>\n<|user|>\nHi!</s>\n');
    expect(tpl.render(messages, { addGenerationPrompt: true })).toBe('<s><|system|>\nBe kind.</s>\n<|user|>\nHi!</s>\n<|assistant|>\n');
    expect(tpl.render(messages, { bosToken: '[B]', eosToken: '[E]' })).toBe('[B]<|system|>\nBe kind.[E]\n<|user|>\nHi![E]\n');
    // Without defaults the variables are empty strings.
    expect(renderChatTemplate(chatml, [{ role: 'user', content: 'x' }])).toBe('<|user|>\nx\n');
    // Extra variables.
    expect(renderChatTemplate('{{ greeting }} {{ messages[0].content }}', [{ role: 'user', content: 'x' }], { variables: { greeting: 'hello' } })).toBe(
      'hello x',
    );
  });

  it('turns raise_exception into an EmollmError with the template message', () => {
    const e = throws(() => renderChatTemplate(chatml, [{ role: 'tool', content: 'ls' }]));
    expect(e.code).toBe('ERR_INVALID_ARGUMENT');
    expect(e.message).toContain('tool messages are not supported: ls');
  });

  it('does not modify the caller messages', () => {
    const messages: ChatMessage[] = [{ role: 'user', content: [{ type: 'text', text: 'a' }] }];
    const copy = structuredClone(messages);
    renderChatTemplate("{% for m in messages %}{{ m['content'][0]['text'] }}{% endfor %}", messages);
    expect(messages).toEqual(copy);
  });

  it('rejects bad messages and bad templates', () => {
    expect(throws(() => renderChatTemplate(chatml, 'hi' as unknown as ChatMessage[])).code).toBe('ERR_INVALID_ARGUMENT');
    expect(throws(() => renderChatTemplate(chatml, [{ content: 'x' } as unknown as ChatMessage])).code).toBe('ERR_INVALID_ARGUMENT');
    expect(throws(() => renderChatTemplate(chatml, [{ role: 'user', content: [{ type: 'text' }] }])).code).toBe('ERR_INVALID_ARGUMENT');
    const bad = throws(() => new ChatTemplate('{% for m in messages %}', { file: 'x.jinja' }));
    expect(bad.code).toBe('ERR_MALFORMED_FILE');
    expect(bad.file).toBe('x.jinja');
  });

  it('loads named templates from tokenizer_config.json', async () => {
    const d = await folder('named', {
      'tokenizer_config.json': {
        chat_template: [
          { name: 'default', template: 'D{{ messages | length }}' },
          { name: 'tool_use', template: 'T' },
        ],
      },
    });
    expect((await loadChatTemplate(d)).render([{ role: 'user', content: 'x' }])).toBe('D1');
    expect((await loadChatTemplate(d, { name: 'tool_use' })).render([])).toBe('T');
    expect((await rejects(loadChatTemplate(d, { name: 'rag' }))).code).toBe('ERR_BAD_CONFIG');
  });

  it('prefers chat_template.jinja over chat_template.json over tokenizer_config.json', async () => {
    const d = await folder('order', {
      'chat_template.jinja': 'jinja',
      'chat_template.json': { chat_template: 'json' },
      'tokenizer_config.json': { chat_template: 'config' },
    });
    expect((await loadChatTemplate(d)).render([])).toBe('jinja');
    const e = await folder('order2', { 'chat_template.json': { chat_template: 'json' }, 'tokenizer_config.json': { chat_template: 'config' } });
    expect((await loadChatTemplate(e)).render([])).toBe('json');
    // chat_template.jinja is read with universal newlines, as Python's text mode does.
    const crlf = await folder('crlf', { 'chat_template.jinja': "{{ 'a\r\nb' }}\r\nc" });
    expect((await loadChatTemplate(crlf)).render([])).toBe('a\nb\nc');
  });

  it('reports a model without a template, and malformed template files', async () => {
    const none = await rejects(loadChatTemplate(await folder('none', { 'tokenizer_config.json': { bos_token: '<s>' } })));
    expect(none.code).toBe('ERR_UNSUPPORTED');
    expect(none.message).toContain('no chat template');
    const missing = await rejects(loadChatTemplate(join(tmp, 'missing-folder')));
    expect(missing.code).toBe('ERR_FILE_NOT_FOUND');
    expect(missing.file).toBe(join(tmp, 'missing-folder'));
    const badJson = await rejects(loadChatTemplate(await folder('badjson', { 'chat_template.json': '{"chat_template": ' })));
    expect(badJson.code).toBe('ERR_MALFORMED_FILE');
    expect(badJson.file).toBe(join(tmp, 'badjson', 'chat_template.json'));
    const noKey = await rejects(loadChatTemplate(await folder('nokey', { 'chat_template.json': { template: 'x' } })));
    expect(noKey.code).toBe('ERR_MALFORMED_FILE');
    const badSyntax = await rejects(loadChatTemplate(await folder('badsyntax', { 'chat_template.jinja': '{% if %}' })));
    expect(badSyntax.code).toBe('ERR_MALFORMED_FILE');
    expect(badSyntax.file).toBe(join(tmp, 'badsyntax', 'chat_template.jinja'));
  });
});
