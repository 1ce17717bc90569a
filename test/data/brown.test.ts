import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BROWN_FILE_COUNT, brownDocuments, brownFileToText, detokenize } from '../../src/data/brown.js';

describe('brown corpus', () => {
  it('detokenizes punctuation, quotes and clitics', () => {
    assert.equal(
      detokenize(['``', 'Only', 'a', 'handful', "''", ',', 'the', 'jury', 'said', ',', '``', 'of', 'this', 'city', "''", '.']),
      '"Only a handful," the jury said, "of this city."',
    );
    assert.equal(detokenize(['He', 'did', "n't", 'go', '(', 'really', ')', ';', 'why', '?', '?']), "He didn't go (really); why?");
    assert.equal(detokenize(['say', ',', "'", 'Hi', "'", 'now', '.']), "say, 'Hi' now.");
    assert.equal(detokenize(['Ivan', 'Allen', 'Jr.', '.']), 'Ivan Allen Jr.');
  });
  it('rebuilds paragraphs and headlines from tagged text', () => {
    const raw = '\n\n\tThe/at jury/nn said/vbd ./.\nIt/pps ended/vbd ./.\n\n\nMerger/nn-hl proposed/vbn-hl \n\tA/at new/jj one/cd ./.\n';
    assert.equal(brownFileToText(raw), 'The jury said. It ended.\n\nMerger proposed\n\nA new one.');
  });
  it('yields 500 readable documents', async () => {
    let n = 0, bytes = 0, first = '';
    for await (const d of brownDocuments()) {
      if (n === 0) first = d.text;
      n++;
      bytes += Buffer.byteLength(d.text);
      assert.ok(!/\w\/(at|nn|nns|in|jj|vbd|np|cc)\b/.test(d.text), `tags stripped in ${d.id}`);
    }
    assert.equal(n, BROWN_FILE_COUNT);
    assert.ok(bytes > 5_500_000 && bytes < 6_500_000, `bytes ${bytes}`);
    assert.ok(first.startsWith('The Fulton County Grand Jury said Friday an investigation of Atlanta\'s recent primary election produced "no evidence" that any irregularities took place.'));
  });
});
