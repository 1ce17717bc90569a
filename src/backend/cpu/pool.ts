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

  /** @param limit budget in bytes (arrays larger than it are never kept) */
  constructor(private readonly limit: number) {}

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
    if (a.byteLength === 0 || a.byteLength > this.limit) return;
    for (const [k, list] of this.classes) {
      if (this.bytes + a.byteLength <= this.limit) break;
      if (k === key) continue;
      while (list.length > 0 && this.bytes + a.byteLength > this.limit) this.bytes -= list.pop()!.byteLength;
      if (list.length === 0) this.classes.delete(k);
    }
    if (this.bytes + a.byteLength > this.limit) return; // only same-class arrays are left
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
