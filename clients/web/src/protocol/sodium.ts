/**
 * libsodium (the "sumo" build: crypto_box, Ed25519, SHA-2, and for the app
 * Argon2id through crypto_pwhash and secretbox), loaded once.
 *
 * `await ready()` once before using anything of the protocol layer that
 * does cryptography; every other module assumes it was awaited. `sodium()`
 * is the initialized module, and throws if `ready()` has not resolved yet.
 */
import libsodium from "libsodium-wrappers-sumo";

/** The libsodium.js API. */
export type Sodium = typeof libsodium;

let loading: Promise<void> | undefined;
let loaded = false;

/** Resolves once libsodium is initialized (its WebAssembly compiled). */
export function ready(): Promise<void> {
  loading ??= libsodium.ready.then(() => {
    loaded = true;
  });
  return loading;
}

/** The initialized libsodium; throws Error if `ready()` has not resolved. */
export function sodium(): Sodium {
  if (!loaded) throw new Error("libsodium is not ready: await ready() first");
  return libsodium;
}
