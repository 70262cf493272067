/**
 * EmoPrompt: task-aware prompts for the six EmoBench sub-tasks, with reasoning guidance that points
 * the model at the cues that carry emotion (facial expression, body language, scene, colour and
 * lighting, text, context) and at what the task hinges on (sarcasm: incongruity between text and
 * image; hate: a target group and demeaning intent; humour: incongruity and exaggeration; intent:
 * what the speaker wants to achieve).
 *
 * | task | EmoBench sub-task | answer |
 * |---|---|---|
 * | `emo-c` | close-set emotion recognition | one label from `labels` / `taxonomy` |
 * | `emo-o` | open-set emotion recognition | one emotion word (decode with `decodeOpenEmotion`) |
 * | `intent` | intent understanding | one of MIntRec's 20 intents (or `labels`) |
 * | `hate`, `humor`, `sarcasm` | yes/no detection | `yes` / `no` |
 *
 * The builders are pure and deterministic: the same options give the same messages, byte for byte.
 * The wording is versioned: {@link EMOPROMPT_VERSION} changes whenever any template's text changes,
 * and each prompt carries its template id (`emo-c.full@1.0`). The tests pin every task × guidance
 * level with snapshots.
 *
 * @example
 * ```ts
 * const p = buildEmoPrompt({ task: 'emo-c', taxonomy: 'mikels8', images: ['photo.jpg'],
 *   cues: [{ source: 'face', text: 'a face with a happy expression (p=0.93)' }] });
 * const r = await classify(model, p.messages, p.labels);   // r.label, r.distribution
 * ```
 */

import type { ChatContentPart, ChatMessage } from './chat_template.js';
import { EmollmError } from './errors.js';
import type { ImageInput } from './image.js';
import { getTaxonomy } from './taxonomies.js';
import type { Taxonomy, TaxonomyId } from './taxonomies.js';

/** Version of the prompt wording. Bumped whenever the text of any template changes. */
export const EMOPROMPT_VERSION = '1.0';

/** The EmoBench sub-tasks. */
export type EmoTask = 'emo-c' | 'emo-o' | 'intent' | 'hate' | 'humor' | 'sarcasm';

/** All tasks, in EmoBench's order. */
export const EMO_TASKS: readonly EmoTask[] = Object.freeze(['emo-c', 'emo-o', 'intent', 'hate', 'humor', 'sarcasm'] as const);

/** How much reasoning guidance the prompt carries. */
export type GuidanceLevel = 'none' | 'brief' | 'full';

/** All guidance levels. */
export const GUIDANCE_LEVELS: readonly GuidanceLevel[] = Object.freeze(['none', 'brief', 'full'] as const);

/** Kinds of accompanying text; each has its own heading in the prompt. */
export type TextKind = 'caption' | 'utterance' | 'meme-text' | 'post' | 'text';

/**
 * An observation from a perception module (face expression classifier, OCR, captioner, audio
 * model, ...), stated in the prompt as such. `text` is shown as given (on one line), so include a
 * confidence in it if you want the model to see one: `'a face with a happy expression (p=0.93)'`.
 */
export interface PerceptionCue {
  /** What produced it: `'face'`, `'body'`, `'scene'`, `'ocr'`, `'audio'`, ... */
  source: string;
  text: string;
}

/** A worked example shown before the question. */
export interface FewShotExample {
  /** A description of the example's input (there is no image for it). */
  input: string;
  /** Why the answer follows. */
  rationale: string;
  /** The answer: one of the prompt's labels (any emotion word for `emo-o`). */
  answer: string;
}

/** Options of {@link buildEmoPrompt}. */
export interface EmoPromptOptions {
  task: EmoTask;
  /** The images (or video frames, in order); each becomes a `{ type: 'image', image }` part. */
  images?: readonly ImageInput[];
  /** What the images are: one still image (default) or frames of one video clip. */
  media?: 'image' | 'video';
  /**
   * With `media: 'video'`: send the frames as ONE `{ type: 'video', frames }` part (models with
   * native video input, e.g. Qwen2-VL) instead of one image part per frame. Default false.
   */
  nativeVideo?: boolean;
  /** `emo-c` / `intent`: the options. Default: the taxonomy's labels. */
  labels?: readonly string[];
  /** `emo-c` / `intent`: a taxonomy (its labels, and at `full` guidance its definitions). Intent defaults to `mintrec20`. */
  taxonomy?: TaxonomyId | Taxonomy;
  /** Accompanying text: a caption, the utterance, the meme's text, a post. */
  text?: string;
  /** What `text` is; sets its heading. Default `'utterance'` for `intent`, else `'text'`. */
  textKind?: TextKind;
  /** Dialogue context: earlier turns, oldest first (e.g. `'Ross: Hi.'`). */
  context?: readonly string[];
  /** Replaces the task's default question. */
  question?: string;
  /** Default `'full'`. */
  guidance?: GuidanceLevel;
  /** Worked examples with rationales. */
  fewShot?: readonly FewShotExample[];
  /** Observations from perception modules. */
  cues?: readonly PerceptionCue[];
  /**
   * Ask for a short explanation followed by a final line `Answer: <answer>` (for generation;
   * the decoders read the text after the last `Answer:`). Default false: the answer alone, which
   * is what option scoring (`classify`) expects.
   */
  explain?: boolean;
}

/** A built prompt. */
export interface EmoPrompt {
  version: string;
  /** `<task>.<guidance>@<version>`, e.g. `emo-c.full@1.0`. */
  templateId: string;
  task: EmoTask;
  guidance: GuidanceLevel;
  /** The answer labels to score (`emo-c`, `intent`: the options; yes/no tasks: `['yes', 'no']`; `emo-o`: none). */
  labels: readonly string[];
  /** The conversation: one user message, images first, then the text. */
  messages: ChatMessage[];
  /** The text part of the user message. */
  text: string;
}

/** The template id of a task at a guidance level. */
export function emoPromptTemplateId(task: EmoTask, guidance: GuidanceLevel): string {
  return `${task}.${guidance}@${EMOPROMPT_VERSION}`;
}

/** Every template id of this version. */
export const EMOPROMPT_TEMPLATE_IDS: readonly string[] = Object.freeze(
  EMO_TASKS.flatMap((t) => GUIDANCE_LEVELS.map((g) => emoPromptTemplateId(t, g))),
);

const YES_NO_TASKS = new Set<EmoTask>(['hate', 'humor', 'sarcasm']);

const TEXT_HEADINGS: Record<TextKind, string> = {
  caption: 'Caption',
  utterance: 'Utterance',
  'meme-text': 'Text in the meme',
  post: 'Post text',
  text: 'Text',
};

function bad(message: string): EmollmError {
  return new EmollmError('ERR_INVALID_ARGUMENT', `buildEmoPrompt: ${message}`);
}

/** One line: trimmed, every run of whitespace (newlines included) made one space. */
function oneLine(s: string): string {
  return s.replace(/\s+/g, ' ').trim();
}

function nonEmpty(value: unknown, what: string): string {
  if (typeof value !== 'string') throw bad(`${what} must be a string`);
  const s = oneLine(value);
  if (s === '') throw bad(`${what} must not be empty`);
  return s;
}

/** The general cue list of `full` guidance. */
function cueGuidance(media: 'image' | 'video'): string[] {
  const where = media === 'video' ? 'video' : 'image';
  return [
    'How to reason about emotion:',
    media === 'video'
      ? '- Facial expression: the eyes, brows and mouth, how intense the expression is, and how it changes across the frames.'
      : '- Facial expression: the eyes, brows and mouth, and how intense the expression is.',
    '- Body language: posture, gestures and movement.',
    `- Scene: the setting, objects, events and other people in the ${where}.`,
    '- Colour and lighting: warm or cold tones, brightness and contrast set a mood.',
    `- Text: any words written in the ${where} or given with it, and their tone.`,
    '- Context: what is happening and what led up to it.',
    'Weigh the cues together; when they disagree, trust the most direct evidence of feeling.',
  ];
}

const BRIEF_CUES = 'Consider the cues that carry emotion: facial expression, body language, scene, colour and lighting, text, and context.';

function taskFocus(task: EmoTask, level: 'brief' | 'full', media: 'image' | 'video'): string {
  const where = media === 'video' ? 'video' : 'image';
  if (level === 'brief') {
    switch (task) {
      case 'emo-c':
        return 'Choose the emotion that dominates.';
      case 'emo-o':
        return 'Name the emotion that dominates.';
      case 'intent':
        return 'Focus on what the speaker wants to achieve, not only on how they feel.';
      case 'hate':
        return 'Identify who is targeted and whether they are demeaned for who they are.';
      case 'humor':
        return 'Look for incongruity or exaggeration that is meant to amuse.';
      case 'sarcasm':
        return `Look for incongruity between what the text says and what the ${where} or situation shows.`;
    }
  }
  switch (task) {
    case 'emo-c':
      return `For this task: decide which listed emotion the ${where} conveys most strongly; if several fit, choose the dominant one.`;
    case 'emo-o':
      return `For this task: name the single emotion the ${where} conveys most strongly, as precisely as the evidence allows.`;
    case 'intent':
      return (
        'For this task: focus on what the speaker wants to achieve with the utterance, the effect or response they seek from the listener, ' +
        'not only on how they feel. Tone, facial expression and the situation tell apart intents that share words, ' +
        'such as a joke and a taunt, or a complaint and a criticism.'
      );
    case 'hate':
      return (
        'For this task: identify who or what is targeted. Content is hateful when it attacks or demeans people for who they are ' +
        '(race, ethnicity, nationality, religion, gender, sexual orientation, disability), through slurs, dehumanising comparisons, ' +
        'stereotypes, mockery, or calls for exclusion or harm. Mentioning a group, or being rude in general, is not enough: ' +
        'look for demeaning intent toward the target.'
      );
    case 'humor':
      return (
        `For this task: look for incongruity between the ${where} and its text, exaggeration, absurdity, wordplay or an unexpected twist, ` +
        'and decide whether the content is meant to amuse.'
      );
    case 'sarcasm':
      return (
        `For this task: compare the literal meaning of the text with what the ${where} or situation shows. Sarcasm says the opposite ` +
        'of what is meant, often praise for something plainly bad or exaggerated enthusiasm in a negative situation, to mock or criticise. ' +
        'Incongruity between text and image, and an exaggerated or flat tone, are the main signs.'
      );
  }
}

function defaultQuestion(task: EmoTask, media: 'image' | 'video', hasText: boolean, textKind: TextKind): string {
  const where = media === 'video' ? 'video' : 'image';
  const yesNoSubject = textKind === 'utterance' && hasText ? 'the utterance' : hasText ? `the ${where}, together with its text,` : `this ${where}`;
  switch (task) {
    case 'emo-c':
      return `Which emotion does this ${where} convey?`;
    case 'emo-o':
      return `What emotion does this ${where} convey?`;
    case 'intent':
      return hasText ? 'What does the speaker intend with this utterance?' : `What does the speaker in this ${where} intend?`;
    case 'hate':
      return `Is ${yesNoSubject} hateful?`;
    case 'humor':
      return `Is ${yesNoSubject} humorous?`;
    case 'sarcasm':
      return `Is ${yesNoSubject} sarcastic?`;
  }
}

function resolveLabels(o: EmoPromptOptions): { labels: string[]; taxonomy: Taxonomy | undefined } {
  const { task } = o;
  if (YES_NO_TASKS.has(task)) {
    if (o.labels !== undefined || o.taxonomy !== undefined) throw bad(`${task} is a yes/no task: it takes no labels or taxonomy`);
    return { labels: ['yes', 'no'], taxonomy: getTaxonomy(task as TaxonomyId) };
  }
  if (task === 'emo-o') {
    if (o.labels !== undefined || o.taxonomy !== undefined) throw bad('emo-o is open-set: it takes no labels or taxonomy (use emo-c)');
    return { labels: [], taxonomy: undefined };
  }
  const taxonomy = o.taxonomy !== undefined ? getTaxonomy(o.taxonomy) : task === 'intent' ? getTaxonomy('mintrec20') : undefined;
  let labels: string[];
  if (o.labels !== undefined) {
    if (!Array.isArray(o.labels)) throw bad('labels must be an array of strings');
    labels = o.labels.map((l, i) => nonEmpty(l, `labels[${i}]`));
  } else if (taxonomy) {
    labels = [...taxonomy.labels];
  } else {
    throw bad('emo-c needs labels or a taxonomy');
  }
  if (labels.length < 2) throw bad(`${task} needs at least two labels`);
  const seen = new Set<string>();
  for (const l of labels) {
    if (seen.has(l.toLowerCase())) throw bad(`duplicate label ${JSON.stringify(l)}`);
    seen.add(l.toLowerCase());
  }
  return { labels, taxonomy };
}

/**
 * Builds the prompt of an EmoBench sub-task: one user message holding the images (as
 * `{ type: 'image', image }` parts) and the text, laid out as: perception cues, accompanying text
 * (dialogue context, then the caption / utterance / meme text), worked examples, reasoning guidance,
 * the question, the options, the answer format. Bad options are `ERR_INVALID_ARGUMENT`.
 */
export function buildEmoPrompt(options: EmoPromptOptions): EmoPrompt {
  if (typeof options !== 'object' || options === null) throw bad('options must be an object');
  const o = options;
  if (!EMO_TASKS.includes(o.task)) throw bad(`unknown task ${JSON.stringify(o.task)} (known: ${EMO_TASKS.join(', ')})`);
  const guidance = o.guidance ?? 'full';
  if (!GUIDANCE_LEVELS.includes(guidance)) throw bad(`guidance must be one of ${GUIDANCE_LEVELS.join(', ')}`);
  const media = o.media ?? 'image';
  if (media !== 'image' && media !== 'video') throw bad("media must be 'image' or 'video'");
  const textKind: TextKind = o.textKind ?? (o.task === 'intent' ? 'utterance' : 'text');
  if (!Object.prototype.hasOwnProperty.call(TEXT_HEADINGS, textKind)) throw bad(`unknown textKind ${JSON.stringify(textKind)}`);
  const images = o.images ?? [];
  if (!Array.isArray(images)) throw bad('images must be an array');
  images.forEach((img, i) => {
    if (img === undefined || img === null) throw bad(`images[${i}] is missing`);
  });

  const { labels, taxonomy } = resolveLabels(o);
  const yesNo = YES_NO_TASKS.has(o.task);
  const closed = o.task === 'emo-c' || o.task === 'intent';
  const sections: string[] = [];

  const asVideo = media === 'video' && o.nativeVideo === true && images.length > 0;
  if (asVideo) sections.push('The input is a video clip.');
  else if (media === 'video' && images.length > 1) sections.push('The images are frames of one video clip, in order.');

  if (o.cues !== undefined) {
    if (!Array.isArray(o.cues)) throw bad('cues must be an array');
    if (o.cues.length > 0) {
      const lines = o.cues.map((c, i) => {
        if (typeof c !== 'object' || c === null) throw bad(`cues[${i}] must be { source, text }`);
        return `- ${nonEmpty(c.source, `cues[${i}].source`)}: ${nonEmpty(c.text, `cues[${i}].text`)}`;
      });
      sections.push(['Observations from perception modules (automatic, and possibly wrong):', ...lines].join('\n'));
    }
  }

  if (o.context !== undefined) {
    if (!Array.isArray(o.context)) throw bad('context must be an array of strings');
    const turns = o.context.map((t, i) => nonEmpty(t, `context[${i}]`));
    if (turns.length > 0) sections.push(['Dialogue so far:', ...turns].join('\n'));
  }

  let hasText = false;
  if (o.text !== undefined) {
    if (typeof o.text !== 'string') throw bad('text must be a string');
    const t = oneLine(o.text);
    if (t !== '') {
      hasText = true;
      sections.push(`${TEXT_HEADINGS[textKind]}: "${t}"`);
    }
  }

  if (o.fewShot !== undefined) {
    if (!Array.isArray(o.fewShot)) throw bad('fewShot must be an array');
    if (o.fewShot.length > 0) {
      const blocks = o.fewShot.map((ex, i) => {
        if (typeof ex !== 'object' || ex === null) throw bad(`fewShot[${i}] must be { input, rationale, answer }`);
        const answer = nonEmpty(ex.answer, `fewShot[${i}].answer`);
        let shown = answer;
        if (closed || yesNo) {
          const match = labels.find((l) => l.toLowerCase() === answer.toLowerCase());
          if (match === undefined) throw bad(`fewShot[${i}].answer ${JSON.stringify(answer)} is not one of the labels`);
          shown = match;
        }
        return [
          `Example ${i + 1}`,
          `Input: ${nonEmpty(ex.input, `fewShot[${i}].input`)}`,
          `Reasoning: ${nonEmpty(ex.rationale, `fewShot[${i}].rationale`)}`,
          `Answer: ${shown}`,
        ].join('\n');
      });
      sections.push(`Worked examples:\n${blocks.join('\n\n')}`);
    }
  }

  if (guidance === 'brief') {
    sections.push(`${BRIEF_CUES} ${taskFocus(o.task, 'brief', media)}`);
  } else if (guidance === 'full') {
    sections.push([...cueGuidance(media), taskFocus(o.task, 'full', media)].join('\n'));
    if (closed && taxonomy) {
      const defs = labels.map((l) => [l, taxonomy.definitions[l]] as const);
      if (defs.every(([, d]) => d !== undefined)) sections.push(['What the options mean:', ...defs.map(([l, d]) => `- ${l}: ${d}`)].join('\n'));
    }
  }

  const q: string[] = [];
  q.push(`Question: ${o.question !== undefined ? nonEmpty(o.question, 'question') : defaultQuestion(o.task, media, hasText, textKind)}`);
  let format: string;
  let answerShape: string;
  if (closed) {
    q.push(`Options: ${labels.join(', ')}`);
    const oneWord = labels.every((l) => !/\s/.test(l));
    format = oneWord ? 'Answer with one word from the list.' : 'Answer with one option from the list, written exactly as it appears.';
    answerShape = '<option>';
  } else if (yesNo) {
    format = 'Answer with yes or no.';
    answerShape = 'yes or no';
  } else {
    format = 'Answer with one word that names the emotion.';
    answerShape = '<emotion>';
  }
  if (o.explain === true) {
    q.push(`Explain your reasoning in one or two sentences, then give the final answer on its own line as "Answer: ${answerShape}".`);
    q.push(`${format.replace(/^Answer with/, 'The final answer is')}`);
  } else q.push(format);
  sections.push(q.join('\n'));

  const text = sections.join('\n\n');
  const visualParts: ChatContentPart[] = asVideo ? [{ type: 'video', frames: [...images] }] : images.map((image) => ({ type: 'image', image }));
  const content: ChatContentPart[] = [...visualParts, { type: 'text', text }];
  return {
    version: EMOPROMPT_VERSION,
    templateId: emoPromptTemplateId(o.task, guidance),
    task: o.task,
    guidance,
    labels: Object.freeze([...labels]),
    messages: [{ role: 'user', content }],
    text,
  };
}

/** The messages of {@link buildEmoPrompt}. */
export function emoPromptMessages(options: EmoPromptOptions): ChatMessage[] {
  return buildEmoPrompt(options).messages;
}
