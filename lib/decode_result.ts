/**
 * Result decoding for the EmoBench sub-tasks.
 *
 * - Close-set and yes/no tasks: {@link classify} scores every label after the prompt with
 *   `Model.scoreOptions` (length-normalised log-probabilities by default) and {@link decodeScores}
 *   turns a `ScoreResult` into a label, a distribution over the labels and a margin. Several
 *   surface strings may stand for one label (`verbalizers`: `{ yes: ['yes', 'Yes'] }`); their
 *   probabilities add up.
 * - Generation-based backends: {@link decodeLabel} reads a close-set answer (a label named in the
 *   text, else an emotion word mapped through the lexicon), {@link decodeOpenEmotion} an open-set
 *   one (see `emotion_lexicon.ts`), {@link decodeYesNo} a yes/no one ("Yes.", "It is sarcastic",
 *   "No, it isn't", "not hateful").
 *
 * Text that answers nothing is `{ outcome: 'unparsed', reason }`, its own outcome: the decoders
 * never guess.
 */

import type { ChatMessage } from './chat_template.js';
import {
  answerSpan,
  EMOTION_LEXICON,
  isEmotionTaxonomy,
  isNegated,
  mapEmotion,
  parseEmotion,
  tokenize,
} from './emotion_lexicon.js';
import type { CanonicalEmotion, EmotionParse, EmotionTaxonomyId, Token } from './emotion_lexicon.js';
import { EmollmError } from './errors.js';
import type { Prompt, ScoreOptions, ScoreResult } from './model.js';

/** Anything that scores options the way `Model.scoreOptions` does (a `Model`, or a test double). */
export interface OptionScorer {
  scoreOptions(prompt: Prompt, options: readonly string[], settings?: ScoreOptions): Promise<ScoreResult>;
}

/** A decoded classification. */
export interface Classification {
  /** The most probable label (ties: the earlier label). */
  label: string;
  /** Its probability. */
  probability: number;
  /** Probability of each label (sums to 1), in label order. */
  distribution: Record<string, number>;
  /** Probability of the best label minus the runner-up's (1 with one label). */
  margin: number;
  /** The scoring result it came from. */
  raw: ScoreResult;
}

/** Options of {@link decodeScores}. */
export interface DecodeScoresOptions {
  /** Which score of each option the softmax runs over: `'mean'` (length-normalised, default) or `'sum'`. */
  normalize?: 'mean' | 'sum';
}

function invalid(message: string): EmollmError {
  return new EmollmError('ERR_INVALID_ARGUMENT', message);
}

/**
 * Decodes a `ScoreResult`: `labels[i]` is the label of `score.options[i]` (a label may repeat:
 * its options' probabilities add up). The probabilities are recomputed from the options' scores
 * (softmax over `meanLogprob`, or `logprob` with `normalize: 'sum'`), so the result does not depend
 * on how the `ScoreResult` was normalised. A NaN score, or no finite score at all, is
 * `ERR_INVALID_ARGUMENT`; an option whose score is -Infinity gets probability 0.
 */
export function decodeScores(score: ScoreResult, labels: readonly string[], options: DecodeScoresOptions = {}): Classification {
  if (typeof score !== 'object' || score === null || !Array.isArray(score.options)) throw invalid('decodeScores: score must be a ScoreResult');
  if (!Array.isArray(labels) || labels.length !== score.options.length)
    throw invalid(`decodeScores: ${Array.isArray(labels) ? labels.length : 'no'} labels for ${score.options.length} scored options`);
  if (labels.length === 0) throw invalid('decodeScores: no options');
  labels.forEach((l, i) => {
    if (typeof l !== 'string' || l === '') throw invalid(`decodeScores: labels[${i}] must be a non-empty string`);
  });
  const normalize = options.normalize ?? 'mean';
  if (normalize !== 'mean' && normalize !== 'sum') throw invalid("decodeScores: normalize must be 'mean' or 'sum'");
  const scores = score.options.map((o, i) => {
    const v = normalize === 'mean' ? o.meanLogprob : o.logprob;
    if (typeof v !== 'number' || Number.isNaN(v) || v === Infinity) throw invalid(`decodeScores: option ${i} has no valid score (${String(v)})`);
    return v;
  });
  const top = Math.max(...scores);
  if (!Number.isFinite(top)) throw invalid('decodeScores: no option has a finite score');
  const exps = scores.map((v) => Math.exp(v - top));
  const z = exps.reduce((a, b) => a + b, 0);
  const order: string[] = [];
  const mass = new Map<string, number>();
  labels.forEach((l, i) => {
    if (!mass.has(l)) order.push(l);
    mass.set(l, (mass.get(l) ?? 0) + exps[i]! / z);
  });
  let best = order[0]!;
  for (const l of order) if (mass.get(l)! > mass.get(best)!) best = l;
  let second = -Infinity;
  for (const l of order) if (l !== best) second = Math.max(second, mass.get(l)!);
  const probability = mass.get(best)!;
  return {
    label: best,
    probability,
    distribution: Object.fromEntries(order.map((l) => [l, mass.get(l)!])),
    margin: order.length > 1 ? probability - second : 1,
    raw: score,
  };
}

/** Options of {@link classify}. */
export interface ClassifyOptions extends DecodeScoresOptions {
  signal?: AbortSignal;
  /** Strings scored for a label (default: the label itself). */
  verbalizers?: Readonly<Record<string, readonly string[]>>;
}

/**
 * Classifies by scoring each label as the answer after `messages` (one prefill, shared) and
 * decoding with {@link decodeScores}.
 */
export async function classify(
  model: OptionScorer,
  messages: Prompt | readonly ChatMessage[],
  labels: readonly string[],
  options: ClassifyOptions = {},
): Promise<Classification> {
  if (!model || typeof model.scoreOptions !== 'function') throw invalid('classify: model must have scoreOptions');
  if (!Array.isArray(labels) || labels.length === 0) throw invalid('classify: labels must be a non-empty array');
  const seen = new Set<string>();
  for (const l of labels) {
    if (typeof l !== 'string' || l === '') throw invalid('classify: labels must be non-empty strings');
    if (seen.has(l)) throw invalid(`classify: duplicate label ${JSON.stringify(l)}`);
    seen.add(l);
  }
  const surfaces: string[] = [];
  const owners: string[] = [];
  for (const l of labels) {
    const v = options.verbalizers?.[l] ?? [l];
    if (!Array.isArray(v) || v.length === 0) throw invalid(`classify: verbalizers[${JSON.stringify(l)}] must be a non-empty array`);
    for (const s of v) {
      if (typeof s !== 'string' || s === '') throw invalid(`classify: verbalizers[${JSON.stringify(l)}] must hold non-empty strings`);
      surfaces.push(s);
      owners.push(l);
    }
  }
  for (const k of Object.keys(options.verbalizers ?? {}))
    if (!seen.has(k)) throw invalid(`classify: verbalizers names ${JSON.stringify(k)}, which is not a label`);
  if (options.signal?.aborted) throw new EmollmError('ERR_ABORTED', 'classify: aborted');
  const settings: ScoreOptions = { normalize: options.normalize ?? 'mean' };
  if (options.signal) settings.signal = options.signal;
  const raw = await model.scoreOptions(messages as Prompt, surfaces, settings);
  return decodeScores(raw, owners, { normalize: settings.normalize! });
}

// ---------------------------------------------------------------------------------------------
// Generated text

/** Why a text gave no answer. */
export type UnparsedReason = 'empty' | 'no-emotion' | 'no-label' | 'negated' | 'unmappable' | 'uncertain' | 'ambiguous' | 'no-answer';

/** A text decoded to a label, or not. */
export type LabelDecoding =
  | {
      outcome: 'label';
      label: string;
      /** Every label the text names (non-negated), in order. */
      labels: string[];
      /** `'label'`: the text names it; `'lexicon'`: an emotion word mapped onto it. */
      via: 'label' | 'lexicon';
    }
  | { outcome: 'unparsed'; reason: UnparsedReason };

/** Options of {@link decodeLabel}. */
export interface DecodeLabelOptions {
  /** A taxonomy whose lexicon mapping is used when the text names no label. */
  taxonomy?: EmotionTaxonomyId | string;
}

function words(s: string): string[] {
  return tokenize(s)
    .filter((t) => t.kind === 'word')
    .map((t) => t.text);
}

function matchAt(tokens: readonly Token[], i: number, seq: readonly string[]): boolean {
  return seq.every((w, k) => tokens[i + k]?.kind === 'word' && tokens[i + k]!.text === w);
}

/**
 * Reads a close-set answer from generated text: the labels it names as whole words
 * (case-insensitive, negated mentions skipped: "not anger, but fear" is fear), the first one
 * winning; when it names none, emotion words through the lexicon: mapped with `taxonomy`'s table
 * when given, else onto a label that is itself a lexicon word of the same emotion ("joyful" →
 * label "happy"). Only the text after an `Answer:` / `Intent:` / `Label:` marker is read when
 * there is one.
 */
export function decodeLabel(text: string, labels: readonly string[], options: DecodeLabelOptions = {}): LabelDecoding {
  if (!Array.isArray(labels) || labels.length === 0) throw invalid('decodeLabel: labels must be a non-empty array');
  const span = answerSpan(typeof text === 'string' ? text : '', ['intent', 'label', 'sentiment']).text;
  const tokens = tokenize(span);
  if (!tokens.some((t) => t.kind === 'word')) return { outcome: 'unparsed', reason: 'empty' };
  const seqs = labels.map((l) => words(l)).map((seq, i) => ({ seq, label: labels[i]! })).filter((x) => x.seq.length > 0);
  seqs.sort((a, b) => b.seq.length - a.seq.length);
  const named: string[] = [];
  let negatedSeen = false;
  for (let i = 0; i < tokens.length; ) {
    const hit = seqs.find((x) => matchAt(tokens, i, x.seq));
    if (!hit) {
      i++;
      continue;
    }
    if (isNegated(tokens, i)) negatedSeen = true;
    else if (!named.includes(hit.label)) named.push(hit.label);
    i += hit.seq.length;
  }
  if (named.length > 0) return { outcome: 'label', label: named[0]!, labels: named, via: 'label' };

  const parse = parseEmotion(span);
  if (parse.outcome === 'emotion') {
    const found: string[] = [];
    for (const e of parse.emotions) {
      const l = emotionToLabel(e, labels, options.taxonomy);
      if (l !== undefined && !found.includes(l)) found.push(l);
    }
    if (found.length > 0) return { outcome: 'label', label: found[0]!, labels: found, via: 'lexicon' };
    return { outcome: 'unparsed', reason: 'unmappable' };
  }
  if (negatedSeen || parse.reason === 'negated') return { outcome: 'unparsed', reason: 'negated' };
  return { outcome: 'unparsed', reason: 'no-label' };
}

function emotionToLabel(e: CanonicalEmotion, labels: readonly string[], taxonomy: string | undefined): string | undefined {
  const byLower = new Map(labels.map((l) => [l.toLowerCase(), l]));
  if (taxonomy !== undefined && isEmotionTaxonomy(taxonomy)) {
    const m = mapEmotion(e, taxonomy);
    return m === undefined ? undefined : byLower.get(m);
  }
  if (byLower.has(e)) return byLower.get(e);
  const same = labels.filter((l) => EMOTION_LEXICON[l.toLowerCase()] === e);
  return same.length === 1 ? same[0] : undefined;
}

/** An open-set answer decoded. */
export type OpenEmotionDecoding =
  | {
      outcome: 'emotion';
      /** The first non-negated emotion (with a taxonomy: the first one it can express). */
      emotion: CanonicalEmotion;
      /** Every non-negated emotion, in order of first mention. */
      emotions: CanonicalEmotion[];
      /** The taxonomy label, when a taxonomy was given. */
      label?: string;
      parse: EmotionParse;
    }
  | { outcome: 'unparsed'; reason: 'empty' | 'no-emotion' | 'negated' | 'unmappable'; parse: EmotionParse };

/**
 * Reads an open-set emotion answer through the lexicon ({@link parseEmotion}); with a taxonomy,
 * maps it onto the taxonomy's labels ({@link mapEmotion}) and is `'unmappable'` when none of the
 * text's emotions has a mapping.
 */
export function decodeOpenEmotion(text: string, options: { taxonomy?: EmotionTaxonomyId } = {}): OpenEmotionDecoding {
  const parse = parseEmotion(text);
  if (parse.outcome === 'unparsed') return { outcome: 'unparsed', reason: parse.reason, parse };
  if (options.taxonomy === undefined) return { outcome: 'emotion', emotion: parse.emotion, emotions: parse.emotions, parse };
  if (!isEmotionTaxonomy(options.taxonomy))
    throw invalid(`decodeOpenEmotion: no emotion mapping for taxonomy ${JSON.stringify(options.taxonomy)}`);
  for (const e of parse.emotions) {
    const label = mapEmotion(e, options.taxonomy);
    if (label !== undefined) return { outcome: 'emotion', emotion: e, emotions: parse.emotions, label, parse };
  }
  return { outcome: 'unparsed', reason: 'unmappable', parse };
}

/** The yes/no tasks. */
export type YesNoTask = 'hate' | 'humor' | 'sarcasm';

const YES_WORDS = new Set(['yes', 'yeah', 'yep', 'yup', 'yea', 'ya', 'true', 'correct', 'affirmative', 'sure', 'indeed']);
const NO_WORDS = new Set(['no', 'nope', 'nah', 'false', 'incorrect', 'negative']);
const STRONG_ADVERBS = new Set(['absolutely', 'definitely', 'certainly', 'clearly', 'obviously']);

const ATTRIBUTES: Record<YesNoTask, { yes: readonly string[]; no: readonly string[] }> = {
  sarcasm: {
    yes: ['sarcastic', 'sarcastically', 'sarcasm', 'ironic', 'ironically', 'irony', 'facetious', 'mocking'],
    no: ['sincere', 'sincerely', 'genuine', 'genuinely', 'literal', 'earnest', 'straightforward'],
  },
  hate: {
    yes: [
      'hateful', 'hate', 'hatred', 'hate speech', 'racist', 'racism', 'sexist', 'sexism', 'bigoted', 'bigotry', 'homophobic',
      'homophobia', 'transphobic', 'xenophobic', 'xenophobia', 'antisemitic', 'islamophobic', 'misogynistic', 'misogynist',
      'derogatory', 'demeaning', 'dehumanizing', 'dehumanising', 'discriminatory', 'slur', 'slurs',
    ],
    no: ['harmless', 'benign', 'respectful', 'innocuous', 'inoffensive'],
  },
  humor: {
    yes: ['funny', 'humorous', 'humor', 'humour', 'joke', 'jokes', 'joking', 'amusing', 'comical', 'comedic', 'hilarious', 'witty'],
    no: ['serious', 'unfunny'],
  },
};

const UNCERTAIN = [
  'not sure', 'unsure', 'uncertain', 'unclear', "can't tell", 'cannot tell', "can't determine", 'cannot determine', "can't say",
  'cannot say', 'hard to say', 'hard to tell', 'difficult to say', 'difficult to tell', 'impossible to tell', 'impossible to say',
  'cannot be determined', "can't be determined", "don't know", 'do not know', 'not possible to', 'insufficient information',
  'not enough information', 'ambiguous',
].map((p) => p.split(' '));

/** A yes/no answer decoded. */
export type YesNoDecoding =
  | {
      outcome: 'label';
      label: 'yes' | 'no';
      /** Which rule decided: a leading yes/no word, an attribute word (negated or not), a yes/no word elsewhere, or a bare negation. */
      evidence: 'leading-word' | 'attribute' | 'yes-no-word' | 'negation' | 'affirmation';
    }
  | { outcome: 'unparsed'; reason: 'empty' | 'uncertain' | 'ambiguous' | 'no-answer' };

/**
 * Reads a yes/no answer from generated text. In order: a leading yes/no word ("Yes, ...",
 * "Nope"); a hedge of uncertainty ("hard to say") is `uncertain`; the task's attribute words,
 * negated or not ("it is sarcastic" → yes, "not hateful" → no, "the tone is sincere" → no); a
 * yes/no word elsewhere ("The answer is yes"); a bare negation ("It isn't.") → no; a bare
 * affirmation ("It is.") → yes. Evidence both ways is `ambiguous`. Without `task` the attribute
 * words of all three tasks count.
 */
export function decodeYesNo(text: string, options: { task?: YesNoTask } = {}): YesNoDecoding {
  const span = answerSpan(typeof text === 'string' ? text : '').text;
  const tokens = tokenize(span);
  const wordIdx = tokens.map((t, i) => (t.kind === 'word' ? i : -1)).filter((i) => i >= 0);
  if (wordIdx.length === 0) return { outcome: 'unparsed', reason: 'empty' };
  const wordsOnly = wordIdx.map((i) => tokens[i]!.text);
  const joined = ` ${wordsOnly.join(' ')} `;
  if (/ (yes (and|or) no|no (and|or) yes) /.test(joined)) return { outcome: 'unparsed', reason: 'ambiguous' };

  // 1. A leading yes/no word.
  const first = wordsOnly[0]!;
  if (YES_WORDS.has(first)) return { outcome: 'label', label: 'yes', evidence: 'leading-word' };
  if (NO_WORDS.has(first)) return { outcome: 'label', label: 'no', evidence: 'leading-word' };
  if (STRONG_ADVERBS.has(first) || (first === 'of' && wordsOnly[1] === 'course')) {
    const next = wordsOnly[first === 'of' ? 2 : 1];
    if (next === undefined) return { outcome: 'label', label: 'yes', evidence: 'leading-word' };
    if (next === 'not') return { outcome: 'label', label: 'no', evidence: 'leading-word' };
  }

  // 2. Uncertainty.
  for (let i = 0; i < tokens.length; i++) if (UNCERTAIN.some((p) => matchAt(tokens, i, p))) return { outcome: 'unparsed', reason: 'uncertain' };

  // 3. Attribute words.
  const tasks: YesNoTask[] = options.task ? [options.task] : ['hate', 'humor', 'sarcasm'];
  if (options.task !== undefined && !Object.prototype.hasOwnProperty.call(ATTRIBUTES, options.task))
    throw invalid(`decodeYesNo: unknown task ${JSON.stringify(options.task)}`);
  const yesSeqs = tasks.flatMap((t) => ATTRIBUTES[t].yes).map((w) => w.split(' '));
  const noSeqs = tasks.flatMap((t) => ATTRIBUTES[t].no).map((w) => w.split(' '));
  let yes = 0;
  let no = 0;
  for (let i = 0; i < tokens.length; i++) {
    const y = yesSeqs.find((s) => matchAt(tokens, i, s));
    const n = y ? undefined : noSeqs.find((s) => matchAt(tokens, i, s));
    if (!y && !n) continue;
    const neg = isNegated(tokens, i);
    if ((y && !neg) || (n && neg)) yes++;
    else no++;
    i += (y ?? n)!.length - 1;
  }
  if (yes > 0 && no > 0) return { outcome: 'unparsed', reason: 'ambiguous' };
  if (yes > 0) return { outcome: 'label', label: 'yes', evidence: 'attribute' };
  if (no > 0) return { outcome: 'label', label: 'no', evidence: 'attribute' };

  // 4. A yes/no word elsewhere.
  const hasYes = wordsOnly.some((w) => w === 'yes' || w === 'yeah' || w === 'yep' || w === 'yup');
  const hasNo = wordsOnly.some((w) => w === 'no' || w === 'nope' || w === 'nah');
  if (hasYes && hasNo) return { outcome: 'unparsed', reason: 'ambiguous' };
  if (hasYes) return { outcome: 'label', label: 'yes', evidence: 'yes-no-word' };
  if (hasNo) return { outcome: 'label', label: 'no', evidence: 'yes-no-word' };

  // 5. A bare negation or affirmation ("It isn't.", "It is.").
  if (wordsOnly.some((w) => w === 'not' || w === 'never' || w.endsWith("n't") || /^(isnt|doesnt|arent|wasnt|dont)$/.test(w)))
    return { outcome: 'label', label: 'no', evidence: 'negation' };
  if (/^ (it|this|that|he|she|they) (is|does|was|do|are) $|^ (it's|that's|this's) $/.test(joined))
    return { outcome: 'label', label: 'yes', evidence: 'affirmation' };
  return { outcome: 'unparsed', reason: 'no-answer' };
}
