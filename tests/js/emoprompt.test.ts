import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { describe, expect, it } from 'vitest';

import {
  EMOPROMPT_TEMPLATE_IDS,
  EMOPROMPT_VERSION,
  EMO_TASKS,
  GUIDANCE_LEVELS,
  buildEmoPrompt,
  emoPromptMessages,
} from '../../lib/emoprompt.js';
import type { EmoPromptOptions, EmoTask } from '../../lib/emoprompt.js';
import { EmollmError } from '../../lib/errors.js';
import { MIKELS8, MINTREC20, TAXONOMIES, findLabel, getTaxonomy } from '../../lib/taxonomies.js';

/** One representative input per task (the image is a placeholder path; the builder never reads it). */
const INPUTS: Record<EmoTask, Omit<EmoPromptOptions, 'guidance'>> = {
  'emo-c': { task: 'emo-c', taxonomy: 'mikels8', images: ['photo.jpg'] },
  'emo-o': { task: 'emo-o', images: ['photo.jpg'] },
  intent: {
    task: 'intent',
    images: ['f1.jpg', 'f2.jpg'],
    media: 'video',
    text: "Sorry, I'm late. The bus broke down.",
    context: ['Glenn: Where were you?'],
  },
  hate: { task: 'hate', images: ['meme.png'], text: 'look who is here', textKind: 'meme-text' },
  humor: { task: 'humor', images: ['meme.png'], text: 'me waiting for the weekend', textKind: 'meme-text' },
  sarcasm: { task: 'sarcasm', images: ['tweet.jpg'], text: 'What a lovely day for a picnic!', textKind: 'post' },
};

describe('EmoPrompt templates', () => {
  for (const task of EMO_TASKS) {
    for (const guidance of GUIDANCE_LEVELS) {
      it(`${task} × ${guidance}`, () => {
        const p = buildEmoPrompt({ ...INPUTS[task], guidance });
        expect(p.templateId).toBe(`${task}.${guidance}@${EMOPROMPT_VERSION}`);
        expect(p.text).toMatchSnapshot();
      });
    }
  }

  it('has one template id per task × guidance level, versioned', () => {
    expect(EMOPROMPT_VERSION).toBe('1.0');
    expect(EMOPROMPT_TEMPLATE_IDS).toHaveLength(18);
    expect(new Set(EMOPROMPT_TEMPLATE_IDS).size).toBe(18);
    expect(EMOPROMPT_TEMPLATE_IDS).toContain('sarcasm.brief@1.0');
  });

  it('snapshots cues, a caption, few-shot examples and the explain format together', () => {
    const p = buildEmoPrompt({
      task: 'emo-c',
      labels: ['anger', 'joy', 'sadness'],
      images: ['a.jpg'],
      text: 'Final whistle.',
      textKind: 'caption',
      cues: [
        { source: 'face', text: 'a face with a happy expression (p=0.93)' },
        { source: 'scene', text: 'a crowded stadium\nat night' },
      ],
      fewShot: [{ input: 'A man shouting at a referee, red face.', rationale: 'The frown and shouting show hostility.', answer: 'Anger' }],
      guidance: 'brief',
      explain: true,
    });
    expect(p.text).toMatchSnapshot();
  });

  it('snapshots the open-set task with an explanation requested', () => {
    expect(buildEmoPrompt({ task: 'emo-o', images: ['x.jpg'], guidance: 'none', explain: true }).text).toMatchSnapshot();
  });
});

describe('buildEmoPrompt structure', () => {
  it('puts the images first, as { type: "image", image } parts, then one text part', () => {
    const img = new Uint8Array([1, 2, 3]);
    const p = buildEmoPrompt({ task: 'sarcasm', images: [img, 'b.jpg'] });
    expect(p.messages).toHaveLength(1);
    expect(p.messages[0]!.role).toBe('user');
    const content = p.messages[0]!.content as { type: string; image?: unknown; text?: string }[];
    expect(content.map((c) => c.type)).toEqual(['image', 'image', 'text']);
    expect(content[0]!.image).toBe(img);
    expect(content[1]!.image).toBe('b.jpg');
    expect(content[2]!.text).toBe(p.text);
    expect(emoPromptMessages({ task: 'sarcasm', images: [img, 'b.jpg'] })).toEqual(p.messages);
  });

  it('is deterministic', () => {
    const o: EmoPromptOptions = { ...INPUTS.intent, cues: [{ source: 'audio', text: 'apologetic tone' }] };
    expect(buildEmoPrompt(o)).toEqual(buildEmoPrompt(o));
  });

  it('returns the labels to score', () => {
    expect(buildEmoPrompt({ task: 'emo-c', taxonomy: 'ekman7' }).labels).toEqual(TAXONOMIES.ekman7.labels);
    expect(buildEmoPrompt({ task: 'intent' }).labels).toEqual(MINTREC20.labels);
    expect(buildEmoPrompt({ task: 'hate' }).labels).toEqual(['yes', 'no']);
    expect(buildEmoPrompt({ task: 'emo-o' }).labels).toEqual([]);
    expect(buildEmoPrompt({ task: 'emo-c', labels: ['calm', 'tense'] }).labels).toEqual(['calm', 'tense']);
  });

  it('asks for one word only when every option is one word', () => {
    expect(buildEmoPrompt({ task: 'emo-c', taxonomy: 'mikels8' }).text).toContain('Answer with one word from the list.');
    expect(buildEmoPrompt({ task: 'intent' }).text).toContain('Answer with one option from the list, written exactly as it appears.');
    expect(buildEmoPrompt({ task: 'humor' }).text).toContain('Answer with yes or no.');
  });

  it('lists definitions only at full guidance, and only when every option has one', () => {
    const full = buildEmoPrompt({ task: 'emo-c', taxonomy: 'mikels8' }).text;
    expect(full).toContain(`- awe: ${MIKELS8.definitions.awe}`);
    expect(buildEmoPrompt({ task: 'emo-c', taxonomy: 'mikels8', guidance: 'brief' }).text).not.toContain('What the options mean');
    expect(buildEmoPrompt({ task: 'emo-c', taxonomy: 'mikels8', labels: ['awe', 'wonder'] }).text).not.toContain('What the options mean');
  });

  it('carries task-specific guidance', () => {
    expect(buildEmoPrompt({ task: 'sarcasm', guidance: 'brief' }).text).toContain('incongruity between what the text says');
    expect(buildEmoPrompt({ task: 'hate' }).text).toContain('demeaning intent toward the target');
    expect(buildEmoPrompt({ task: 'humor' }).text).toContain('exaggeration');
    expect(buildEmoPrompt({ task: 'intent', guidance: 'brief' }).text).toContain('what the speaker wants to achieve');
    expect(buildEmoPrompt({ task: 'emo-o', guidance: 'none' }).text).not.toContain('Consider');
  });

  it('omits empty sections', () => {
    const p = buildEmoPrompt({ task: 'emo-o', guidance: 'none', text: '   ', cues: [], context: [], fewShot: [] });
    expect(p.text).toBe('Question: What emotion does this image convey?\nAnswer with one word that names the emotion.');
  });

  it('rejects bad options with ERR_INVALID_ARGUMENT', () => {
    const bad: unknown[] = [
      { task: 'emotion' },
      { task: 'emo-c' },
      { task: 'emo-c', labels: ['a'] },
      { task: 'emo-c', labels: ['a', 'A'] },
      { task: 'emo-c', labels: ['a', ''] },
      { task: 'emo-o', labels: ['a', 'b'] },
      { task: 'sarcasm', labels: ['yes', 'no'] },
      { task: 'emo-c', taxonomy: 'plutchik' },
      { task: 'hate', guidance: 'long' },
      { task: 'hate', media: 'audio' },
      { task: 'hate', textKind: 'tweet', text: 'x' },
      { task: 'hate', cues: [{ source: 'face' }] },
      { task: 'hate', cues: [{ source: '', text: 'x' }] },
      { task: 'hate', fewShot: [{ input: 'x', rationale: 'y', answer: 'maybe' }] },
      { task: 'intent', fewShot: [{ input: 'x', rationale: 'y', answer: 'shout' }] },
      { task: 'hate', images: [null] },
      { task: 'hate', question: '  ' },
    ];
    for (const o of bad) {
      expect(() => buildEmoPrompt(o as EmoPromptOptions), JSON.stringify(o)).toThrow(EmollmError);
      try {
        buildEmoPrompt(o as EmoPromptOptions);
      } catch (e) {
        expect((e as EmollmError).code).toBe('ERR_INVALID_ARGUMENT');
      }
    }
  });
});

describe('taxonomies', () => {
  it('has the label sets of the sources', () => {
    expect(TAXONOMIES.mikels8.labels).toEqual(['amusement', 'awe', 'contentment', 'excitement', 'anger', 'disgust', 'fear', 'sadness']);
    expect(TAXONOMIES.ekman6.labels).toEqual(['anger', 'disgust', 'fear', 'joy', 'sadness', 'surprise']);
    expect(TAXONOMIES.ekman7.labels).toEqual(['anger', 'disgust', 'fear', 'joy', 'neutral', 'sadness', 'surprise']);
    expect(TAXONOMIES.sentiment2.labels).toEqual(['positive', 'negative']);
    expect(TAXONOMIES.sentiment3.labels).toEqual(['positive', 'neutral', 'negative']);
    for (const t of ['hate', 'humor', 'sarcasm'] as const) expect(TAXONOMIES[t].labels).toEqual(['yes', 'no']);
  });

  it("MIntRec's 20 intents, spelled as the dataset spells them", () => {
    expect(MINTREC20.labels).toHaveLength(20);
    expect(MINTREC20.labels).toContain('apologise');
    expect(MINTREC20.labels).toContain('criticize');
    expect(MINTREC20.labels).toContain('ask for help');
    // The dataset's TSV label column (capitalised), in the paper's order.
    const tsv = ['Complain', 'Praise', 'Apologise', 'Thank', 'Criticize', 'Care', 'Agree', 'Taunt', 'Flaunt', 'Oppose', 'Joke',
      'Inform', 'Advise', 'Arrange', 'Introduce', 'Comfort', 'Leave', 'Prevent', 'Greet', 'Ask for help'];
    expect(MINTREC20.labels.map((l) => MINTREC20.datasetLabels![l])).toEqual(tsv);
    expect(MINTREC20.groups!.map((g) => g.labels.length)).toEqual([11, 9]);
    expect(findLabel('mintrec20', ' Ask for help ')).toBe('ask for help');
    expect(findLabel('mintrec20', 'ASK  FOR HELP.')).toBe('ask for help');
    expect(findLabel('mintrec20', 'help')).toBeUndefined();
  });

  const mintrecDir = join(resolve(process.env.EMOLLM_SHARED_DIR ?? join(__dirname, '..', '..', '..', 'shared')), 'data', 'MIntRec', 'data', 'MIntRec');
  it.skipIf(!existsSync(join(mintrecDir, 'test.tsv')))('matches the label column of the MIntRec TSV files in shared/data', () => {
    const found = new Set<string>();
    for (const split of ['train', 'dev', 'test']) {
      const rows = readFileSync(join(mintrecDir, `${split}.tsv`), 'utf8').split('\n').slice(1).filter((r) => r.trim() !== '');
      for (const r of rows) found.add(r.split('\t').at(-1)!.trim());
    }
    expect([...found].sort()).toEqual(Object.values(MINTREC20.datasetLabels!).sort());
  });

  it('every label has a one-line definition', () => {
    for (const t of Object.values(TAXONOMIES)) {
      expect(Object.keys(t.definitions)).toEqual([...t.labels]);
      for (const d of Object.values(t.definitions)) {
        expect(d.length).toBeGreaterThan(10);
        expect(d).not.toMatch(/\n/);
      }
    }
  });

  it('is frozen', () => {
    expect(Object.isFrozen(TAXONOMIES)).toBe(true);
    expect(Object.isFrozen(MIKELS8.labels)).toBe(true);
    expect(Object.isFrozen(MIKELS8.definitions)).toBe(true);
    expect(Object.isFrozen(MINTREC20.groups![0]!.labels)).toBe(true);
    expect(() => (MIKELS8.labels as string[]).push('x')).toThrow();
  });

  it('getTaxonomy resolves ids and rejects unknown ones', () => {
    expect(getTaxonomy('ekman7')).toBe(TAXONOMIES.ekman7);
    expect(getTaxonomy(MIKELS8)).toBe(MIKELS8);
    expect(() => getTaxonomy('plutchik' as never)).toThrow(EmollmError);
  });
});
