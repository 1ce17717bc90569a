#!/usr/bin/env node
// Builds the CUDA backend addon build/Release/ssd_cuda.node from native/cuda when nvcc is found
// (NVCC, CUDA_HOME/bin, PATH, /usr/local/cuda/bin); without nvcc it prints a note and exits 0, so a
// machine without CUDA installs and runs on the cpu backend. Runs after `node-gyp rebuild` in `npm ci`.
// Fatbins for sm_80 and sm_90a plus compute_90 PTX; the CUDA runtime is linked statically
// (libcudart_static) so the addon loads on a machine without a GPU or driver; cuBLAS is dlopen'ed at
// run time. SSD_SKIP_CUDA=1 skips the build; SSD_CUDA_ARCHS overrides the -gencode list
// (e.g. "90a" for a faster local build).
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'native', 'cuda');
const common = join(root, 'native', 'common');
const out = join(root, 'build', 'Release', 'ssd_cuda.node');

if (process.env.SSD_SKIP_CUDA === '1') {
  console.log('ssd: SSD_SKIP_CUDA=1, not building the CUDA backend');
  process.exit(0);
}

function findNvcc() {
  const cands = [];
  if (process.env.NVCC) cands.push(process.env.NVCC);
  for (const v of ['CUDA_HOME', 'CUDA_PATH']) if (process.env[v]) cands.push(join(process.env[v], 'bin', 'nvcc'));
  cands.push('/usr/local/cuda/bin/nvcc');
  for (const d of (process.env.PATH ?? '').split(':')) if (d) cands.push(join(d, 'nvcc'));
  return cands.find((p) => existsSync(p));
}

const nvcc = findNvcc();
if (!nvcc) {
  console.log('ssd: nvcc not found; the CUDA backend is not built (the cpu backend works without it)');
  process.exit(0);
}
// The toolkit folder: nvcc's parent (nvcc may be a wrapper script elsewhere), CUDA_HOME, /usr/local/cuda.
const homes = [resolve(dirname(realpathSync(nvcc)), '..'), process.env.CUDA_HOME, '/usr/local/cuda'].filter(Boolean);
let cudaHome = homes[0], libDir;
for (const h of homes) {
  libDir = [join(h, 'lib64'), join(h, 'targets', 'x86_64-linux', 'lib'), join(h, 'lib')]
    .find((d) => existsSync(join(d, 'libcudart_static.a')));
  if (libDir) { cudaHome = h; break; }
}
const cudaInc = join(cudaHome, 'include');
if (!libDir) {
  console.error(`ssd: libcudart_static.a not found under ${cudaHome}; cannot build the CUDA backend`);
  process.exit(1);
}

// Node-API headers: the running node's include/node, else node-gyp's cache.
function nodeInclude() {
  const c = [join(dirname(process.execPath), '..', 'include', 'node')];
  const home = process.env.HOME ?? '';
  for (const base of [join(home, '.cache', 'node-gyp'), join(home, '.node-gyp')]) {
    c.push(join(base, process.versions.node, 'include', 'node'));
  }
  return c.find((d) => existsSync(join(d, 'node_api.h')));
}
const nodeInc = nodeInclude();
if (!nodeInc) {
  console.error('ssd: node_api.h not found (node headers); cannot build the CUDA backend');
  process.exit(1);
}
const require = createRequire(import.meta.url);
const napiInc = require('node-addon-api').include_dir.replace(/^"|"$/g, '');

const archs = (process.env.SSD_CUDA_ARCHS ?? '80,90a,90ptx').split(',').map((s) => s.trim()).filter(Boolean);
// Objects per architecture list, and the list the addon was last linked for: a build for other
// architectures neither reuses objects compiled for these nor keeps an addon linked from them.
const archKey = archs.join('-');
const objDir = join(root, 'build', 'cuda', archKey);
const linkedFor = `${out}.archs`;
const gencode = archs.flatMap((a) => a.endsWith('ptx')
  ? ['-gencode', `arch=compute_${a.slice(0, -3)},code=compute_${a.slice(0, -3)}`]
  : ['-gencode', `arch=compute_${a},code=sm_${a}`]);

mkdirSync(objDir, { recursive: true });
mkdirSync(dirname(out), { recursive: true });

const headers = [src, common].flatMap((d) => readdirSync(d).filter((f) => f.endsWith('.h') || f.endsWith('.cuh')).map((f) => join(d, f)));
const newestHeader = Math.max(...headers.map((h) => statSync(h).mtimeMs));
const stale = (o, s) => !existsSync(o) || statSync(o).mtimeMs < Math.max(statSync(s).mtimeMs, newestHeader);

const jobs = [];
const objs = [];
for (const f of readdirSync(src).sort()) {
  const s = join(src, f);
  if (f.endsWith('.cu')) {
    const o = join(objDir, f.replace(/\.cu$/, '.o'));
    objs.push(o);
    if (stale(o, s)) {
      jobs.push([nvcc, ['-c', s, '-o', o, '-O3', '-std=c++17', '-Xcompiler', '-fPIC', '--expt-relaxed-constexpr',
        '-I', src, ...gencode]]);
    }
  } else if (f.endsWith('.cc')) {
    const o = join(objDir, f.replace(/\.cc$/, '.o'));
    objs.push(o);
    if (stale(o, s)) {
      jobs.push(['g++', ['-c', s, '-o', o, '-O2', '-fPIC', '-std=c++17', '-fexceptions', '-DNAPI_VERSION=8',
        '-DNODE_ADDON_API_CPP_EXCEPTIONS', '-I', src, '-I', common, '-I', cudaInc, '-I', nodeInc, '-I', napiInc]]);
    }
  }
}

function run([cmd, args]) {
  return new Promise((res, rej) => {
    const p = spawn(cmd, args, { stdio: 'inherit' });
    p.on('error', rej);
    p.on('exit', (code) => (code === 0 ? res() : rej(new Error(`${cmd} ${args[1]} failed (exit ${code})`))));
  });
}

const t0 = Date.now();
const parallel = Math.max(1, Number(process.env.SSD_CUDA_JOBS ?? 4));
const queue = [...jobs];
try {
  await Promise.all(Array.from({ length: Math.min(parallel, queue.length) }, async () => {
    while (queue.length) await run(queue.shift());
  }));
  const relink = jobs.length > 0 || !existsSync(out) || !existsSync(linkedFor) || readFileSync(linkedFor, 'utf8') !== archKey;
  if (relink) {
    execFileSync('g++', ['-shared', '-o', out, ...objs, '-L', libDir, '-lcudart_static', '-ldl', '-lrt', '-lpthread'],
      { stdio: 'inherit' });
    writeFileSync(linkedFor, archKey);
  }
} catch (e) {
  console.error(`ssd: building the CUDA backend failed: ${e.message}`);
  process.exit(1);
}
console.log(`ssd: built ${out} with ${nvcc} (${archs.join(', ')}) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
