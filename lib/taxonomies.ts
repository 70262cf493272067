/**
 * Label sets of the EmoBench tasks: the emotion, sentiment, intent and yes/no taxonomies that
 * EmoPrompt lists as options and that result decoding maps answers onto.
 *
 * Every taxonomy is frozen (deeply): its `labels` are the canonical, lower-case answer strings in
 * the order the source dataset or paper lists them, and every label has a one-line definition.
 * Where a dataset's files spell a label differently (MIntRec writes `Ask for help`), that spelling
 * is in `datasetLabels`; {@link findLabel} accepts either.
 *
 * | id | labels | used by |
 * |---|---|---|
 * | `mikels8` | amusement, awe, contentment, excitement, anger, disgust, fear, sadness | EmoSet, Abstract (Mikels et al. 2005) |
 * | `ekman6` | anger, disgust, fear, joy, sadness, surprise | Ekman's basic emotions (joy for happiness) |
 * | `ekman7` | the six and neutral | MELD |
 * | `sentiment2` | positive, negative | Twitter_I / Twitter_II |
 * | `sentiment3` | positive, neutral, negative | MELD sentiment, CH-SIMS / CMU-MOSI bins |
 * | `mintrec20` | the 20 MIntRec intents | MIntRec (Zhang et al., ACM MM 2022) |
 * | `hate`, `humor`, `sarcasm` | yes, no | HarMeme, meme humour, MMSD2.0 / MUStARD |
 */

import { EmollmError } from './errors.js';

/** Ids of the built-in taxonomies. */
export type TaxonomyId =
  | 'mikels8'
  | 'ekman6'
  | 'ekman7'
  | 'sentiment2'
  | 'sentiment3'
  | 'mintrec20'
  | 'hate'
  | 'humor'
  | 'sarcasm';

/** A named group of labels (MIntRec's two coarse intent classes). */
export interface LabelGroup {
  readonly name: string;
  readonly labels: readonly string[];
}

/** A label set with definitions. */
export interface Taxonomy {
  readonly id: string;
  /** Human-readable name. */
  readonly name: string;
  /** Where the label set comes from. */
  readonly source: string;
  /** Canonical labels (lower case), in the source's order. */
  readonly labels: readonly string[];
  /** A one-line definition per label. */
  readonly definitions: Readonly<Record<string, string>>;
  /** The dataset files' spelling of a label, where it differs from the canonical one. */
  readonly datasetLabels?: Readonly<Record<string, string>>;
  /** Coarse groups of labels, where the source defines them. */
  readonly groups?: readonly LabelGroup[];
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value as Record<string, unknown>)) deepFreeze(v);
  }
  return value;
}

function make(
  id: TaxonomyId,
  name: string,
  source: string,
  defs: ReadonlyArray<readonly [string, string]>,
  extra: { datasetLabels?: Record<string, string>; groups?: LabelGroup[] } = {},
): Taxonomy {
  const definitions: Record<string, string> = {};
  for (const [label, def] of defs) definitions[label] = def;
  return deepFreeze({ id, name, source, labels: defs.map(([l]) => l), definitions, ...extra });
}

const D = {
  anger: 'hostility or irritation at something felt to be wrong, unfair or obstructive',
  disgust: 'revulsion at something offensive, distasteful or contaminating',
  fear: 'alarm or anxiety about a threat, danger or harm',
  sadness: 'sorrow or unhappiness from loss, disappointment or helplessness',
  joy: 'happiness or pleasure at something good',
  surprise: 'being startled or astonished by something unexpected',
  neutral: 'no clear emotion is expressed',
} as const;

/** Mikels' eight emotion categories, as EmoSet orders them. */
export const MIKELS8: Taxonomy = make('mikels8', "Mikels' 8 emotions", 'Mikels et al. 2005; EmoSet (Yang et al. 2023)', [
  ['amusement', 'light-hearted enjoyment of something funny or playful'],
  ['awe', 'wonder at something vast, grand or sublime that feels bigger than oneself'],
  ['contentment', 'calm, peaceful satisfaction and ease'],
  ['excitement', 'energetic, eager enthusiasm or thrill'],
  ['anger', D.anger],
  ['disgust', D.disgust],
  ['fear', D.fear],
  ['sadness', D.sadness],
]);

/** Ekman's six basic emotions (happiness written `joy`, as MELD does). */
export const EKMAN6: Taxonomy = make('ekman6', "Ekman's 6 basic emotions", 'Ekman 1992', [
  ['anger', D.anger],
  ['disgust', D.disgust],
  ['fear', D.fear],
  ['joy', D.joy],
  ['sadness', D.sadness],
  ['surprise', D.surprise],
]);

/** Ekman's six plus neutral: MELD's seven emotion classes. */
export const EKMAN7: Taxonomy = make('ekman7', "Ekman's 6 basic emotions and neutral", 'Ekman 1992; MELD (Poria et al. 2019)', [
  ['anger', D.anger],
  ['disgust', D.disgust],
  ['fear', D.fear],
  ['joy', D.joy],
  ['neutral', D.neutral],
  ['sadness', D.sadness],
  ['surprise', D.surprise],
]);

/** Two-way sentiment (polarity). */
export const SENTIMENT2: Taxonomy = make('sentiment2', 'Sentiment (2-way)', 'Twitter_I / Twitter_II (You et al. 2015)', [
  ['positive', 'a favourable, pleasant or approving feeling'],
  ['negative', 'an unfavourable, unpleasant or disapproving feeling'],
]);

/** Three-way sentiment. */
export const SENTIMENT3: Taxonomy = make('sentiment3', 'Sentiment (3-way)', 'MELD; CH-SIMS; CMU-MOSI (binned)', [
  ['positive', 'a favourable, pleasant or approving feeling'],
  ['neutral', 'neither favourable nor unfavourable'],
  ['negative', 'an unfavourable, unpleasant or disapproving feeling'],
]);

const MINTREC_DEFS: ReadonlyArray<readonly [string, string]> = [
  // Express emotions or attitudes.
  ['complain', 'express dissatisfaction or annoyance about something'],
  ['praise', 'express approval or admiration of someone or something'],
  ['apologise', 'say sorry and admit a fault'],
  ['thank', 'express gratitude to someone'],
  ['criticize', 'point out faults or judge someone or something negatively'],
  ['care', "show concern for someone's wellbeing"],
  ['agree', 'accept or share an opinion, proposal or request'],
  ['taunt', 'mock or provoke someone with teasing or insulting remarks'],
  ['flaunt', "show off one's possessions, achievements or qualities"],
  ['oppose', 'disagree with or resist an opinion, proposal or request'],
  ['joke', 'say something meant to be funny'],
  // Achieve goals.
  ['inform', 'tell someone facts or news'],
  ['advise', 'recommend what someone should do'],
  ['arrange', 'plan, organise or assign tasks, times or places'],
  ['introduce', 'present someone or something new to others'],
  ['comfort', 'console or reassure someone who is upset'],
  ['leave', "announce or carry out one's departure"],
  ['prevent', 'stop someone from doing something'],
  ['greet', 'say hello or welcome someone'],
  ['ask for help', 'request assistance from someone'],
];

/**
 * MIntRec's 20 intents (Zhang et al., "MIntRec: A New Dataset for Multimodal Intent Recognition",
 * ACM MM 2022), in the paper's order: 11 that express emotions or attitudes, 9 that achieve goals.
 * The labels are the dataset's own words (British `apologise`, American `criticize`), lower-cased;
 * the TSV files capitalise them (`Ask for help`).
 */
export const MINTREC20: Taxonomy = make(
  'mintrec20',
  'MIntRec intents',
  'MIntRec (Zhang et al., ACM MM 2022)',
  MINTREC_DEFS,
  {
    datasetLabels: Object.fromEntries(MINTREC_DEFS.map(([l]) => [l, l.charAt(0).toUpperCase() + l.slice(1)])),
    groups: [
      { name: 'express emotions or attitudes', labels: MINTREC_DEFS.slice(0, 11).map(([l]) => l) },
      { name: 'achieve goals', labels: MINTREC_DEFS.slice(11).map(([l]) => l) },
    ],
  },
);

/** Hateful-content detection (memes). */
export const HATE: Taxonomy = make('hate', 'Hate (yes/no)', 'Hateful Memes; HarMeme', [
  ['yes', 'the content attacks or demeans people for who they are (race, religion, gender, ...)'],
  ['no', 'the content does not attack or demean any group or person for who they are'],
]);

/** Humour detection. */
export const HUMOR: Taxonomy = make('humor', 'Humour (yes/no)', 'EmoBench humour sub-task', [
  ['yes', 'the content is meant to be funny'],
  ['no', 'the content is not meant to be funny'],
]);

/** Sarcasm detection. */
export const SARCASM: Taxonomy = make('sarcasm', 'Sarcasm (yes/no)', 'MMSD2.0; MUStARD', [
  ['yes', 'the literal words say the opposite of, or mock, what is actually meant'],
  ['no', 'the words mean what they say'],
]);

/** All built-in taxonomies by id. */
export const TAXONOMIES: Readonly<Record<TaxonomyId, Taxonomy>> = deepFreeze({
  mikels8: MIKELS8,
  ekman6: EKMAN6,
  ekman7: EKMAN7,
  sentiment2: SENTIMENT2,
  sentiment3: SENTIMENT3,
  mintrec20: MINTREC20,
  hate: HATE,
  humor: HUMOR,
  sarcasm: SARCASM,
});

/** Whether `id` names a built-in taxonomy. */
export function isTaxonomyId(id: unknown): id is TaxonomyId {
  return typeof id === 'string' && Object.prototype.hasOwnProperty.call(TAXONOMIES, id);
}

/** A built-in taxonomy by id, or the taxonomy itself; an unknown id is `ERR_INVALID_ARGUMENT`. */
export function getTaxonomy(id: TaxonomyId | Taxonomy): Taxonomy {
  if (typeof id === 'object' && id !== null) return id;
  if (!isTaxonomyId(id))
    throw new EmollmError('ERR_INVALID_ARGUMENT', `unknown taxonomy ${JSON.stringify(id)} (known: ${Object.keys(TAXONOMIES).join(', ')})`);
  return TAXONOMIES[id];
}

/**
 * The canonical label that `text` names: case, surrounding whitespace and punctuation and inner
 * runs of whitespace are ignored, and the dataset spelling is accepted. Returns undefined when
 * `text` is not one of the labels (no fuzzy matching).
 */
export function findLabel(taxonomy: TaxonomyId | Taxonomy, text: string): string | undefined {
  const t = getTaxonomy(taxonomy);
  const key = text
    .trim()
    .replace(/^[\s"'“”‘’.,;:!?()[\]]+|[\s"'“”‘’.,;:!?()[\]]+$/g, '')
    .replace(/\s+/g, ' ')
    .toLowerCase();
  if (t.labels.includes(key)) return key;
  for (const [label, spelled] of Object.entries(t.datasetLabels ?? {})) if (spelled.toLowerCase() === key) return label;
  return undefined;
}
