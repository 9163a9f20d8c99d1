/**
 * The application's fingerprint, as `miss-admin web-hash` prints it:
 * "sha256:" and the hex SHA-256 of index.html, which pins every other file
 * of the bundle with its `integrity` attribute (Subresource Integrity). The
 * page hashes the index.html its own origin serves, so an operator (or a
 * clinician) can compare it with the published value.
 */
import { toHex } from "../protocol/bytes";

export async function bundleHash(): Promise<string> {
  const response = await fetch(new URL("index.html", location.href), { cache: "no-store" });
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", await response.arrayBuffer()));
  return "sha256:" + toHex(digest);
}
