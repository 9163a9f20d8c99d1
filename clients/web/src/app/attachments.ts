/**
 * Attachments on this device (SPEC §16), beside MissClient (client.ts),
 * which owns the connection and hands this module what it needs
 * (`AttachmentHost`).
 *
 * Contract:
 * - `limits`: what the hub's welcome said (`att_max`, `blob_max`), or the
 *   reference defaults (6 files, 20 MiB) before a welcome.
 * - `check(files, already)`: refuses, before anything is read or uploaded,
 *   a file past `att_max` or over `blob_max` (`AttachmentRefused`, whose
 *   `message` is the French sentence the interface shows).
 * - `prepare(file)`: reads the file's first bytes (its type is what they
 *   say, never the name or the browser's guess: `sniffType`), encrypts it
 *   (fresh key, secretstream) into a `Blob` kept in memory, and makes a
 *   thumbnail for images the browser decodes (JPEG ≤ THUMB_MAX bytes,
 *   longest side ≤ 160 px).
 * - `upload(messageId, prepared)`: uploads over the WebSocket
 *   (`blob_begin`, up to WINDOW `blob_put`s in flight, `blob_end`), with
 *   `progress(messageId)` for the interface; after a reconnection it
 *   resumes from the hub's `have` (`blob_begin {blob}`), never from 0.
 *   Resolves to the descriptors the message's plaintext carries.
 * - `fetch(att)`: `blob_link`, then HTTP GETs of ranges of `/blobs/<token>`
 *   on the hub's port until `size`, each part checked and decrypted as it
 *   comes; resolves to the plaintext once length, hash and final tag check
 *   (`AttachmentError` otherwise: "Pièce jointe altérée"), or throws
 *   `AttachmentUnavailable` (404, `unknown_blob`: expired or recalled).
 *   Results are cached per blob for the page's life.
 */
import {
  ALLOWED_TYPES,
  type Attachment,
  AttachmentError,
  CHUNK,
  Decryptor,
  Encryptor,
  HTTP_PART_MAX,
  PIECE_MAX,
  Sha256,
  THUMB_MAX,
  cipherSize,
  sniffType,
} from "../protocol/attachments";
import { ProtocolError } from "../protocol/errors";
import type { BlobLinkOk, BlobOk, HubFrame } from "../protocol/frames";
import { sodium } from "../protocol/sodium";
import { t } from "./i18n";

export { AttachmentError };

/** What the attachments module needs of the client. */
export interface AttachmentHost {
  /** Send a request for a fresh rid and wait for its answer (errors thrown). */
  request<T extends HubFrame>(build: (rid: number) => unknown): Promise<T>;
  /** The hub's http(s) base URL (from the WebSocket URL). */
  readonly httpBase: string;
  /** The welcome's limits, if the hub said them. */
  readonly welcomeLimits: { att_max?: number; blob_max?: number } | null;
  /** Something the interface shows changed. */
  changed(): void;
}

/** A file refused before anything was uploaded; `message` is shown as is. */
export class AttachmentRefused extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AttachmentRefused";
  }
}

/** The blob is gone: expired, recalled, or never ours to read. */
export class AttachmentUnavailable extends Error {
  constructor() {
    super(t("att.unavailable"));
    this.name = "AttachmentUnavailable";
  }
}

/** A file ready to upload: encrypted, described (but for its blob id). */
export interface Prepared {
  name: string;
  type: string;
  size: number;
  key: Uint8Array;
  hash: Uint8Array;
  cipher: Blob;
  thumb?: Uint8Array;
  w?: number;
  h?: number;
  /** Set by the first `blob_ok`; kept to resume. */
  blob?: string;
  /** Ciphertext bytes the hub holds. */
  have: number;
  done: boolean;
}

/** Pieces of an upload in flight at once. */
const WINDOW = 8;
const THUMB_SIDE = 160;
export const DEFAULT_ATT_MAX = 6;
export const DEFAULT_BLOB_MAX = 20 * 1024 * 1024;

/** "2,4 Mo", "35 Ko": a size as the interface writes it. */
export function formatSize(bytes: number): string {
  if (bytes >= 1024 * 1024) return t("att.size_mb", { n: (bytes / (1024 * 1024)).toLocaleString("fr-FR", { maximumFractionDigits: 1 }) });
  return t("att.size_kb", { n: Math.max(1, Math.round(bytes / 1024)) });
}

/** True for the image types a browser may show (HEIC: only if it decodes it). */
export function isImageType(type: string): boolean {
  return type.startsWith("image/");
}

export class Attachments {
  /** Uploads by message id (hex): what the outbox needs to send them. */
  private readonly outgoing = new Map<string, Prepared[]>();
  private readonly cache = new Map<string, Promise<Uint8Array>>();

  constructor(private readonly host: AttachmentHost) {}

  get limits(): { attMax: number; blobMax: number } {
    const w = this.host.welcomeLimits;
    return { attMax: w?.att_max ?? DEFAULT_ATT_MAX, blobMax: w?.blob_max ?? DEFAULT_BLOB_MAX };
  }

  /** Throws AttachmentRefused for the first of `files` that may not join the
   * `already` files of the message: one too many, or too large. */
  check(files: readonly { name: string; size: number }[], already = 0): void {
    const { attMax, blobMax } = this.limits;
    if (already + files.length > attMax) throw new AttachmentRefused(t("att.too_many", { max: attMax }));
    for (const f of files) {
      if (f.size > blobMax) throw new AttachmentRefused(t("att.too_large", { name: f.name, max: formatSize(blobMax) }));
    }
  }

  /** Encrypt `file` and describe it; AttachmentRefused for a type not allowed. */
  async prepare(file: File): Promise<Prepared> {
    this.check([file]);
    const first = new Uint8Array(await file.slice(0, 16).arrayBuffer());
    const type = sniffType(first, file.name);
    if (type === null || !(ALLOWED_TYPES as readonly string[]).includes(type)) {
      throw new AttachmentRefused(t("att.bad_type", { name: file.name }));
    }
    const key = sodium().randombytes_buf(32);
    const enc = new Encryptor(key);
    const hasher = new Sha256();
    const parts: Uint8Array[] = [enc.header];
    hasher.update(enc.header);
    let off = 0;
    do {
      const chunk = new Uint8Array(await file.slice(off, off + CHUNK).arrayBuffer());
      off += chunk.length;
      const c = enc.push(chunk, off >= file.size);
      hasher.update(c);
      parts.push(c);
    } while (off < file.size);
    const cipher = new Blob(parts as BlobPart[], { type: "application/octet-stream" });
    if (cipher.size !== cipherSize(file.size)) throw new AttachmentError("the file changed while it was read");
    const p: Prepared = { name: safeName(file.name, type), type, size: file.size, key, hash: hasher.digest(), cipher, have: 0, done: false };
    if (type === "image/jpeg" || type === "image/png" || type === "image/heic" || type === "image/heif") {
      Object.assign(p, await thumbnail(file));
    }
    return p;
  }

  /** Keep the prepared files of a message until they are uploaded. */
  keep(messageId: string, files: Prepared[]): void {
    this.outgoing.set(messageId, files);
  }

  /** Whether this page holds the files of `messageId` (false after a reload). */
  holds(messageId: string): boolean {
    return this.outgoing.has(messageId);
  }

  /** Forget a message's files (sent, failed or recalled). */
  drop(messageId: string): void {
    this.outgoing.delete(messageId);
  }

  /** Each file's upload progress, 0 … 1, in order. */
  progress(messageId: string): number[] | null {
    const files = this.outgoing.get(messageId);
    if (!files) return null;
    return files.map((f) => (f.done ? 1 : f.have / f.cipher.size));
  }

  /** Upload every file of the message not uploaded yet; the descriptors. */
  async upload(messageId: string): Promise<Attachment[]> {
    const files = this.outgoing.get(messageId);
    if (!files) throw new AttachmentRefused(t("att.lost"));
    for (const f of files) if (!f.done) await this.uploadOne(f);
    return files.map((f) => {
      const a: Attachment = { blob: f.blob!, key: f.key, hash: f.hash, size: f.size, type: f.type, name: f.name };
      if (f.thumb !== undefined) a.thumb = f.thumb;
      if (f.w !== undefined && f.h !== undefined) {
        a.w = f.w;
        a.h = f.h;
      }
      return a;
    });
  }

  private async uploadOne(f: Prepared): Promise<void> {
    const size = f.cipher.size;
    for (let restarts = 0; ; restarts++) {
      let ok: BlobOk;
      try {
        ok = await this.host.request<BlobOk>((rid) => (f.blob ? { t: "blob_begin", rid, size, blob: f.blob } : { t: "blob_begin", rid, size }));
      } catch (err) {
        // An upload the hub no longer knows (expired): start it again.
        if (err instanceof ProtocolError && err.code === "unknown_blob" && f.blob && restarts < 2) {
          f.blob = undefined;
          f.have = 0;
          continue;
        }
        throw err;
      }
      f.blob = ok.blob;
      f.have = ok.have;
      this.host.changed();
      try {
        await this.putFrom(f, size);
      } catch (err) {
        if (err instanceof ProtocolError && err.code === "blob_offset" && restarts < 4) continue; // ask where it stands
        throw err;
      }
      await this.host.request<BlobOk>((rid) => ({ t: "blob_end", rid, blob: f.blob }));
      f.have = size;
      f.done = true;
      this.host.changed();
      return;
    }
  }

  /** `blob_put`s from `f.have` to the end, WINDOW in flight, in order. */
  private async putFrom(f: Prepared, size: number): Promise<void> {
    const inflight: Array<Promise<BlobOk>> = [];
    let next = f.have;
    let lastShown = 0;
    while (f.have < size) {
      while (inflight.length < WINDOW && next < size) {
        const off = next;
        const data = new Uint8Array(await f.cipher.slice(off, Math.min(size, off + PIECE_MAX)).arrayBuffer());
        next += data.length;
        const answer = this.host.request<BlobOk>((rid) => ({ t: "blob_put", rid, blob: f.blob, off, data }));
        answer.catch(() => undefined); // awaited in order below
        inflight.push(answer);
      }
      const ok = await inflight.shift()!;
      f.have = Math.max(f.have, ok.have);
      if (f.have - lastShown >= size / 50 || f.have >= size) {
        lastShown = f.have;
        this.host.changed();
      }
    }
  }

  /** The plaintext of `att`, checked (module doc). */
  fetch(att: Attachment, onProgress?: (got: number) => void): Promise<Uint8Array> {
    let running = this.cache.get(att.blob);
    if (running === undefined) {
      running = this.fetchNow(att, onProgress);
      this.cache.set(att.blob, running);
      running.catch(() => this.cache.delete(att.blob));
    }
    return running;
  }

  private async fetchNow(att: Attachment, onProgress?: (got: number) => void): Promise<Uint8Array> {
    let link: BlobLinkOk;
    try {
      link = await this.host.request<BlobLinkOk>((rid) => ({ t: "blob_link", rid, blob: att.blob }));
    } catch (err) {
      if (err instanceof ProtocolError && err.code === "unknown_blob") throw new AttachmentUnavailable();
      throw err;
    }
    const total = cipherSize(att.size);
    if (link.size !== total) throw new AttachmentError("the hub's blob is not the attachment's size");
    const url = new URL(link.url, this.host.httpBase).href;
    const d = new Decryptor(att.key, att.size, att.hash);
    const out = new Uint8Array(att.size);
    let written = 0;
    let got = 0;
    while (got < total) {
      const last = Math.min(total, got + HTTP_PART_MAX) - 1;
      const response = await fetch(url, { headers: { Range: `bytes=${got}-${last}` }, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" });
      if (response.status === 404) throw new AttachmentUnavailable();
      if (response.status === 503 || response.status === 429) {
        await new Promise((r) => setTimeout(r, 1000 * Number(response.headers.get("Retry-After") ?? 1)));
        continue;
      }
      if (response.status !== 206 && !(response.status === 200 && got === 0)) throw new Error(`HTTP ${response.status}`);
      const part = new Uint8Array(await response.arrayBuffer());
      if (part.length === 0) throw new AttachmentError("an empty part");
      got += part.length;
      const plain = d.feed(part);
      out.set(plain, written);
      written += plain.length;
      onProgress?.(got / total);
    }
    d.finish();
    return out;
  }
}

/** The name a file is sent under: the picker's, cut to a plain 255-byte name. */
function safeName(name: string, type: string): string {
  let clean = name.replace(/[\0/\\]/g, "_").trim();
  if (clean === "" || clean === "." || clean === "..") clean = type === "application/pdf" ? "document.pdf" : "image";
  while (new TextEncoder().encode(clean).length > 255) clean = [...clean].slice(0, -1).join("");
  return clean;
}

/** A JPEG thumbnail (≤ THUMB_MAX bytes, longest side ≤ 160 px) and the
 * picture's size, or nothing when the browser cannot decode it (HEIC). */
async function thumbnail(file: File): Promise<{ thumb?: Uint8Array; w?: number; h?: number }> {
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    return {};
  }
  const w = bitmap.width;
  const h = bitmap.height;
  try {
    for (const side of [THUMB_SIDE, 120, 80]) {
      const scale = Math.min(1, side / Math.max(w, h));
      const canvas = document.createElement("canvas");
      canvas.width = Math.max(1, Math.round(w * scale));
      canvas.height = Math.max(1, Math.round(h * scale));
      const ctx = canvas.getContext("2d");
      if (!ctx) return { w, h };
      ctx.fillStyle = "#fff"; // a transparent PNG on white, not black
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      for (const quality of [0.7, 0.5, 0.35, 0.2]) {
        const blob = await new Promise<Blob | null>((resolve) => canvas.toBlob(resolve, "image/jpeg", quality));
        if (blob && blob.size <= THUMB_MAX) {
          const ok = w >= 1 && h >= 1 && w <= 100000 && h <= 100000;
          return ok ? { thumb: new Uint8Array(await blob.arrayBuffer()), w, h } : { thumb: new Uint8Array(await blob.arrayBuffer()) };
        }
      }
    }
    return { w, h };
  } finally {
    bitmap.close();
  }
}

/** `data:` URL of a thumbnail (the page's CSP allows data: images). */
export function thumbUrl(thumb: Uint8Array): string {
  let s = "";
  for (let i = 0; i < thumb.length; i++) s += String.fromCharCode(thumb[i]!);
  return `data:image/jpeg;base64,${btoa(s)}`;
}
