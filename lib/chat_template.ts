/**
 * Chat templates: the Jinja templates Hugging Face models ship to turn a conversation into a
 * prompt, rendered with `@huggingface/jinja` the way transformers' `apply_chat_template` does
 * (`trim_blocks`, `lstrip_blocks`, variables `messages`, `add_generation_prompt`, `bos_token`,
 * `eos_token`, the functions `raise_exception` and `strftime_now`, and `{% generation %}` blocks,
 * which render their content unchanged).
 *
 * A model folder's template is looked up as transformers does: `chat_template.jinja`, then
 * `chat_template.json` (`{"chat_template": "..."}`), then the `chat_template` of
 * `tokenizer_config.json` (a string, or a list of `{name, template}` of which `"default"` or the
 * one asked for is used).
 *
 * @example
 * ```ts
 * const tpl = await loadChatTemplate('llava-1.5-7b-hf');
 * tpl.render([{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'What is shown?' }] }],
 *            { addGenerationPrompt: true });
 * // 'USER: <image>\nWhat is shown? ASSISTANT:'
 * ```
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';

import { Template } from '@huggingface/jinja';

import { EmollmError } from './errors.js';
import { DEFAULT_MAX_JSON_BYTES } from './limits.js';
import { readRegularTextFile } from './safe_fs.js';

/** A text part of a message. */
export interface ChatTextPart {
  type: 'text';
  text: string;
}

/** An image part of a message (templates emit the model's image placeholder for it, e.g. `<image>`). */
export interface ChatImagePart {
  type: 'image';
  [key: string]: unknown;
}

/** A part of a message's content. Templates may know other part types (`video`, `audio`, ...). */
export type ChatContentPart = ChatTextPart | ChatImagePart | { type: string; [key: string]: unknown };

/** One message of a conversation. */
export interface ChatMessage {
  /** `"system"`, `"user"`, `"assistant"` (templates may accept others, e.g. `"tool"`). */
  role: string;
  /** Plain text, or parts (llava's template expects parts: `[{type:'image'}, {type:'text', text}]`). */
  content: string | ChatContentPart[];
  /** Other fields are passed to the template unchanged. */
  [key: string]: unknown;
}

/** Options of {@link ChatTemplate.render}. */
export interface ChatRenderOptions {
  /** End with the opening of an assistant turn (llava: `"ASSISTANT:"`). Default false. */
  addGenerationPrompt?: boolean;
  /** `bos_token` variable. Default: the model's (tokenizer_config.json / special_tokens_map.json). */
  bosToken?: string;
  /** `eos_token` variable. Default: the model's. */
  eosToken?: string;
  /** More template variables (`tools`, `documents`, ...); they override the ones above. */
  variables?: Record<string, unknown>;
}

/** Where a template came from. */
export interface ChatTemplateSource {
  /** The file it was read from, when there is one. */
  file?: string;
  /** Default `bos_token`. */
  bosToken?: string;
  /** Default `eos_token`. */
  eosToken?: string;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  return undefined;
}

function checkMessages(messages: unknown): asserts messages is ChatMessage[] {
  if (!Array.isArray(messages)) throw new EmollmError('ERR_INVALID_ARGUMENT', 'messages must be an array');
  messages.forEach((m, i) => {
    if (!isObject(m)) throw new EmollmError('ERR_INVALID_ARGUMENT', `messages[${i}] is not an object`);
    if (typeof m.role !== 'string') throw new EmollmError('ERR_INVALID_ARGUMENT', `messages[${i}].role must be a string`);
    const c = m.content;
    if (typeof c === 'string' || c === null || c === undefined) return;
    if (!Array.isArray(c)) throw new EmollmError('ERR_INVALID_ARGUMENT', `messages[${i}].content must be a string or an array of parts`);
    c.forEach((p, j) => {
      if (!isObject(p) || typeof p.type !== 'string')
        throw new EmollmError('ERR_INVALID_ARGUMENT', `messages[${i}].content[${j}] must be an object with a string "type"`);
      if (p.type === 'text' && typeof p.text !== 'string')
        throw new EmollmError('ERR_INVALID_ARGUMENT', `messages[${i}].content[${j}] is a text part without a string "text"`);
    });
  });
}

/** The variable holding our raise_exception. */
const RAISE = '__emollm_raise_exception';

/** Marks errors thrown by the template's `raise_exception`. */
class TemplateException extends Error {}

/** A compiled chat template. */
export class ChatTemplate {
  /** The Jinja source. */
  readonly template: string;
  /** The file it came from, when known. */
  readonly file: string | undefined;
  /** Default `bos_token`. */
  readonly bosToken: string | undefined;
  /** Default `eos_token`. */
  readonly eosToken: string | undefined;
  private readonly compiled: Template;

  /** Compiles `template`; a syntax error is `ERR_MALFORMED_FILE` (naming `source.file`). */
  constructor(template: string, source: ChatTemplateSource = {}) {
    if (typeof template !== 'string') throw new EmollmError('ERR_INVALID_ARGUMENT', 'template must be a string');
    this.template = template;
    this.file = source.file;
    this.bosToken = source.bosToken;
    this.eosToken = source.eosToken;
    try {
      this.compiled = new Template(template);
      // The library's global raise_exception cannot be replaced through render() variables, so the
      // program starts with `{% set raise_exception = <ours> %}` (an AST node: no whitespace effect).
      this.compiled.parsed.body.unshift(...new Template(`{% set raise_exception = ${RAISE} %}`).parsed.body);
    } catch (cause) {
      throw new EmollmError(
        'ERR_MALFORMED_FILE',
        `${source.file ?? 'chat template'}: the chat template does not parse: ${(cause as Error).message ?? String(cause)}`,
        { file: source.file, cause },
      );
    }
  }

  /**
   * Renders a conversation. A `raise_exception(msg)` in the template (e.g. "Conversation roles
   * must alternate") and any other template failure are `ERR_INVALID_ARGUMENT` errors carrying the
   * template's message.
   */
  render(messages: readonly ChatMessage[], options: ChatRenderOptions = {}): string {
    checkMessages(messages);
    const vars: Record<string, unknown> = {
      messages: structuredClone(messages),
      add_generation_prompt: options.addGenerationPrompt ?? false,
      bos_token: options.bosToken ?? this.bosToken ?? '',
      eos_token: options.eosToken ?? this.eosToken ?? '',
      [RAISE]: (message: unknown) => {
        throw new TemplateException(String(message));
      },
      ...options.variables,
    };
    try {
      return this.compiled.render(vars);
    } catch (cause) {
      if (cause instanceof TemplateException)
        throw new EmollmError('ERR_INVALID_ARGUMENT', `chat template: ${cause.message}`, { file: this.file, cause });
      throw new EmollmError('ERR_INVALID_ARGUMENT', `chat template failed: ${(cause as Error).message ?? String(cause)}`, {
        file: this.file,
        cause,
      });
    }
  }
}

/** Renders a template source once. See {@link ChatTemplate.render}. */
export function renderChatTemplate(template: string, messages: readonly ChatMessage[], options: ChatRenderOptions = {}): string {
  return new ChatTemplate(template).render(messages, options);
}

async function readText(path: string): Promise<string | undefined> {
  try {
    // a regular file only: a FIFO named chat_template.jinja would block the read forever
    return await readRegularTextFile(path, { maxBytes: DEFAULT_MAX_JSON_BYTES });
  } catch (e) {
    const cause = e instanceof EmollmError ? e.cause : e;
    if ((cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return undefined;
    if (e instanceof EmollmError && e.code !== 'ERR_FILE_NOT_FOUND') throw e;
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${path}: cannot read (${(cause as Error).message})`, { file: path, cause });
  }
}

function parseJson(path: string, text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (cause) {
    throw new EmollmError('ERR_MALFORMED_FILE', `${path}: not valid JSON (${(cause as Error).message})`, { file: path, cause });
  }
}

/** Options of {@link loadChatTemplate}. */
export interface LoadChatTemplateOptions {
  /** For tokenizer_config.json holding a list of named templates: which one. Default `"default"`. */
  name?: string;
}

/**
 * Loads a model folder's chat template (see the module comment for the lookup order), with the
 * model's `bos_token` / `eos_token` as defaults. A folder without one is
 * `EmollmError('ERR_UNSUPPORTED')`; a missing folder `ERR_FILE_NOT_FOUND`; a malformed file `ERR_MALFORMED_FILE`; a named template that
 * does not exist `ERR_BAD_CONFIG`.
 */
export async function loadChatTemplate(dir: string, options: LoadChatTemplateOptions = {}): Promise<ChatTemplate> {
  if (typeof dir !== 'string' || dir.length === 0) throw new EmollmError('ERR_INVALID_ARGUMENT', 'dir must be a non-empty string');
  try {
    if (!(await stat(dir)).isDirectory()) throw new Error('not a folder');
  } catch (cause) {
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${dir}: no such model folder`, { file: dir, cause });
  }
  const configPath = join(dir, 'tokenizer_config.json');
  const stmPath = join(dir, 'special_tokens_map.json');
  const jinjaPath = join(dir, 'chat_template.jinja');
  const jsonPath = join(dir, 'chat_template.json');
  const [configText, stmText, jinjaText, jsonText] = await Promise.all([
    readText(configPath),
    readText(stmPath),
    readText(jinjaPath),
    readText(jsonPath),
  ]);
  const config = configText === undefined ? {} : parseJson(configPath, configText);
  const stm = stmText === undefined ? {} : parseJson(stmPath, stmText);
  const pick = (key: string): string | undefined =>
    (isObject(config) ? tokenContent(config[key]) : undefined) ?? (isObject(stm) ? tokenContent(stm[key]) : undefined);
  const defaults = { bosToken: pick('bos_token'), eosToken: pick('eos_token') };

  // transformers reads chat_template.jinja in Python text mode: universal newlines (CRLF, CR → LF).
  if (jinjaText !== undefined) return new ChatTemplate(jinjaText.replace(/\r\n?/g, '\n'), { file: jinjaPath, ...defaults });
  if (jsonText !== undefined) {
    const j = parseJson(jsonPath, jsonText);
    if (!isObject(j) || typeof j.chat_template !== 'string')
      throw new EmollmError('ERR_MALFORMED_FILE', `${jsonPath}: no "chat_template" string`, { file: jsonPath });
    return new ChatTemplate(j.chat_template, { file: jsonPath, ...defaults });
  }
  const t = isObject(config) ? config.chat_template : undefined;
  if (typeof t === 'string') return new ChatTemplate(t, { file: configPath, ...defaults });
  if (Array.isArray(t)) {
    const name = options.name ?? 'default';
    const entry = t.find((e) => isObject(e) && e.name === name);
    if (!isObject(entry) || typeof entry.template !== 'string') {
      const names = t.map((e) => (isObject(e) ? String(e.name) : '?')).join(', ');
      throw new EmollmError('ERR_BAD_CONFIG', `${configPath}: no chat template named ${JSON.stringify(name)} (has: ${names})`, {
        file: configPath,
      });
    }
    return new ChatTemplate(entry.template, { file: configPath, ...defaults });
  }
  if (t !== undefined && t !== null)
    throw new EmollmError('ERR_MALFORMED_FILE', `${configPath}: "chat_template" is neither a string nor a list`, { file: configPath });
  throw new EmollmError(
    'ERR_UNSUPPORTED',
    `${dir}: the model has no chat template (looked for chat_template.jinja, chat_template.json and "chat_template" in tokenizer_config.json); ` +
      'pass a template string to ChatTemplate / renderChatTemplate instead',
    { file: dir },
  );
}
