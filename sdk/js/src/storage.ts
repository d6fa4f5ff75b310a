/* Where the cursor is kept between runs (and page reloads). */

/** get/set may be synchronous or return promises. */
export interface StorageLike {
  get(key: string): string | null | undefined | Promise<string | null | undefined>;
  set(key: string, value: string): void | Promise<void>;
}

/** A store that lives as long as the process. */
export function memoryStorage(): StorageLike {
  const m = new Map<string, string>();
  return { get: (k) => m.get(k) ?? null, set: (k, v) => { m.set(k, v); } };
}

/** localStorage when the platform has a usable one (not in Node, not when blocked), else memory. */
export function defaultStorage(): StorageLike {
  try {
    const ls = (globalThis as { localStorage?: Storage }).localStorage;
    if (ls) {
      const probe = '__mbox_probe__';
      ls.setItem(probe, '1');
      ls.removeItem(probe);
      return { get: (k) => ls.getItem(k), set: (k, v) => ls.setItem(k, v) };
    }
  } catch {
    // Storage disabled (privacy mode, sandboxed frame): fall through.
  }
  return memoryStorage();
}
