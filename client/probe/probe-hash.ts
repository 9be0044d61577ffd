// The probe split's fingerprint: SHA-256 of its examples as float32 (little-endian, row-major),
// through WebCrypto, which Node 20 and browsers both have, so the device core needs no Node module.

/** Lower-case hex SHA-256 of the float32 bytes of `x`. */
export async function probeHash(x: Float32Array): Promise<string> {
  const bytes = new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  // A float32 array over a plain ArrayBuffer (the typings allow a SharedArrayBuffer too).
  const digest = await globalThis.crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}
