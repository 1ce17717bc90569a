/**
 * The comparison report's charts: Vega-Lite specs built from run data, rendered headless to SVG
 * documents through Vega (renderer 'none': no browser, no canvas; text widths are estimated).
 */
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import type { Phase } from './controller.js';

/** One validation-loss measurement of a run (from metrics.jsonl). */
export interface LossPoint {
  method: string;
  tokens: number;
  /** Wall-clock seconds since the run started. */
  elapsed_s: number;
  /** Nats per token. */
  val_loss: number;
}

/** One per-layer value at a step (activation ratio or pattern similarity, from 'check' events). */
export interface LayerPoint {
  step: number;
  /** 0-based layer index. */
  layer: number;
  value: number;
}

/** A stretch of training steps [start, end) one run spent in one phase. */
export interface PhaseSegment {
  method: string;
  phase: Phase;
  start: number;
  end: number;
}

const SCHEMA = 'https://vega.github.io/schema/vega-lite/v6.json';
const WIDTH = 560, HEIGHT = 300;
const PHASE_COLORS: Record<Phase, string> = { dense: '#4c78a8', sparse: '#f58518', final: '#54a24b' };
/** Fixed per-method colours, so a method looks the same in every chart. */
const METHOD_COLORS: Record<string, string> = { dense: '#333333', ssd: '#e45756', moe: '#b279a2' };

/** Renders a Vega-Lite spec to a standalone SVG document (a string starting with `<svg`). */
export async function renderSVG(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** A colour encoding by method (fixed colours, legend in the order the methods first appear). */
function methodColor(methods: string[]) {
  const domain = [...new Set(methods)];
  return { field: 'method', type: 'nominal', title: 'method', scale: { domain, range: domain.map((m) => METHOD_COLORS[m] ?? '#888888') } } as const;
}

/** Validation loss (nats/token) per method against trained tokens (`x = 'tokens'`) or wall-clock seconds. */
export function lossChart(points: LossPoint[], x: 'tokens' | 'elapsed_s'): TopLevelSpec {
  const xTitle = x === 'tokens' ? 'trained tokens' : 'wall-clock (s)';
  return {
    $schema: SCHEMA,
    title: `Validation loss vs ${x === 'tokens' ? 'tokens' : 'wall-clock'}`,
    width: WIDTH, height: HEIGHT, background: 'white',
    data: { values: points },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: x, type: 'quantitative', title: xTitle, axis: { format: x === 'tokens' ? '~s' : '~r' } },
      y: { field: 'val_loss', type: 'quantitative', title: 'validation loss (nats/token)', scale: { zero: false } },
      color: methodColor(points.map((p) => p.method)),
    },
  };
}

/** Options of layerChart. */
export interface LayerChartOptions {
  title: string;
  yTitle: string;
  /** Fixed y range (e.g. [0, 1]); default: fitted to the data. */
  yDomain?: [number, number];
  /** The run's phase segments: its sparse phases are drawn as light bands (checks happen only in dense phases). */
  phases: PhaseSegment[];
  totalSteps: number;
}

/** One line per layer of a per-layer quantity over training steps [0, totalSteps], over the run's sparse-phase bands. */
export function layerChart(points: LayerPoint[], o: LayerChartOptions): TopLevelSpec {
  const bands = o.phases.filter((s) => s.phase === 'sparse');
  const x = { type: 'quantitative' as const, title: 'step', scale: { domain: [0, o.totalSteps] } };
  return {
    $schema: SCHEMA,
    title: { text: o.title, subtitle: bands.length ? 'grey bands: sparse phases (no checks there)' : '' },
    width: WIDTH, height: HEIGHT, background: 'white',
    layer: [
      {
        data: { values: bands },
        mark: { type: 'rect', color: '#888888', opacity: 0.15 },
        encoding: { x: { field: 'start', ...x }, x2: { field: 'end' } },
      },
      {
        data: { values: points.map((p) => ({ ...p, layer: `layer ${p.layer}` })) },
        mark: { type: 'line', point: true },
        encoding: {
          x: { field: 'step', ...x },
          y: { field: 'value', type: 'quantitative', title: o.yTitle, scale: o.yDomain ? { domain: o.yDomain } : { zero: false } },
          color: { field: 'layer', type: 'nominal', title: 'layer', sort: [...new Set(points.map((p) => `layer ${p.layer}`))] },
        },
      },
    ],
  };
}

/** Phase bands (dense / sparse / final) per method over the training steps [0, totalSteps]. */
export function phaseChart(segments: PhaseSegment[], totalSteps: number): TopLevelSpec {
  const phases = Object.keys(PHASE_COLORS) as Phase[];
  return {
    $schema: SCHEMA,
    title: 'Phase timeline', width: WIDTH, height: { step: 36 }, background: 'white',
    data: { values: segments },
    mark: { type: 'bar', stroke: 'white', strokeWidth: 0.5 },
    encoding: {
      x: { field: 'start', type: 'quantitative', title: 'step', scale: { domain: [0, totalSteps] } },
      x2: { field: 'end' },
      y: { field: 'method', type: 'nominal', title: 'method', sort: [...new Set(segments.map((s) => s.method))] },
      color: { field: 'phase', type: 'nominal', title: 'phase', scale: { domain: phases, range: phases.map((p) => PHASE_COLORS[p]) } },
      tooltip: [{ field: 'phase' }, { field: 'start' }, { field: 'end' }],
    },
  };
}
