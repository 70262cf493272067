/**
 * An emotion lexicon: free text (a model's open-set answer) → canonical emotions, and canonical
 * emotions → the labels of a target taxonomy.
 *
 * {@link parseEmotion} reads words and short phrases (`happy`, `happiness`, `joyful`, `grossed out`,
 * `in awe`, `no emotion`), case- and punctuation-insensitively, anywhere in a sentence ("The person
 * appears to be quite happy."), and decides:
 *
 * - **Negation.** A mention in the scope of a negation is *negated* and never counts as that
 *   emotion: "not happy" is not joy, and it is not turned into some opposite either. Scope: a
 *   negator (`not`, `no`, `never`, `n't`, `without`, `neither`, `nor`, `hardly`, `barely`,
 *   `rather than`, `instead of`, ...) up to five words before the mention, in the same clause
 *   (punctuation, `but`, `and`, `however`, `although`, ... end a clause; `or` does not, so "not happy
 *   or excited" negates both). Idioms that are no negation (`no doubt`, `not only`, `not just`)
 *   are skipped. Words inside the lexicon (`unhappy` is sadness) are taken as they are, so "not
 *   unhappy" is a negated sadness. A text whose every mention is negated is
 *   `{ outcome: 'unparsed', reason: 'negated' }` listing them in `negated`.
 * - **Several emotions.** `emotion` is the first non-negated mention (answers name the main emotion
 *   first); `emotions` lists every non-negated one in order of first mention.
 * - **An explicit answer.** When the text has an answer marker (`Answer:`, `Final answer:`,
 *   `Emotion:`), only the text after the last one is read, so reasoning before it does not count.
 * - **Hedges** (`appears`, `seems`, `probably`, `somewhat`, ...) do not change the answer; `hedged`
 *   says one was there.
 * - Nothing found is `{ outcome: 'unparsed', reason: 'no-emotion' }` (or `'empty'`): its own
 *   outcome, never a guess. Facial descriptions (`smiling`, `crying`) are deliberately not emotions.
 *
 * {@link mapEmotion} maps canonical emotions onto `mikels8`, `ekman6`, `ekman7`, `sentiment2` and
 * `sentiment3` with explicit tables ({@link EMOTION_TO_TAXONOMY}); an emotion without a defensible
 * single target (joy onto Mikels' amusement / contentment / excitement, surprise onto a polarity) is
 * not mapped. The many-to-one folds follow GoEmotions' Ekman mapping (Demszky et al. 2020) where it
 * has the emotion.
 */

/** The canonical emotions the lexicon maps onto. */
export const CANONICAL_EMOTIONS = Object.freeze([
  // Ekman's basic six and neutral
  'joy',
  'anger',
  'fear',
  'sadness',
  'disgust',
  'surprise',
  'neutral',
  // Mikels' positive four
  'amusement',
  'awe',
  'contentment',
  'excitement',
  // others
  'love',
  'pride',
  'shame',
  'guilt',
  'embarrassment',
  'contempt',
  'confusion',
  'boredom',
  'relief',
  'gratitude',
  'hope',
  'interest',
  'envy',
  'admiration',
  'compassion',
  'nostalgia',
  'anticipation',
] as const);

/** A canonical emotion. */
export type CanonicalEmotion = (typeof CANONICAL_EMOTIONS)[number];

/** Surface forms (lower case; phrases with single spaces) of each canonical emotion. */
const SURFACES: Record<CanonicalEmotion, readonly string[]> = {
  joy: [
    'joy', 'joys', 'joyful', 'joyfully', 'joyous', 'joyousness', 'happy', 'happier', 'happiest', 'happily', 'happiness',
    'glad', 'gladly', 'gladness', 'delighted', 'delight', 'delightful', 'cheerful', 'cheerfully', 'cheerfulness', 'cheery',
    'elated', 'elation', 'ecstatic', 'ecstasy', 'euphoric', 'euphoria', 'jubilant', 'jubilation', 'blissful', 'bliss',
    'pleased', 'pleasure', 'enjoy', 'enjoys', 'enjoying', 'enjoyment', 'merry', 'gleeful', 'glee', 'over the moon',
  ],
  anger: [
    'anger', 'angry', 'angrier', 'angriest', 'angrily', 'angered', 'furious', 'furiously', 'fury', 'mad', 'irritated',
    'irritation', 'irritable', 'annoyed', 'annoyance', 'rage', 'raging', 'enraged', 'outraged', 'outrage', 'irate', 'livid',
    'hostile', 'hostility', 'frustrated', 'frustration', 'resentful', 'resentment', 'indignant', 'indignation', 'aggravated',
    'exasperated', 'exasperation', 'fed up', 'pissed off',
  ],
  fear: [
    'fear', 'fears', 'fearful', 'fearfully', 'scared', 'afraid', 'terrified', 'terror', 'frightened', 'fright', 'anxious',
    'anxiously', 'anxiety', 'worried', 'worry', 'worrying', 'nervous', 'nervously', 'nervousness', 'panic', 'panicked',
    'panicky', 'alarmed', 'alarm', 'apprehensive', 'apprehension', 'uneasy', 'unease', 'dread', 'dreading', 'horrified',
    'horror', 'tense', 'tension', 'stressed', 'stress', 'freaked out', 'on edge', 'petrified', 'threatened',
  ],
  sadness: [
    'sad', 'sadder', 'saddest', 'sadly', 'sadness', 'saddened', 'unhappy', 'unhappiness', 'depressed', 'depression',
    'depressing', 'sorrowful', 'sorrow', 'gloomy', 'gloom', 'grief', 'grieving', 'grief-stricken', 'heartbroken',
    'heartbreak', 'melancholy', 'melancholic', 'miserable', 'misery', 'despair', 'despairing', 'despondent', 'upset',
    'disappointed', 'disappointment', 'lonely', 'loneliness', 'mournful', 'mourning', 'downcast', 'dejected', 'dejection',
    'tearful', 'somber', 'sombre', 'forlorn', 'hopeless', 'hopelessness', 'feeling down', 'feels down', 'heavy-hearted',
  ],
  disgust: [
    'disgust', 'disgusted', 'disgusting', 'revolted', 'revulsion', 'revolting', 'grossed out', 'gross', 'repulsed',
    'repulsion', 'repulsive', 'repelled', 'nauseated', 'nausea', 'sickened', 'loathing', 'distaste', 'aversion',
  ],
  surprise: [
    'surprise', 'surprised', 'surprising', 'surprisingly', 'astonished', 'astonishment', 'astonishing', 'amazed',
    'amazement', 'shocked', 'shock', 'startled', 'stunned', 'taken aback', 'flabbergasted', 'dumbfounded',
  ],
  neutral: [
    'neutral', 'neutrality', 'calm', 'calmly', 'calmness', 'indifferent', 'indifference', 'expressionless', 'impassive',
    'unemotional', 'emotionless', 'deadpan', 'no emotion', 'no emotions', 'no particular emotion', 'no clear emotion',
    'no strong emotion', 'no strong emotions', 'no visible emotion', 'without emotion', 'without any emotion',
  ],
  amusement: [
    'amusement', 'amused', 'amusing', 'funny', 'humorous', 'humor', 'humour', 'hilarious', 'hilarity', 'comical',
    'comic', 'entertained', 'playful', 'playfulness', 'fun', 'mirth',
  ],
  awe: ['awe', 'awed', 'in awe', 'awestruck', 'awe-struck', 'awe-inspiring', 'wonderment', 'sense of wonder', 'reverence', 'reverent'],
  contentment: [
    'contentment', 'contented', 'satisfied', 'satisfaction', 'serene', 'serenity', 'peaceful', 'peacefulness', 'at peace',
    'relaxed', 'tranquil', 'tranquility', 'tranquillity', 'comfortable', 'cozy', 'cosy',
  ],
  excitement: [
    'excitement', 'excited', 'exciting', 'thrilled', 'thrill', 'thrilling', 'enthusiastic', 'enthusiasm', 'eager',
    'eagerness', 'exhilarated', 'exhilaration', 'exhilarating', 'pumped',
  ],
  love: ['love', 'loving', 'lovingly', 'affection', 'affectionate', 'adoration', 'adoring', 'tender', 'tenderness', 'fondness', 'romantic', 'in love'],
  pride: ['pride', 'proud', 'proudly', 'triumphant', 'triumph'],
  shame: ['shame', 'ashamed', 'shameful', 'humiliated', 'humiliation'],
  guilt: ['guilt', 'guilty', 'remorse', 'remorseful', 'regret', 'regretful'],
  embarrassment: ['embarrassment', 'embarrassed', 'embarrassing', 'awkward', 'awkwardness', 'sheepish', 'self-conscious', 'flustered'],
  contempt: ['contempt', 'contemptuous', 'scorn', 'scornful', 'disdain', 'disdainful', 'sneering'],
  confusion: ['confusion', 'confused', 'puzzled', 'perplexed', 'bewildered', 'bewilderment', 'baffled'],
  boredom: ['boredom', 'bored', 'uninterested', 'disinterested', 'apathetic', 'apathy'],
  relief: ['relief', 'relieved'],
  gratitude: ['gratitude', 'grateful', 'thankful', 'thankfulness', 'appreciative'],
  hope: ['hopeful', 'hopefulness', 'optimistic', 'optimism'],
  interest: ['interested', 'curious', 'curiosity', 'intrigued', 'fascinated', 'fascination'],
  envy: ['envy', 'envious', 'jealous', 'jealousy'],
  admiration: ['admiration', 'admiring', 'admire', 'admires'],
  compassion: ['compassion', 'compassionate', 'sympathy', 'sympathetic', 'empathy', 'empathetic', 'pity'],
  nostalgia: ['nostalgia', 'nostalgic', 'wistful', 'wistfulness'],
  anticipation: ['anticipation', 'anticipating', 'expectant', 'expectation'],
};

function buildLexicon(): Readonly<Record<string, CanonicalEmotion>> {
  const lex: Record<string, CanonicalEmotion> = Object.create(null) as Record<string, CanonicalEmotion>;
  for (const emotion of CANONICAL_EMOTIONS) {
    for (const s of SURFACES[emotion]) {
      if (lex[s] !== undefined && lex[s] !== emotion) throw new Error(`emotion lexicon: "${s}" is both ${lex[s]} and ${emotion}`);
      lex[s] = emotion;
    }
  }
  return Object.freeze(lex);
}

/** Surface form (lower case, single spaces) → canonical emotion. */
export const EMOTION_LEXICON: Readonly<Record<string, CanonicalEmotion>> = buildLexicon();

const MAX_PHRASE = Math.max(...Object.keys(EMOTION_LEXICON).map((k) => k.split(' ').length));

/** A word or punctuation token, with its offsets in the original text. */
export interface Token {
  /** Lower case; curly apostrophes made straight. */
  text: string;
  start: number;
  end: number;
  kind: 'word' | 'punct';
}

/** Words (letters, digits, inner `'` or `-`) and clause punctuation. */
export function tokenize(text: string): Token[] {
  const out: Token[] = [];
  const re = /([\p{L}\p{N}]+(?:['’\-][\p{L}\p{N}]+)*)|([.,;:!?()[\]{}"“”]|—|–)/gu;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    out.push({
      text: m[0].toLowerCase().replace(/’/g, "'"),
      start: m.index,
      end: m.index + m[0].length,
      kind: m[1] !== undefined ? 'word' : 'punct',
    });
  }
  return out;
}

const NEGATORS = new Set([
  'not', 'no', 'never', 'without', 'neither', 'nor', 'hardly', 'barely', 'scarcely', 'nothing', 'none', 'cannot', 'nobody',
  'lacks', 'lacking', 'lack', 'absent',
  // contractions typed without the apostrophe
  'dont', 'doesnt', 'didnt', 'isnt', 'arent', 'wasnt', 'werent', 'cant', 'couldnt', 'wont', 'wouldnt', 'shouldnt', 'aint', 'hasnt', 'havent',
]);
/** Two-word negators. */
const NEGATOR_PAIRS = new Set(['rather than', 'instead of', 'as opposed to', 'free of', 'devoid of']);
/** Idioms that start with a negator but negate nothing. */
const NOT_NEGATIONS: readonly (readonly string[])[] = [
  'no doubt', 'not only', 'not just', 'not merely', 'no wonder', 'nothing but', 'without doubt', 'without a doubt',
  'never been happier', 'not least',
].map((p) => p.split(' '));
/** Words that end a clause (the scope of a negation). */
const CLAUSE_BREAKS = new Set(['but', 'and', 'however', 'although', 'though', 'yet', 'while', 'whereas', 'instead', 'rather', 'because', 'since']);
const NEGATION_WINDOW = 5;

const HEDGES = new Set([
  'appears', 'appear', 'appeared', 'seems', 'seem', 'seemed', 'seemingly', 'possibly', 'possible', 'probably', 'perhaps',
  'maybe', 'likely', 'might', 'may', 'could', 'somewhat', 'slightly', 'apparently', 'suggests', 'suggest', 'suggesting',
  'presumably', 'arguably',
]);

/** Words after which `content` is the feeling (not the noun "the content of the image"). */
const CONTENT_LINKS = new Set([
  'is', 'are', 'was', 'were', 'be', 'being', 'been', 'feel', 'feels', 'felt', 'feeling', 'look', 'looks', 'looked',
  'looking', 'seem', 'seems', 'seemed', 'appear', 'appears', 'appeared', 'quite', 'very', 'rather', 'fairly', 'perfectly',
  'more', 'most', 'so', 'and', 'or', 'content', 'contented', "she's", "he's", "they're", "it's", "i'm", "you're",
]);

function isNegatorAt(tokens: readonly Token[], j: number): boolean {
  const t = tokens[j]!;
  if (t.kind !== 'word') return false;
  const next = tokens[j + 1];
  const pair = next && next.kind === 'word' ? `${t.text} ${next.text}` : '';
  for (const idiom of NOT_NEGATIONS) if (idiom.every((w, k) => tokens[j + k]?.kind === 'word' && tokens[j + k]?.text === w)) return false;
  if (NEGATOR_PAIRS.has(pair)) return true;
  const prev = tokens[j - 1];
  if (prev && prev.kind === 'word' && NEGATOR_PAIRS.has(`${prev.text} ${t.text}`)) return true;
  return NEGATORS.has(t.text) || t.text.endsWith("n't");
}

/**
 * Whether the word at `index` is in the scope of a negation: a negator at most
 * {@link NEGATION_WINDOW} words before it, with no clause break between. Tokens in `consumed`
 * (inside matched lexicon phrases such as "no emotion") are not negators.
 */
export function isNegated(tokens: readonly Token[], index: number, consumed: ReadonlySet<number> = new Set()): boolean {
  let words = 0;
  for (let j = index - 1; j >= 0 && words < NEGATION_WINDOW; j--) {
    const t = tokens[j]!;
    if (t.kind === 'punct') return false;
    if (CLAUSE_BREAKS.has(t.text)) return false;
    words++;
    if (!consumed.has(j) && isNegatorAt(tokens, j)) return true;
  }
  return false;
}

/** One mention of an emotion in a text. */
export interface EmotionMention {
  emotion: CanonicalEmotion;
  /** The matched words as written. */
  surface: string;
  /** Offsets in the text given to {@link findEmotionMentions}. */
  start: number;
  end: number;
  negated: boolean;
}

/** Every emotion mention of `text`, in order (longest phrase first at each position). */
export function findEmotionMentions(text: string): EmotionMention[] {
  const tokens = tokenize(text);
  const matches: { emotion: CanonicalEmotion; from: number; to: number }[] = [];
  const consumed = new Set<number>();
  const wordCount = tokens.filter((t) => t.kind === 'word').length;
  for (let i = 0; i < tokens.length; ) {
    let found: { emotion: CanonicalEmotion; to: number } | undefined;
    for (let n = Math.min(MAX_PHRASE, tokens.length - i); n >= 1 && !found; n--) {
      const span = tokens.slice(i, i + n);
      if (span.some((t) => t.kind !== 'word')) continue;
      const e = EMOTION_LEXICON[span.map((t) => t.text).join(' ')];
      if (e !== undefined) found = { emotion: e, to: i + n };
    }
    if (!found && tokens[i]!.text === 'content' && tokens[i]!.kind === 'word') {
      const prev = tokens[i - 1];
      if (wordCount === 1 || (prev !== undefined && prev.kind === 'word' && CONTENT_LINKS.has(prev.text)))
        found = { emotion: 'contentment', to: i + 1 };
    }
    if (found) {
      matches.push({ emotion: found.emotion, from: i, to: found.to });
      for (let k = i; k < found.to; k++) consumed.add(k);
      i = found.to;
    } else i++;
  }
  return matches.map(({ emotion, from, to }) => {
    const start = tokens[from]!.start;
    const end = tokens[to - 1]!.end;
    return { emotion, surface: text.slice(start, end), start, end, negated: isNegated(tokens, from, consumed) };
  });
}

/** Result of {@link parseEmotion}. */
export type EmotionParse =
  | {
      outcome: 'emotion';
      /** The first non-negated emotion. */
      emotion: CanonicalEmotion;
      /** Every non-negated emotion, in order of first mention. */
      emotions: CanonicalEmotion[];
      /** Emotions that were only mentioned negated. */
      negated: CanonicalEmotion[];
      mentions: EmotionMention[];
      hedged: boolean;
    }
  | {
      outcome: 'unparsed';
      /** `'empty'`: no words; `'no-emotion'`: no lexicon word; `'negated'`: only negated mentions. */
      reason: 'empty' | 'no-emotion' | 'negated';
      negated: CanonicalEmotion[];
      mentions: EmotionMention[];
      hedged: boolean;
    };

const ANSWER_MARKER = /(?:final answer|answer|emotion|emotions)\s*[:：]/giu;

/**
 * The part of a model's reply that holds its answer: the text after the last answer marker
 * (`Answer:`, `Final answer:`, `Emotion:`, case-insensitive) when one is followed by words, else
 * the whole text. `extraMarkers` adds words (`intent`, `label`).
 */
export function answerSpan(text: string, extraMarkers: readonly string[] = []): { text: string; offset: number } {
  const re =
    extraMarkers.length === 0
      ? ANSWER_MARKER
      : new RegExp(`(?:final answer|answer|emotion|emotions|${extraMarkers.map((m) => m.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|')})\\s*[:：]`, 'giu');
  re.lastIndex = 0;
  let last = -1;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) last = m.index + m[0].length;
  if (last >= 0 && /[\p{L}\p{N}]/u.test(text.slice(last))) return { text: text.slice(last), offset: last };
  return { text, offset: 0 };
}

/** Reads an open-set emotion answer. See the module comment for the rules. */
export function parseEmotion(text: string): EmotionParse {
  if (typeof text !== 'string') text = String(text ?? '');
  const span = answerSpan(text);
  const tokens = tokenize(span.text);
  const hedged = tokens.some((t) => HEDGES.has(t.text));
  if (!tokens.some((t) => t.kind === 'word')) return { outcome: 'unparsed', reason: 'empty', negated: [], mentions: [], hedged };
  const mentions = findEmotionMentions(span.text).map((m) => ({ ...m, start: m.start + span.offset, end: m.end + span.offset }));
  const emotions: CanonicalEmotion[] = [];
  for (const m of mentions) if (!m.negated && !emotions.includes(m.emotion)) emotions.push(m.emotion);
  const negated: CanonicalEmotion[] = [];
  for (const m of mentions) if (m.negated && !emotions.includes(m.emotion) && !negated.includes(m.emotion)) negated.push(m.emotion);
  if (emotions.length === 0)
    return { outcome: 'unparsed', reason: mentions.length > 0 ? 'negated' : 'no-emotion', negated, mentions, hedged };
  return { outcome: 'emotion', emotion: emotions[0]!, emotions, negated, mentions, hedged };
}

/** Taxonomies with a canonical-emotion mapping. */
export type EmotionTaxonomyId = 'mikels8' | 'ekman6' | 'ekman7' | 'sentiment2' | 'sentiment3';

const SAME_EKMAN = { joy: 'joy', anger: 'anger', fear: 'fear', sadness: 'sadness', disgust: 'disgust', surprise: 'surprise' } as const;
/** Negative emotions folded onto a basic one (GoEmotions: embarrassment, remorse → sadness; contempt → disgust as in Ekman's own pairing). */
const NEGATIVE_FOLDS = { embarrassment: 'sadness', guilt: 'sadness', shame: 'sadness', contempt: 'disgust' } as const;

/**
 * Ekman's six basic emotions and every other label folded onto them (GoEmotions' Ekman mapping);
 * `ekman7` adds neutral.
 */
const EKMAN_FOLDS = {
  ...SAME_EKMAN,
  // GoEmotions' Ekman mapping: joy ← amusement, excitement, love, pride, relief, gratitude, optimism, admiration;
  // surprise ← confusion, curiosity. Contentment is low-arousal joy.
  amusement: 'joy',
  contentment: 'joy',
  excitement: 'joy',
  love: 'joy',
  pride: 'joy',
  relief: 'joy',
  gratitude: 'joy',
  hope: 'joy',
  admiration: 'joy',
  confusion: 'surprise',
  interest: 'surprise',
  ...NEGATIVE_FOLDS,
} as const;

const POSITIVE = ['joy', 'amusement', 'awe', 'contentment', 'excitement', 'love', 'pride', 'relief', 'gratitude', 'hope', 'admiration'] as const;
const NEGATIVE = ['anger', 'disgust', 'fear', 'sadness', 'shame', 'guilt', 'embarrassment', 'contempt', 'boredom', 'envy'] as const;

/**
 * Canonical emotion → label of each taxonomy. An emotion missing from a table does not map
 * (joy onto Mikels' three positive classes, surprise onto a polarity, awe onto Ekman's six, ...).
 */
export const EMOTION_TO_TAXONOMY: Readonly<Record<EmotionTaxonomyId, Readonly<Partial<Record<CanonicalEmotion, string>>>>> = Object.freeze({
  mikels8: Object.freeze({
    amusement: 'amusement',
    awe: 'awe',
    contentment: 'contentment',
    excitement: 'excitement',
    anger: 'anger',
    disgust: 'disgust',
    fear: 'fear',
    sadness: 'sadness',
    relief: 'contentment',
    ...NEGATIVE_FOLDS,
  }),
  ekman6: Object.freeze({ ...EKMAN_FOLDS }),
  ekman7: Object.freeze({ ...EKMAN_FOLDS, neutral: 'neutral' }),
  sentiment2: Object.freeze({
    ...Object.fromEntries(POSITIVE.map((e) => [e, 'positive'])),
    ...Object.fromEntries(NEGATIVE.map((e) => [e, 'negative'])),
  }),
  sentiment3: Object.freeze({
    ...Object.fromEntries(POSITIVE.map((e) => [e, 'positive'])),
    ...Object.fromEntries(NEGATIVE.map((e) => [e, 'negative'])),
    neutral: 'neutral',
  }),
});

/** Whether a taxonomy id has a canonical-emotion mapping. */
export function isEmotionTaxonomy(id: unknown): id is EmotionTaxonomyId {
  return typeof id === 'string' && Object.prototype.hasOwnProperty.call(EMOTION_TO_TAXONOMY, id);
}

/** The taxonomy label of a canonical emotion, or undefined where the table has none. */
export function mapEmotion(emotion: CanonicalEmotion, taxonomy: EmotionTaxonomyId): string | undefined {
  const table = EMOTION_TO_TAXONOMY[taxonomy];
  if (!table) return undefined;
  return Object.prototype.hasOwnProperty.call(table, emotion) ? table[emotion] : undefined;
}
