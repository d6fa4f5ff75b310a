/*
 * Full-jitter exponential backoff, as the C client does it: the n-th delay
 * is uniform in [base/4, min(cap, base * 2^n)]. The floor keeps a run of
 * small draws from becoming a busy loop.
 */
export interface BackoffOptions {
  baseMs: number;
  capMs: number;
}

export function backoffDelay(attempt: number, o: BackoffOptions, rand: () => number = Math.random): number {
  const ceiling = Math.min(o.capMs, o.baseMs * 2 ** Math.min(attempt, 30));
  const floor = Math.min(o.baseMs / 4, ceiling);
  return Math.round(floor + rand() * (ceiling - floor));
}
