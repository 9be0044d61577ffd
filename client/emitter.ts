// A small typed event emitter for the device core, in place of node:events (which browsers lack).
// It keeps the part of EventEmitter's contract the device uses: on/once/off return `this`,
// listeners run synchronously in the order they were added, emit() works on a copy of the list
// (a listener added or removed while emitting takes effect at the next emit), a throwing listener
// throws out of emit(), and emit() returns whether anyone listened.

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Listener = (...args: any[]) => void;

export class TypedEmitter<T extends { [K in keyof T]: unknown[] }> {
  private readonly listeners = new Map<keyof T, Listener[]>();

  on<K extends keyof T>(event: K, fn: (...args: T[K]) => void): this {
    const list = this.listeners.get(event);
    if (list) list.push(fn as Listener);
    else this.listeners.set(event, [fn as Listener]);
    return this;
  }

  addListener<K extends keyof T>(event: K, fn: (...args: T[K]) => void): this {
    return this.on(event, fn);
  }

  once<K extends keyof T>(event: K, fn: (...args: T[K]) => void): this {
    const wrapper = (...args: T[K]) => {
      this.off(event, wrapper);
      fn(...args);
    };
    (wrapper as { listener?: unknown }).listener = fn;
    return this.on(event, wrapper);
  }

  off<K extends keyof T>(event: K, fn: (...args: T[K]) => void): this {
    const list = this.listeners.get(event);
    if (!list) return this;
    // The last registration of fn (or of a once-wrapper around it), as node:events removes.
    for (let i = list.length - 1; i >= 0; i--) {
      const l = list[i] as Listener & { listener?: unknown };
      if (l === fn || l.listener === fn) {
        list.splice(i, 1);
        break;
      }
    }
    if (list.length === 0) this.listeners.delete(event);
    return this;
  }

  removeListener<K extends keyof T>(event: K, fn: (...args: T[K]) => void): this {
    return this.off(event, fn);
  }

  removeAllListeners(event?: keyof T): this {
    if (event === undefined) this.listeners.clear();
    else this.listeners.delete(event);
    return this;
  }

  listenerCount(event: keyof T): number {
    return this.listeners.get(event)?.length ?? 0;
  }

  emit<K extends keyof T>(event: K, ...args: T[K]): boolean {
    const list = this.listeners.get(event);
    if (!list || list.length === 0) return false;
    for (const fn of [...list]) fn(...args);
    return true;
  }
}
