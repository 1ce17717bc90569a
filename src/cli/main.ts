#!/usr/bin/env node
/**
 * `ssd`: the command line. Each command parses flags (and a JSON config file), calls one library
 * function and prints progress.
 */
import { Command, Option } from 'commander';
import * as fs from 'node:fs';
import { selectBackend } from '../backend/registry.js';
import { loadDataset, prepare, evalBatches, TokenSequence } from '../data/index.js';
import { generate } from '../infer/sample.js';
import * as T from '../tensor/index.js';
import { parseTrainConfig, TrainConfigFields } from '../train/config.js';
import { cachedDatasetDir, resolveDataset } from '../train/dataset.js';
import { loadModel } from '../train/load.js';
import { evaluate, modelConfigFor, train } from '../train/trainer.js';
import { createSSDController } from '../ssd/index.js';
import { Progress } from './progress.js';

const program = new Command('ssd')
  .description('Switchable Sparse-Dense Learning: pre-train Transformers that run as sparse Mixture-of-Experts')
  .showHelpAfterError();

function kebab(k: string): string {
  return k.replace(/_/g, '-');
}

/** Adds one flag per training-config key (types from the schema), e.g. --batch-size, --no-ffn-bias. */
function addConfigFlags(cmd: Command): Command {
  for (const [key, schema] of Object.entries(TrainConfigFields.shape)) {
    const def = (schema as { def?: { type?: string; innerType?: { def?: { type?: string } } } }).def;
    const type = def?.type === 'default' || def?.type === 'optional' ? def.innerType?.def?.type : def?.type;
    const desc = `training config '${key}'`;
    if (type === 'boolean') {
      cmd.addOption(new Option(`--${kebab(key)}`, desc).preset(true));
      cmd.addOption(new Option(`--no-${kebab(key)}`, `disable ${key}`));
    } else if (type === 'number') {
      cmd.addOption(new Option(`--${kebab(key)} <n>`, desc).argParser((v) => {
        const n = Number(v);
        if (!Number.isFinite(n)) throw new Error(`--${kebab(key)} expects a number, got '${v}'`);
        return n;
      }));
    } else {
      cmd.addOption(new Option(`--${kebab(key)} <value>`, desc));
    }
  }
  return cmd;
}

/** Merges a JSON config file (if given) with the flags that were set explicitly, then validates. */
function configFrom(opts: Record<string, unknown>, cmd: Command) {
  let raw: Record<string, unknown> = {};
  if (typeof opts.config === 'string') {
    if (!fs.existsSync(opts.config)) throw new Error(`config file not found: ${opts.config}`);
    try {
      raw = JSON.parse(fs.readFileSync(opts.config, 'utf8'));
    } catch (e) {
      throw new Error(`config file ${opts.config} is not valid JSON: ${(e as Error).message}`);
    }
  }
  for (const key of Object.keys(TrainConfigFields.shape)) {
    const camel = key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
    if (cmd.getOptionValueSource(camel) === 'cli') raw[key] = opts[camel];
  }
  return parseTrainConfig(raw);
}

addConfigFlags(program.command('train')
  .description('train a GPT (default: the tiny preset on the embedded Brown corpus)')
  .option('--config <file>', 'JSON training config (flags override it)')
  .option('--resume [dir]', 'resume from the newest checkpoint in a run directory (default: --out)'))
  .action(async (opts, cmd: Command) => {
    const cfg = configFrom(opts, cmd);
    if (cfg.threads) process.env.SSD_THREADS = String(cfg.threads);
    const backend = selectBackend(cfg.backend);
    const bar = new Progress();
    console.error(`ssd train: model ${cfg.model}, backend ${backend.name}, data ${cfg.data}, tokenizer ${cfg.tokenizer}, out ${cfg.out}`);
    const dataset = await resolveDataset(cfg, (p) => bar.note(`preparing data (${p.phase}): ${p.docs} documents, ${p.tokens} tokens`));
    bar.done();
    T.useBackend(backend);
    const resume = opts.resume === true ? cfg.out : (opts.resume as string | undefined);
    console.error(`data: ${dataset.meta.tokens.train} train / ${dataset.meta.tokens.val} val tokens, vocab ${dataset.tokenizer.vocabSize}`);
    const controller = createSSDController(cfg, modelConfigFor(cfg, dataset.tokenizer.vocabSize), dataset, (line) => bar.log(line));
    bar.start(cfg.steps);
    const s = train(cfg, dataset, backend, {
      ...(resume ? { resume } : {}), hook: controller,
      onStep: (m) => bar.update(m.step, `loss ${m.loss.toFixed(3)}${m.val_loss !== undefined ? ` val ${m.val_loss.toFixed(3)}` : ''}` +
        ` | ${Math.round(m.tokens_per_s)} tok/s | ${(m.flops_per_s / 1e9).toFixed(1)} GFLOP/s${m.phase ? ` | ${m.phase}` : ''}`),
    });
    bar.done();
    console.log(`done: ${s.steps} steps, ${s.tokens} tokens in ${s.elapsed_s.toFixed(0)} s (${Math.round(s.tokens_per_s)} tok/s, ` +
      `${(s.flops_per_s / 1e9).toFixed(1)} GFLOP/s)`);
    console.log(`val loss ${s.val_loss.toFixed(4)} nats (perplexity ${Math.exp(s.val_loss).toFixed(2)}); ` +
      `unigram entropy of val tokens ${s.val_unigram_entropy.toFixed(4)} nats; ratio ${(s.val_loss / s.val_unigram_entropy).toFixed(3)}`);
    if (cfg.method !== 'dense') {
      const h = controller.summary();
      console.log(`SSD (${cfg.method}): ${h.sparse_steps} sparse steps (${(h.sparse_share * 100).toFixed(1)}%), ${h.moefications} MoEfications; ` +
        `FLOPs ${(s.flops_actual / 1e12).toFixed(2)} TFLOP vs ${(s.flops_dense_equivalent / 1e12).toFixed(2)} dense-equivalent ` +
        `(${((1 - s.flops_actual / s.flops_dense_equivalent) * 100).toFixed(1)}% saved); checks ${h.check_seconds.toFixed(1)} s ` +
        `(${(h.check_seconds / s.elapsed_s * 100).toFixed(1)}% of training), MoEfication ${h.moefy_seconds.toFixed(1)} s`);
    }
    console.log(`checkpoint: ${s.checkpoint}`);
  });

program.command('prepare')
  .description('tokenize a corpus (text file/folder, .jsonl, .parquet, or "brown") into token shards')
  .argument('<input>', "corpus path, or 'brown' for the embedded Brown corpus")
  .requiredOption('--out <dir>', 'output dataset folder')
  .addOption(new Option('--tokenizer <kind>', 'tokenizer').choices(['byte', 'bpe', 'gpt2']).default('bpe'))
  .option('--vocab-size <n>', 'vocabulary size of a trained BPE', (v) => Number(v), 1024)
  .addOption(new Option('--format <f>', 'input format').choices(['auto', 'text', 'jsonl', 'parquet']).default('auto'))
  .option('--text-field <name>', 'JSONL field / Parquet column with the text', 'text')
  .option('--val-fraction <f>', 'share of documents held out for validation', (v) => Number(v))
  .option('--shard-tokens <n>', 'tokens per shard', (v) => Number(v))
  .option('--overwrite', 'replace an existing output folder')
  .action(async (input: string, o) => {
    const bar = new Progress();
    const meta = await prepare({
      input, outDir: o.out, tokenizer: o.tokenizer, vocabSize: o.vocabSize, format: o.format, textField: o.textField,
      ...(o.valFraction !== undefined ? { valFraction: o.valFraction } : {}),
      ...(o.shardTokens !== undefined ? { shardTokens: o.shardTokens } : {}), overwrite: !!o.overwrite,
      onProgress: (p) => bar.note(`${p.phase}: ${p.docs} documents, ${p.tokens} tokens, ${(p.bytes / 1e6).toFixed(1)} MB`),
    });
    bar.done();
    console.log(`documents: ${meta.documents.train} train, ${meta.documents.val} val; tokens: ${meta.tokens.train} train, ` +
      `${meta.tokens.val} val; ${meta.bytesPerToken.toFixed(2)} bytes/token; vocab ${meta.tokenizer.vocabSize}; -> ${o.out}`);
  });

program.command('eval')
  .description('loss and perplexity of a checkpoint on its validation split, a dataset, or a text file')
  .requiredOption('--checkpoint <dir>', 'checkpoint or run directory')
  .option('--data <dir>', 'prepared dataset folder (default: the one the checkpoint was trained on)')
  .option('--text <file>', 'a plain text file to score instead')
  .option('--batches <n>', 'maximum number of batches', (v) => Number(v), 50)
  .option('--batch-size <n>', 'batch size', (v) => Number(v), 8)
  .option('--backend <name>', 'ref | cpu | cuda')
  .action((o) => {
    const backend = selectBackend(o.backend);
    T.useBackend(backend);
    const { model, tokenizer, state } = loadModel(o.checkpoint, backend);
    let tokens: TokenSequence;
    if (o.text) {
      if (!fs.existsSync(o.text)) throw new Error(`text file not found: ${o.text}`);
      tokens = TokenSequence.from(tokenizer.encode(fs.readFileSync(o.text, 'utf8')));
    } else {
      const dir = o.data ?? datasetDirOf(state.train_config);
      tokens = loadDataset(dir).val;
    }
    const T_ = Math.min(model.config.seq_len, tokens.length - 1);
    evalBatches(tokens, { batchSize: 1, seqLen: T_, maxBatches: 1 }).next();
    const loss = evaluate(model, tokens, o.batchSize, T_, o.batches);
    console.log(`loss ${loss.toFixed(4)} nats/token, perplexity ${Math.exp(loss).toFixed(3)}`);
    model.dispose();
  });

program.command('generate')
  .description('sample text from a checkpoint')
  .requiredOption('--checkpoint <dir>', 'checkpoint or run directory')
  .argument('[prompt]', 'text to continue', 'The')
  .option('--max-tokens <n>', 'tokens to generate', (v) => Number(v), 200)
  .option('--temperature <t>', 'sampling temperature (0: greedy)', (v) => Number(v), 0.8)
  .option('--top-k <k>', 'sample among the k most likely tokens (0: all)', (v) => Number(v), 40)
  .option('--top-p <p>', 'nucleus sampling threshold', (v) => Number(v), 1)
  .option('--seed <n>', 'sampling seed', (v) => Number(v), 0)
  .option('--backend <name>', 'ref | cpu | cuda')
  .action((prompt: string, o) => {
    const backend = selectBackend(o.backend);
    T.useBackend(backend);
    const { model, tokenizer } = loadModel(o.checkpoint, backend);
    process.stdout.write(prompt);
    generate(model, tokenizer.encode(prompt), o.maxTokens, { temperature: o.temperature, topK: o.topK, topP: o.topP,
      seed: o.seed, stopId: tokenizer.eotId }, (id) => process.stdout.write(tokenizer.decode([id])));
    process.stdout.write('\n');
    model.dispose();
  });

function datasetDirOf(trainConfig: Record<string, unknown>): string {
  const cfg = parseTrainConfig(trainConfig);
  return cfg.data !== 'brown' && fs.existsSync(`${cfg.data}/meta.json`) ? cfg.data : cachedDatasetDir(cfg);
}

program.parseAsync(process.argv).catch((e: Error) => {
  console.error(`ssd: error: ${e.message}`);
  if (process.env.SSD_DEBUG) console.error(e.stack);
  process.exit(1);
});
