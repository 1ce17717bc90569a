/** Progress display: a live bar (cli-progress) on a terminal, plain lines when output is not a TTY. */
import cliProgress from 'cli-progress';

export class Progress {
  private bar: cliProgress.SingleBar | null = null;
  private readonly tty = !!process.stderr.isTTY;
  private lastPlain = 0;

  /** Starts a bar of `total` steps. */
  start(total: number): void {
    if (!this.tty) return;
    this.bar = new cliProgress.SingleBar({
      format: 'step {value}/{total} [{bar}] {percentage}% | ETA {eta_formatted} | {info}',
      stream: process.stderr, hideCursor: true, etaBuffer: 20,
    }, cliProgress.Presets.shades_classic);
    this.bar.start(total, 0, { info: '' });
  }

  /** Moves the bar to `step` with an info text (or prints a line when not a TTY). */
  update(step: number, info: string): void {
    if (this.bar) this.bar.update(step, { info });
    else console.error(`step ${step}: ${info}`);
  }

  /** A permanent line printed above the bar (or as is when not a TTY). */
  log(line: string): void {
    if (this.bar) {
      process.stderr.write('\r\x1b[K');
      console.error(line);
      this.bar.render?.();
    } else console.error(line);
  }

  /** A transient status note (rate-limited to one line per 2 s when not a TTY). */
  note(text: string): void {
    if (this.tty) {
      process.stderr.write(`\r${text}\x1b[K`);
      return;
    }
    const now = Date.now();
    if (now - this.lastPlain > 2000) {
      console.error(text);
      this.lastPlain = now;
    }
  }

  done(): void {
    if (this.bar) {
      this.bar.stop();
      this.bar = null;
    } else if (this.tty) process.stderr.write('\n');
  }
}
