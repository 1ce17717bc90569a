#!/usr/bin/env node
/**
 * `ssd`: the command line. Each command parses flags (and a JSON config file), calls one library
 * function and prints progress.
 */
import { Command, Option } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { selectBackend } from '../backend/registry.js';
import { loadDataset, prepare, evalBatches, sameTokenizer, TokenSequence } from '../data/index.js';
import { benchInference } from '../infer/bench.js';
import { checkPrompts, checkSampleOptions, generateBatch } from '../infer/generate.js';
import { DEFAULT_ACTIVE_RATIO, DEFAULT_EXPERT_SIZE, loadForInference } from '../infer/mode.js';
import * as T from '../tensor/index.js';
import { readCheckpointState } from '../train/checkpoint.js';
import { parseTrainConfig, resumeConfig, TrainConfigFields, type TrainConfig } from '../train/config.js';
import { datasetDirOfCheckpoint, resolveDataset } from '../train/dataset.js';
import { loadModel } from '../train/load.js';
import { evaluate, modelConfigFor, train, type StepMetrics, type TrainSummary } from '../train/trainer.js';
import { joinGroup, rankFromEnv } from '../parallel/group.js';
import { exitWithLauncher, launchRanks, LaunchError } from '../parallel/launch.js';
import { cudaUnavailableReason } from '../backend/cuda/index.js';
import { loadCudaAddon } from '../backend/cuda/addon.js';
import { createSSDController } from '../ssd/index.js';
import { compare, parseMethods, parseRatios } from '../ssd/compare.js';
import { writeReport } from '../ssd/report.js';
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

/** The keys set explicitly: a JSON config file (if given) merged with the flags given on the command line. */
function explicitConfig(opts: Record<string, unknown>, cmd: Command): Record<string, unknown> {
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
  return raw;
}

/**
 * Merges the command's own `defaults` (they replace the schema's), a JSON config file (if given) and
 * the flags that were set explicitly (each overriding the one before), then validates.
 */
function configFrom(opts: Record<string, unknown>, cmd: Command, defaults: Record<string, unknown> = {}) {
  return parseTrainConfig({ ...defaults, ...explicitConfig(opts, cmd) });
}

addConfigFlags(program.command('train')
  .description('train a GPT (default: the tiny preset on the embedded Brown corpus)')
  .option('--config <file>', 'JSON training config (flags override it)')
  .option('--resume [dir]', 'continue a run exactly from a checkpoint or the newest one in a run directory (default: --out); ' +
    'the run keeps its stored config (only logging, checkpoint and backend settings may change, and batch size with world size at the same product)'))
  .action(async (opts, cmd: Command) => {
    let cfg: TrainConfig, resume: string | undefined;
    if (opts.resume) {
      const explicit = explicitConfig(opts, cmd);
      resume = opts.resume === true ? String(explicit.out ?? parseTrainConfig({}).out) : String(opts.resume);
      const { runDir, state } = readCheckpointState(resume);
      cfg = resumeConfig(state.train_config, explicit, runDir);
    } else cfg = configFrom(opts, cmd);
    if (cfg.threads) process.env.SSD_THREADS = String(cfg.threads);
    const rank = rankFromEnv();
    if (cfg.world_size > 1 && !rank) {
      // The launcher: prepares the data once, then runs one process per rank with the same arguments.
      checkDevices(cfg);
      const bar = new Progress();
      await resolveDataset(cfg, (p) => bar.note(`preparing data (${p.phase}): ${p.docs} documents, ${p.tokens} tokens`));
      bar.done();
      console.error(`ssd train: ${cfg.world_size} data-parallel ranks, batch ${cfg.batch_size} per rank ` +
        `(${cfg.batch_size * cfg.world_size * cfg.grad_accum} windows per step)`);
      await launchRanks({ size: cfg.world_size, script: process.argv[1]!, args: process.argv.slice(2) });
      return;
    }
    if (rank) exitWithLauncher();
    const lead = !rank || rank.rank === 0;
    const backend = selectBackend(cfg.backend);
    const bar = new Progress();
    const say = (line: string) => { if (lead) console.error(line); };
    say(`ssd train: model ${cfg.model}, backend ${backend.name}, data ${cfg.data}, out ${cfg.out}`);
    const dataset = await resolveDataset(cfg, (p) => bar.note(`preparing data (${p.phase}): ${p.docs} documents, ${p.tokens} tokens`));
    bar.done();
    T.useBackend(backend);
    say(`data: ${dataset.meta.tokens.train} train / ${dataset.meta.tokens.val} val tokens, tokenizer ${dataset.tokenizer.kind}, vocab ${dataset.tokenizer.vocabSize}`);
    const collective = rank ? joinGroup(backend, rank) : undefined;
    if (collective) say(`data parallel: ${collective.size} ranks on ${backend.name}; gradients summed by ${collective.transport}`);
    const controller = createSSDController(cfg, modelConfigFor(cfg, dataset.tokenizer.vocabSize), dataset,
      (line) => { if (lead) bar.log(line); }, lead ? cfg.out : null);
    if (lead) bar.start(cfg.steps);
    let s: TrainSummary;
    try {
      s = train(cfg, dataset, backend, {
        ...(resume ? { resume } : {}), hook: controller, ...(collective ? { collective } : {}),
        ...(lead ? { onStep: (m: StepMetrics) => bar.update(m.step, stepInfo(m)) } : {}),
      });
    } finally {
      collective?.dispose();
    }
    bar.done();
    if (!lead) return;
    console.log(`done: ${s.steps} steps, ${s.tokens} tokens in ${s.elapsed_s.toFixed(0)} s (${Math.round(s.tokens_per_s)} tok/s, ` +
      `${(s.flops_per_s / 1e9).toFixed(1)} GFLOP/s${s.mfu !== undefined ? `, MFU ${(s.mfu * 100).toFixed(1)}%` : ''})`);
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

/**
 * Before a data-parallel launch on cuda (the backend asked for, or the default where a GPU is usable):
 * throws unless the machine has a GPU per rank.
 */
function checkDevices(cfg: TrainConfig): void {
  const name = cfg.backend ?? process.env.SSD_BACKEND ?? (cudaUnavailableReason() === null ? 'cuda' : 'cpu');
  if (name !== 'cuda') return;
  const why = cudaUnavailableReason();
  if (why) throw new Error(why);
  const gpus = loadCudaAddon().probe().count;
  if (gpus < cfg.world_size) {
    throw new Error(`--world-size ${cfg.world_size} needs a GPU per rank, and this machine has ${gpus}; use --world-size ${gpus} or fewer`);
  }
}

/** The progress-line text of a logged training step. */
function stepInfo(m: StepMetrics): string {
  return `loss ${m.loss.toFixed(3)}${m.val_loss !== undefined ? ` val ${m.val_loss.toFixed(3)}` : ''}` +
    ` | ${Math.round(m.tokens_per_s)} tok/s | ${(m.flops_per_s / 1e9).toFixed(1)} GFLOP/s` +
    `${m.mfu !== undefined ? ` (MFU ${(m.mfu * 100).toFixed(1)}%)` : ''}${m.phase ? ` | ${m.phase}` : ''}`;
}

addConfigFlags(program.command('compare')
  .description('train dense and SSD (and moe) with the same seed, data and tokens, evaluate each dense and MoEfied, write a report')
  .option('--config <file>', 'JSON training config (flags override it)')
  .option('--methods <list>', 'methods to train, comma-separated (dense, ssd, moe)', 'dense,ssd')
  .option('--ratios <list>', 'active ratios k/E at which each final model is evaluated MoEfied', '0.125,0.25,0.5')
  .option('--report-only <dir>', 're-render the report of a finished comparison directory without training'))
  .action(async (opts, cmd: Command) => {
    if (opts.reportOnly) {
      const r = await writeReport(opts.reportOnly);
      console.log(`report: ${r.markdown} (figures: ${r.json}; charts: ${path.join(opts.reportOnly, 'plots')})`);
      return;
    }
    if (cmd.getOptionValueSource('method') === 'cli') throw new Error('compare trains several methods: use --methods, not --method');
    const methods = parseMethods(opts.methods), ratios = parseRatios(opts.ratios);
    const cfg = configFrom(opts, cmd, { out: 'runs/compare' });
    if (cfg.world_size > 1) throw new Error('compare runs in one process: train data-parallel runs with ssd train --world-size N');
    if (cfg.threads) process.env.SSD_THREADS = String(cfg.threads);
    const backend = selectBackend(cfg.backend);
    const bar = new Progress();
    console.error(`ssd compare: ${methods.join(', ')}; model ${cfg.model}, backend ${backend.name}, data ${cfg.data}, out ${cfg.out}`);
    const dataset = await resolveDataset(cfg, (p) => bar.note(`preparing data (${p.phase}): ${p.docs} documents, ${p.tokens} tokens`));
    bar.done();
    T.useBackend(backend);
    const command = ['ssd', ...process.argv.slice(2)].map((a) => (/^[\w.,/=:+-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
    const res = await compare({
      config: cfg, methods, ratios, dataset, backend, command,
      on: {
        runStart: (m, c) => {
          console.error(`${m}: training ${c.steps} steps into ${c.out}`);
          bar.start(c.steps);
        },
        step: (_m, s) => bar.update(s.step, stepInfo(s)),
        log: (line) => bar.log(line),
        runEnd: (m, s) => {
          bar.done();
          console.error(`${m}: ${s.elapsed_s.toFixed(1)} s, val loss ${s.val_loss.toFixed(4)}; evaluating dense and MoEfied`);
        },
      },
    });
    for (const t of res.report.targets) console.log(t.line.replace(/\*\*/g, ''));
    console.log(`report: ${res.markdown}`);
  });

program.command('prepare')
  .description('tokenize a corpus (text file/folder, .jsonl, .parquet, or "brown") into token shards')
  .argument('<input>', "corpus path, or 'brown' for the embedded Brown corpus")
  .requiredOption('--out <dir>', 'output dataset folder')
  .addOption(new Option('--tokenizer <kind>', 'tokenizer').choices(['byte', 'bpe', 'gpt2']).default('bpe'))
  .option('--vocab-size <n>', 'vocabulary size of a trained BPE', int('--vocab-size'), 1024)
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
  .option('--batches <n>', 'maximum number of batches', int('--batches'), 50)
  .option('--batch-size <n>', 'batch size', int('--batch-size'), 8)
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
      const data = loadDataset(o.data ?? datasetDirOfCheckpoint(state.train_config));
      if (!sameTokenizer(data.tokenizer, tokenizer)) {
        throw new Error(`the dataset ${data.dir} was tokenized differently from the checkpoint's tokenizer; ` +
          'prepare it with the same tokenizer or score a text file with --text');
      }
      tokens = data.val;
    }
    if (tokens.length < 2) throw new Error('the text is too short to score (fewer than 2 tokens)');
    const T_ = Math.min(model.config.seq_len, tokens.length - 1);
    evalBatches(tokens, { batchSize: 1, seqLen: T_, maxBatches: 1 }).next();
    const loss = evaluate(model, tokens, o.batchSize, T_, o.batches);
    console.log(`loss ${loss.toFixed(4)} nats/token, perplexity ${Math.exp(loss).toFixed(3)}`);
    model.dispose();
  });

/** Parses a number flag, with a clear error. */
function num(flag: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n)) throw new Error(`${flag} expects a number, got '${v}'`);
    return n;
  };
}

/** Parses a positive integer flag, with a clear error. */
function int(flag: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} expects a positive integer, got '${v}'`);
    return n;
  };
}

/** The MoE routing flags shared by generate and bench. */
function addMoEFlags(cmd: Command): Command {
  return cmd
    .option('--n-expert <n>', `experts per FFN layer (default: the checkpoint's partition, else d_ff / ${DEFAULT_EXPERT_SIZE})`, num('--n-expert'))
    .option('--no-moefy', 'do not MoEfy at load a checkpoint that stores no expert partition (MoE mode then fails)');
}

addMoEFlags(program.command('generate')
  .description('sample text from a checkpoint, dense or as a sparse MoE, with a KV cache (tokens stream as they come)')
  .requiredOption('--checkpoint <dir>', 'checkpoint or run directory')
  .argument('[prompts...]', 'text to continue; several prompts are generated as one batch', ['The'])
  .addOption(new Option('--mode <mode>', 'dense FFN or sparse MoE').choices(['dense', 'moe']).default('dense'))
  .option('--active-ratio <r>', `MoE: experts per token / n_expert (default ${DEFAULT_ACTIVE_RATIO})`, num('--active-ratio'))
  .option('--moe-top-k <k>', 'MoE: experts per token (overrides --active-ratio)', num('--moe-top-k'))
  .option('--max-tokens <n>', 'tokens to generate per prompt', num('--max-tokens'), 200)
  .option('--temperature <t>', 'sampling temperature (0: greedy)', num('--temperature'), 0.8)
  .option('--top-k <k>', 'sample among the k most likely tokens (0: all)', num('--top-k'), 40)
  .option('--top-p <p>', 'nucleus sampling threshold', num('--top-p'), 1)
  .option('--seed <n>', 'sampling seed (prompt i uses seed + i)', num('--seed'), 0)
  .option('--stop <text>', 'stop a prompt\'s generation at this string, cut before it (repeatable)',
    (v: string, all: string[]) => [...all, v], [] as string[])
  .option('--backend <name>', 'ref | cpu | cuda'))
  .action((prompts: string[], o) => {
    const backend = selectBackend(o.backend);
    T.useBackend(backend);
    const m = loadForInference(o.checkpoint, backend, o.mode, {
      ...(o.nExpert !== undefined ? { nExpert: o.nExpert } : {}), ...(o.moeTopK !== undefined ? { topK: o.moeTopK } : {}),
      ...(o.activeRatio !== undefined ? { activeRatio: o.activeRatio } : {}), moefy: o.moefy,
    });
    try {
      if (m.experts) {
        console.error(`MoE mode: ${m.topK} of ${m.experts.nExpert} experts per token (${m.experts.source}` +
          `${m.experts.source === 'moefied' ? `, ${m.experts.seconds.toFixed(1)} s` : ''})`);
      }
      const single = prompts.length === 1, ids = prompts.map((p) => m.tokenizer.encode(p));
      checkPrompts(m.model, ids);
      checkSampleOptions({ temperature: o.temperature, topK: o.topK, topP: o.topP });
      if (single) process.stdout.write(prompts[0]!);
      const r = generateBatch(m.model, ids, {
        temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed, maxTokens: o.maxTokens,
        stopId: m.tokenizer.eotId, stop: o.stop, decode: (ids) => m.tokenizer.decode(ids),
      }, single ? { onText: (_, t) => process.stdout.write(t) } : {});
      if (single) process.stdout.write('\n');
      else r.texts.forEach((t, i) => console.log(`--- [${i}] (${r.finish[i]})\n${prompts[i]}${t}`));
      const n = r.tokens.reduce((a, t) => a + t.length, 0);
      console.error(`${n} tokens; prefill ${(r.prefillSeconds * 1000).toFixed(0)} ms, decode ` +
        `${(r.decodeSteps * prompts.length / Math.max(r.decodeSeconds, 1e-9)).toFixed(1)} tok/s${r.graphed ? ' (CUDA graph)' : ''}`);
      if (r.graphError) console.error(`note: decode ran without a CUDA graph (capture failed: ${r.graphError})`);
    } finally {
      m.dispose();
    }
  });

addMoEFlags(program.command('bench')
  .description('inference speed (prefill, decode at batch 1 and 8) and perplexity, dense vs MoE side by side')
  .option('--checkpoint <dir>', 'checkpoint or run directory (default: random weights, gpt2-small shape, vocab 8192)')
  .option('--ratios <list>', 'MoE active ratios, comma-separated', '0.25,0.5')
  .option('--prefill-tokens <n>', 'prompt length of the prefill measurement', num('--prefill-tokens'), 512)
  .option('--decode-tokens <n>', 'decode steps measured', num('--decode-tokens'), 64)
  .option('--batches <list>', 'decode batch sizes, comma-separated', '1,8')
  .option('--rounds <n>', 'interleaved rounds (best kept)', num('--rounds'), 3)
  .option('--data <dir>', 'dataset for validation perplexity (default: the checkpoint\'s)')
  .option('--val-batches <n>', 'validation batches of 8 sequences', num('--val-batches'), 20)
  .option('--json <file>', 'also write the report as JSON')
  .option('--backend <name>', 'ref | cpu | cuda'))
  .action((o) => {
    const backend = selectBackend(o.backend);
    T.useBackend(backend);
    const list = (v: string) => v.split(',').map(num('list entry'));
    const report = benchInference(backend, {
      ...(o.checkpoint ? { checkpoint: o.checkpoint } : {}), ...(o.nExpert !== undefined ? { nExpert: o.nExpert } : {}),
      ...(o.data ? { data: o.data } : {}), ratios: list(o.ratios), batches: list(o.batches), prefillTokens: o.prefillTokens,
      decodeTokens: o.decodeTokens, rounds: o.rounds, valBatches: o.valBatches, moefy: o.moefy, log: (l) => console.log(l),
    });
    if (o.json) fs.writeFileSync(o.json, JSON.stringify(report, null, 2) + '\n');
  });

program.parseAsync(process.argv).catch((e: Error) => {
  console.error(`ssd: error: ${e.message}`);
  if (process.env.SSD_DEBUG) console.error(e.stack);
  process.exit(e instanceof LaunchError ? e.exitCode : 1);
});
