import { describe, expect, it } from 'vitest';

import { classify, decodeLabel, decodeOpenEmotion, decodeScores, decodeYesNo } from '../../lib/decode_result.js';
import type { OptionScorer } from '../../lib/decode_result.js';
import {
  CANONICAL_EMOTIONS,
  EMOTION_LEXICON,
  EMOTION_TO_TAXONOMY,
  answerSpan,
  findEmotionMentions,
  mapEmotion,
  parseEmotion,
} from '../../lib/emotion_lexicon.js';
import type { CanonicalEmotion } from '../../lib/emotion_lexicon.js';
import { EmollmError } from '../../lib/errors.js';
import type { Prompt, ScoreOptions, ScoreResult } from '../../lib/model.js';
import { TAXONOMIES } from '../../lib/taxonomies.js';

/** A hand-made ScoreResult: per option, its token log-probabilities. */
function scored(options: Record<string, number[]>): ScoreResult {
  const opts = Object.entries(options).map(([option, tokenLogprobs], i) => {
    const logprob = tokenLogprobs.reduce((a, b) => a + b, 0);
    return { option, tokens: tokenLogprobs.map((_, k) => 100 * i + k), logprob, meanLogprob: logprob / tokenLogprobs.length, tokenLogprobs };
  });
  // Deliberately wrong summary fields: decodeScores must recompute from the options.
  return { options: opts, probabilities: opts.map(() => 1 / opts.length), best: opts[0]!.option, bestIndex: 0, margin: 0 };
}

describe('decodeScores', () => {
  it('softmaxes the mean log-probabilities', () => {
    const r = decodeScores(scored({ happy: [Math.log(0.6)], sad: [Math.log(0.3)], angry: [Math.log(0.1)] }), ['happy', 'sad', 'angry']);
    expect(r.label).toBe('happy');
    expect(r.distribution.happy).toBeCloseTo(0.6, 12);
    expect(r.distribution.sad).toBeCloseTo(0.3, 12);
    expect(r.distribution.angry).toBeCloseTo(0.1, 12);
    expect(r.probability).toBeCloseTo(0.6, 12);
    expect(r.margin).toBeCloseTo(0.3, 12);
    expect(Object.keys(r.distribution)).toEqual(['happy', 'sad', 'angry']);
  });

  it('length-normalises by default: a long label is not penalised for its length', () => {
    // 'ask for help': 3 tokens at -0.5 each (mean -0.5, sum -1.5); 'inform': one token at -1.
    const s = scored({ 'ask for help': [-0.5, -0.5, -0.5], inform: [-1] });
    const mean = decodeScores(s, ['ask for help', 'inform']);
    expect(mean.label).toBe('ask for help');
    const e = Math.exp(-0.5) / (Math.exp(-0.5) + Math.exp(-1));
    expect(mean.distribution['ask for help']).toBeCloseTo(e, 12);
    const sum = decodeScores(s, ['ask for help', 'inform'], { normalize: 'sum' });
    expect(sum.label).toBe('inform');
    expect(sum.distribution.inform).toBeCloseTo(Math.exp(-1) / (Math.exp(-1.5) + Math.exp(-1)), 12);
  });

  it('adds up the probabilities of options that share a label', () => {
    const s = scored({ yes: [Math.log(0.2)], Yes: [Math.log(0.35)], no: [Math.log(0.4)], No: [Math.log(0.05)] });
    const r = decodeScores(s, ['yes', 'yes', 'no', 'no']);
    expect(r.label).toBe('yes');
    expect(r.distribution.yes).toBeCloseTo(0.55, 12);
    expect(r.distribution.no).toBeCloseTo(0.45, 12);
    expect(r.margin).toBeCloseTo(0.1, 12);
    expect(Object.keys(r.distribution)).toEqual(['yes', 'no']);
  });

  it('breaks an exact tie toward the earlier label', () => {
    expect(decodeScores(scored({ a: [-1], b: [-1] }), ['a', 'b'])).toMatchObject({ label: 'a', margin: 0, probability: 0.5 });
    expect(decodeScores(scored({ b: [-1], a: [-1] }), ['b', 'a'])).toMatchObject({ label: 'b', margin: 0 });
  });

  it('gives margin 1 for a single label and probability 0 to -Infinity scores', () => {
    expect(decodeScores(scored({ only: [-3] }), ['only'])).toMatchObject({ label: 'only', probability: 1, margin: 1 });
    const r = decodeScores(scored({ a: [-Infinity], b: [-2] }), ['a', 'b']);
    expect(r.label).toBe('b');
    expect(r.distribution.a).toBe(0);
    expect(r.margin).toBe(1);
  });

  it('returns the raw ScoreResult and a distribution that sums to 1', () => {
    const s = scored({ a: [-1, -2], b: [-0.1], c: [-5, -5, -5] });
    const r = decodeScores(s, ['a', 'b', 'c']);
    expect(r.raw).toBe(s);
    expect(Object.values(r.distribution).reduce((x, y) => x + y, 0)).toBeCloseTo(1, 12);
  });

  it('rejects mismatched labels, NaN and all -Infinity scores', () => {
    expect(() => decodeScores(scored({ a: [-1], b: [-2] }), ['a'])).toThrow(EmollmError);
    expect(() => decodeScores(scored({ a: [NaN], b: [-2] }), ['a', 'b'])).toThrow(/no valid score/);
    expect(() => decodeScores(scored({ a: [-Infinity], b: [-Infinity] }), ['a', 'b'])).toThrow(/no option has a finite score/);
    expect(() => decodeScores(scored({ a: [-1] }), [''])).toThrow(EmollmError);
  });
});

describe('classify', () => {
  class FakeModel implements OptionScorer {
    calls: { prompt: Prompt; options: readonly string[]; settings: ScoreOptions | undefined }[] = [];
    constructor(private readonly lp: Record<string, number>) {}
    async scoreOptions(prompt: Prompt, options: readonly string[], settings?: ScoreOptions): Promise<ScoreResult> {
      this.calls.push({ prompt, options, settings });
      return scored(Object.fromEntries(options.map((o) => [o, [this.lp[o] ?? -10]])));
    }
  }
  const messages = [{ role: 'user', content: 'Is it sarcastic?' }];

  it('scores the labels after the messages and decodes them', async () => {
    const m = new FakeModel({ yes: Math.log(0.8), no: Math.log(0.2) });
    const r = await classify(m, messages, ['yes', 'no']);
    expect(r.label).toBe('yes');
    expect(r.distribution.yes).toBeCloseTo(0.8, 12);
    expect(r.margin).toBeCloseTo(0.6, 12);
    expect(m.calls).toHaveLength(1);
    expect(m.calls[0]!.prompt).toBe(messages);
    expect(m.calls[0]!.options).toEqual(['yes', 'no']);
    expect(m.calls[0]!.settings?.normalize).toBe('mean');
  });

  it('scores every verbalizer and sums them per label; passes the signal', async () => {
    const m = new FakeModel({ yes: Math.log(0.1), Yes: Math.log(0.5), no: Math.log(0.4) });
    const ac = new AbortController();
    const r = await classify(m, messages, ['yes', 'no'], { verbalizers: { yes: ['yes', 'Yes'] }, signal: ac.signal });
    expect(m.calls[0]!.options).toEqual(['yes', 'Yes', 'no']);
    expect(m.calls[0]!.settings?.signal).toBe(ac.signal);
    expect(r.label).toBe('yes');
    expect(r.distribution.yes).toBeCloseTo(0.6, 12);
    expect(Object.keys(r.distribution)).toEqual(['yes', 'no']);
  });

  it('rejects bad labels and an aborted signal before scoring', async () => {
    const m = new FakeModel({});
    await expect(classify(m, messages, [])).rejects.toThrow(EmollmError);
    await expect(classify(m, messages, ['a', 'a'])).rejects.toThrow(/duplicate/);
    await expect(classify(m, messages, ['a', 'b'], { verbalizers: { c: ['x'] } })).rejects.toThrow(/not a label/);
    const ac = new AbortController();
    ac.abort();
    await expect(classify(m, messages, ['a', 'b'], { signal: ac.signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(m.calls).toHaveLength(0);
  });
});

/** [text, expected canonical emotion or null for unparsed]. */
const LEXICON_CASES: [string, CanonicalEmotion | null][] = [
  // single words, inflections, case and punctuation
  ['happy', 'joy'],
  ['Happiness', 'joy'],
  ['JOYFUL!!!', 'joy'],
  ['glad.', 'joy'],
  ['"Delighted"', 'joy'],
  ['cheerful', 'joy'],
  ['angry', 'anger'],
  ['Anger.', 'anger'],
  ['furious', 'anger'],
  ['mad', 'anger'],
  ['irritated', 'anger'],
  ['annoyed', 'anger'],
  ['scared', 'fear'],
  ['afraid', 'fear'],
  ['terrified', 'fear'],
  ['fearful', 'fear'],
  ['anxious', 'fear'],
  ['worried', 'fear'],
  ['nervous', 'fear'],
  ['sad', 'sadness'],
  ['Sadness', 'sadness'],
  ['unhappy', 'sadness'],
  ['depressed', 'sadness'],
  ['sorrowful', 'sadness'],
  ['gloomy', 'sadness'],
  ['grief', 'sadness'],
  ['disgusted', 'disgust'],
  ['revolted', 'disgust'],
  ['grossed out', 'disgust'],
  ['surprised', 'surprise'],
  ['astonished', 'surprise'],
  ['amazed', 'surprise'],
  ['shocked', 'surprise'],
  ['startled', 'surprise'],
  ['calm', 'neutral'],
  ['Neutral', 'neutral'],
  ['indifferent', 'neutral'],
  ['expressionless', 'neutral'],
  ['awe', 'awe'],
  ['awestruck', 'awe'],
  ['amusement', 'amusement'],
  ['amused', 'amusement'],
  ['contentment', 'contentment'],
  ['content', 'contentment'],
  ['excitement', 'excitement'],
  ['Excited!', 'excitement'],
  ['love', 'love'],
  ['proud', 'pride'],
  ['ashamed', 'shame'],
  ['guilty', 'guilt'],
  ['embarrassed', 'embarrassment'],
  ['contempt', 'contempt'],
  ['confused', 'confusion'],
  ['bored', 'boredom'],
  ['relieved', 'relief'],
  // sentence-level answers and hedges
  ['The person appears to be quite happy.', 'joy'],
  ['She seems somewhat sad about the news.', 'sadness'],
  ['The emotion expressed is probably fear.', 'fear'],
  ['He looks absolutely furious!', 'anger'],
  ['They are in awe of the mountains.', 'awe'],
  ['The child is feeling content with her toy.', 'contentment'],
  ['The image evokes a sense of contentment and peace.', 'contentment'],
  ['The content of the image suggests sadness.', 'sadness'],
  ['I think the man is scared', 'fear'],
  ['Happy', 'joy'],
  ['She’s over the moon.', 'joy'],
  // multiple emotions: the first one wins
  ['A mix of joy and surprise.', 'joy'],
  ['Surprise, then happiness.', 'surprise'],
  // negation
  ['not happy', null],
  ['The person is not happy.', null],
  ["He isn't angry at all.", null],
  ["She doesn't seem to be scared.", null],
  ['Never sad', null],
  ['neither happy nor sad', null],
  ['without fear', null],
  ['not unhappy', null],
  ["I don't think they are happy", null],
  ['Not happy, rather sad.', 'sadness'],
  ['He is not angry but disappointed.', 'sadness'],
  ['There is no fear; she is excited.', 'excitement'],
  ['No doubt she is happy.', 'joy'],
  ['Not only happy but proud.', 'joy'],
  ['He is not angry and seems calm.', 'neutral'],
  ['She is happy rather than sad.', 'joy'],
  ['No, she is happy.', 'joy'],
  // answer markers
  ['The scene is dark and gloomy at first glance. Answer: awe', 'awe'],
  ['Reasoning: the man is frowning and looks angry.\nFinal answer: disgust', 'disgust'],
  ['Emotion: not happy', null],
  // no emotion at all
  ['', null],
  ['   ...   ', null],
  ['I cannot determine the emotion from this image.', null],
  ['The person is smiling.', null],
  ['A man is standing next to a car.', null],
  ['blue', null],
  ['The content is unclear.', null],
  ['I hope this helps!', null],
  ['no emotion', 'neutral'],
  ['The person shows no particular emotion.', 'neutral'],
];

describe('parseEmotion (lexicon)', () => {
  it('has at least 60 cases', () => {
    expect(LEXICON_CASES.length).toBeGreaterThanOrEqual(60);
  });

  it.each(LEXICON_CASES)('%j → %s', (text, expected) => {
    const r = parseEmotion(text);
    if (expected === null) expect(r.outcome).toBe('unparsed');
    else {
      expect(r.outcome).toBe('emotion');
      if (r.outcome === 'emotion') expect(r.emotion).toBe(expected);
    }
  });

  it('says why: empty, no emotion, negated (listing what was negated)', () => {
    expect(parseEmotion('  ?! ')).toMatchObject({ outcome: 'unparsed', reason: 'empty' });
    expect(parseEmotion('A dog on a beach.')).toMatchObject({ outcome: 'unparsed', reason: 'no-emotion', negated: [] });
    expect(parseEmotion('Not happy and not angry.')).toMatchObject({ outcome: 'unparsed', reason: 'negated', negated: ['joy', 'anger'] });
  });

  it('lists every non-negated emotion in order, and the negated ones apart', () => {
    const r = parseEmotion('She is not angry; she feels sad, a little afraid, and sad again.');
    expect(r).toMatchObject({ outcome: 'emotion', emotion: 'sadness', emotions: ['sadness', 'fear'], negated: ['anger'] });
    expect(r.mentions.map((m) => [m.surface, m.negated])).toEqual([
      ['angry', true],
      ['sad', false],
      ['afraid', false],
      ['sad', false],
    ]);
  });

  it('reports hedges and exact offsets', () => {
    const text = 'Answer: The woman appears DELIGHTED.';
    const r = parseEmotion(text);
    expect(r.hedged).toBe(true);
    expect(parseEmotion('delighted').hedged).toBe(false);
    const m = r.mentions[0]!;
    expect(text.slice(m.start, m.end)).toBe('DELIGHTED');
  });

  it('matches the longest phrase: "grossed out" is disgust, "no emotion" is neutral, not a negation', () => {
    expect(findEmotionMentions('totally grossed out').map((m) => m.surface)).toEqual(['grossed out']);
    expect(findEmotionMentions('no emotion, calm')).toEqual([
      expect.objectContaining({ emotion: 'neutral', surface: 'no emotion', negated: false }),
      expect.objectContaining({ emotion: 'neutral', surface: 'calm', negated: false }),
    ]);
  });

  it('answerSpan reads after the last marker only when words follow it', () => {
    expect(answerSpan('Answer: yes. Final answer: no').text.trim()).toBe('no');
    expect(answerSpan('The answer:').text).toBe('The answer:');
  });

  it('the lexicon only maps onto canonical emotions, and every canonical emotion has words', () => {
    const canon = new Set<string>(CANONICAL_EMOTIONS);
    for (const e of Object.values(EMOTION_LEXICON)) expect(canon.has(e)).toBe(true);
    for (const e of CANONICAL_EMOTIONS) expect(Object.values(EMOTION_LEXICON)).toContain(e);
  });
});

describe('mapEmotion / taxonomy tables', () => {
  it('every table maps onto labels of its taxonomy only', () => {
    for (const [id, table] of Object.entries(EMOTION_TO_TAXONOMY)) {
      const labels = TAXONOMIES[id as keyof typeof TAXONOMIES].labels;
      for (const l of Object.values(table)) expect(labels).toContain(l);
      // every label is reachable
      for (const l of labels) expect(Object.values(table)).toContain(l);
    }
  });

  it.each([
    ['joy', 'ekman7', 'joy'],
    ['amusement', 'ekman6', 'joy'],
    ['contempt', 'ekman7', 'disgust'],
    ['confusion', 'ekman7', 'surprise'],
    ['neutral', 'ekman7', 'neutral'],
    ['neutral', 'ekman6', undefined],
    ['awe', 'ekman7', undefined],
    ['joy', 'mikels8', undefined],
    ['surprise', 'mikels8', undefined],
    ['relief', 'mikels8', 'contentment'],
    ['awe', 'mikels8', 'awe'],
    ['joy', 'sentiment3', 'positive'],
    ['fear', 'sentiment2', 'negative'],
    ['surprise', 'sentiment3', undefined],
    ['neutral', 'sentiment3', 'neutral'],
    ['neutral', 'sentiment2', undefined],
  ] as const)('%s onto %s → %s', (emotion, taxonomy, label) => {
    expect(mapEmotion(emotion, taxonomy)).toBe(label);
  });

  it('tables are frozen', () => {
    expect(Object.isFrozen(EMOTION_TO_TAXONOMY)).toBe(true);
    expect(Object.isFrozen(EMOTION_TO_TAXONOMY.mikels8)).toBe(true);
    expect(Object.isFrozen(EMOTION_LEXICON)).toBe(true);
  });
});

describe('decodeOpenEmotion', () => {
  it('maps onto a taxonomy, taking the first emotion it can express', () => {
    expect(decodeOpenEmotion('The person looks happy.', { taxonomy: 'ekman7' })).toMatchObject({ outcome: 'emotion', emotion: 'joy', label: 'joy' });
    expect(decodeOpenEmotion('Joy, mostly amusement.', { taxonomy: 'mikels8' })).toMatchObject({
      outcome: 'emotion',
      emotion: 'amusement',
      emotions: ['joy', 'amusement'],
      label: 'amusement',
    });
    expect(decodeOpenEmotion('happy', { taxonomy: 'mikels8' })).toMatchObject({ outcome: 'unparsed', reason: 'unmappable' });
    expect(decodeOpenEmotion('not happy', { taxonomy: 'ekman7' })).toMatchObject({ outcome: 'unparsed', reason: 'negated' });
    expect(decodeOpenEmotion('a tree')).toMatchObject({ outcome: 'unparsed', reason: 'no-emotion' });
    const plain = decodeOpenEmotion('terrified');
    expect(plain).toMatchObject({ outcome: 'emotion', emotion: 'fear' });
    expect(plain.outcome === 'emotion' && plain.label).toBeUndefined();
  });

  it('rejects a taxonomy without an emotion mapping', () => {
    expect(() => decodeOpenEmotion('happy', { taxonomy: 'mintrec20' as never })).toThrow(EmollmError);
  });
});

describe('decodeLabel', () => {
  const mikels = TAXONOMIES.mikels8.labels;
  const intents = TAXONOMIES.mintrec20.labels;
  it.each([
    ['Amusement', mikels, 'amusement', 'label'],
    ['The answer is: awe.', mikels, 'awe', 'label'],
    ['It is not anger, but fear.', mikels, 'fear', 'label'],
    ['I would say excited.', mikels, 'excitement', 'lexicon'],
    ['Ask for help', intents, 'ask for help', 'label'],
    ['The speaker is asking... Intent: Ask for help.', intents, 'ask for help', 'label'],
    ['Complain', intents, 'complain', 'label'],
    ['joyful', ['happy', 'sad'], 'happy', 'lexicon'],
    ['Positive.', TAXONOMIES.sentiment3.labels, 'positive', 'label'],
  ] as const)('%j → %s', (text, labels, label, via) => {
    expect(decodeLabel(text, labels)).toMatchObject({ outcome: 'label', label, via });
  });

  it('uses a taxonomy mapping when the text names no label', () => {
    expect(decodeLabel('She is thrilled', TAXONOMIES.ekman7.labels, { taxonomy: 'ekman7' })).toMatchObject({ label: 'joy', via: 'lexicon' });
    expect(decodeLabel('She is thrilled', TAXONOMIES.sentiment2.labels, { taxonomy: 'sentiment2' })).toMatchObject({ label: 'positive' });
  });

  it('lists every label named, first first', () => {
    expect(decodeLabel('Either fear or sadness.', mikels)).toEqual({ outcome: 'label', label: 'fear', labels: ['fear', 'sadness'], via: 'label' });
  });

  it('is unparsed when nothing maps', () => {
    expect(decodeLabel('', mikels)).toEqual({ outcome: 'unparsed', reason: 'empty' });
    expect(decodeLabel('A cat.', mikels)).toEqual({ outcome: 'unparsed', reason: 'no-label' });
    expect(decodeLabel('Not anger.', mikels)).toEqual({ outcome: 'unparsed', reason: 'negated' });
    expect(decodeLabel('Happy', mikels)).toEqual({ outcome: 'unparsed', reason: 'unmappable' });
  });
});

describe('decodeYesNo', () => {
  it.each([
    ['Yes', 'yes'],
    ['yes.', 'yes'],
    ['Yeah, definitely.', 'yes'],
    ['Yep', 'yes'],
    ['Absolutely.', 'yes'],
    ['It is sarcastic.', 'yes'],
    ['The post is clearly sarcastic given the rainy photo.', 'yes'],
    ['This meme is hateful toward immigrants.', 'yes'],
    ['The meme is funny.', 'yes'],
    ['It is not sincere at all.', 'yes'],
    ['The answer is yes.', 'yes'],
    ['Answer: Yes', 'yes'],
    ['It is.', 'yes'],
    ['No', 'no'],
    ['no.', 'no'],
    ['Nope.', 'no'],
    ['Definitely not.', 'no'],
    ['Not sarcastic.', 'no'],
    ["It isn't sarcastic.", 'no'],
    ['The text is sincere.', 'no'],
    ['This is not hateful; it is a harmless joke.', 'no'],
    ["It isn't.", 'no'],
    ['Reasoning: the caption praises the sunny day and the image is sunny. Answer: no', 'no'],
  ] as const)('%j → %s', (text, label) => {
    const task = /hateful|harmless/.test(text) ? 'hate' : undefined;
    expect(decodeYesNo(text, task ? { task } : {})).toMatchObject({ outcome: 'label', label });
  });

  it.each([
    ['', 'empty'],
    ['Yes and no.', 'ambiguous'],
    ["It's hard to say.", 'uncertain'],
    ['I am not sure whether it is sarcastic.', 'uncertain'],
    ['The image shows a beach.', 'no-answer'],
    ['It is sarcastic, but also sincere.', 'ambiguous'],
  ] as const)('%j → unparsed (%s)', (text, reason) => {
    expect(decodeYesNo(text)).toEqual({ outcome: 'unparsed', reason });
  });

  it('counts only the given task’s attribute words', () => {
    expect(decodeYesNo('It is a joke, not hateful.', { task: 'hate' })).toMatchObject({ label: 'no' });
    expect(decodeYesNo('It is a joke, not hateful.')).toEqual({ outcome: 'unparsed', reason: 'ambiguous' });
    expect(decodeYesNo('It is a joke.', { task: 'humor' })).toMatchObject({ label: 'yes', evidence: 'attribute' });
  });
});
