/**
 * Freed cpu buffers kept for reuse, by exact size class (`dtype:size`), within a byte budget. When a
 * freed array does not fit, the arrays of the least recently used size classes are dropped first, so
 * a run whose shapes change (a dense phase followed by a sparse one, a benchmark sweeping sizes) keeps
 * recycling its current buffers instead of allocating (and page-faulting) fresh ones every step.
 */
export class ArrayPool<A extends { byteLength: number }> {
  /** Size classes in least- to most-recently-used order (a Map iterates in insertion order). */
  private readonly classes = new Map<string, A[]>();
  private bytes = 0;

  /**
   * @param limit budget in bytes (arrays larger than it are never kept)
   * @throws Error when limit is not a finite number >= 0
   */
  constructor(private readonly limit: number) {
    if (!Number.isFinite(limit) || limit < 0) throw new Error(`buffer pool: the limit must be a number of bytes >= 0, got ${limit}`);
  }

  /** Bytes held. */
  get pooledBytes(): number {
    return this.bytes;
  }

  /** A pooled array of size class `key`, or undefined; marks the class as recently used. */
  take(key: string): A | undefined {
    const list = this.classes.get(key);
    const a = list?.pop();
    if (!a) return undefined;
    this.touch(key, list!);
    this.bytes -= a.byteLength;
    return a;
  }

  /** Keeps `a` for reuse under `key`, evicting least recently used classes to stay within the limit. */
  put(key: string, a: A): void {
    const own = (this.classes.get(key) ?? []).reduce((n, x) => n + x.byteLength, 0);
    if (a.byteLength === 0 || own + a.byteLength > this.limit) return; // evicting others would not make room
    for (const [k, list] of this.classes) {
      if (this.bytes + a.byteLength <= this.limit) break;
      if (k === key) continue;
      while (list.length > 0 && this.bytes + a.byteLength > this.limit) this.bytes -= list.pop()!.byteLength;
      if (list.length === 0) this.classes.delete(k);
    }
    const list = this.classes.get(key) ?? [];
    list.push(a);
    this.touch(key, list);
    this.bytes += a.byteLength;
  }

  /** Drops every pooled array. */
  clear(): void {
    this.classes.clear();
    this.bytes = 0;
  }

  private touch(key: string, list: A[]): void {
    this.classes.delete(key);
    if (list.length > 0) this.classes.set(key, list);
  }
}
