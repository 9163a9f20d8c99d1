/**
 * Attachments in the interface (SPEC §16): the composer's "Joindre" and
 * (on phones) "Photo" buttons with the tray of files waiting to go
 * (thumbnails, a remove button, refusals said in French before anything is
 * uploaded), each message's attachments (thumbnails or file cards, upload
 * progress "Envoi… 45 %", "Télécharger"), and the viewer (the image
 * decrypted into a blob: URL; a type this browser cannot show becomes a
 * file card).
 */
import type { Attachment } from "../../protocol/attachments";
import { sodium } from "../../protocol/sodium";
import { toHex } from "../../protocol/crypto";
import { AttachmentError, AttachmentRefused, AttachmentUnavailable, formatSize, isImageType, thumbUrl, type Prepared } from "../attachments";
import type { MissClient } from "../client";
import { t } from "../i18n";
import type { MessageRecord } from "../store";
import { fill, h } from "./dom";
import { describeError } from "./screens";

const ACCEPT = "image/jpeg,image/png,image/heic,image/heif,application/pdf";

/** The composer's attachment buttons and tray; `take()` hands the files over at send time. */
export class AttachPicker {
  readonly buttons: HTMLElement;
  readonly tray = h("ul", { class: "att-tray", "data-testid": "att-tray", "aria-label": t("att.tray"), hidden: true });
  readonly error = h("p", { class: "att-error", role: "alert", "data-testid": "att-error", hidden: true });
  private readonly fileInput = h("input", { type: "file", multiple: true, accept: ACCEPT, hidden: true, "data-testid": "att-input" });
  private readonly cameraInput = h("input", { type: "file", accept: "image/*", capture: "environment", hidden: true, "data-testid": "att-camera-input" });
  private pending: Array<{ id: number; name: string; ready: Promise<Prepared>; prepared?: Prepared }> = [];
  private nextId = 1;

  constructor(
    private readonly client: MissClient,
    private readonly changed: () => void,
  ) {
    this.buttons = h(
      "span",
      { class: "att-buttons" },
      h("button", { type: "button", class: "secondary", title: t("att.attach_hint"), "data-testid": "att-attach", onclick: () => this.fileInput.click() }, t("att.attach")),
      h("button", { type: "button", class: "secondary narrow-only", title: t("att.camera_hint"), "data-testid": "att-camera", onclick: () => this.cameraInput.click() }, t("att.camera")),
      this.fileInput,
      this.cameraInput,
    );
    for (const input of [this.fileInput, this.cameraInput]) {
      input.addEventListener("change", () => {
        const files = [...(input.files ?? [])];
        input.value = "";
        this.add(files);
      });
    }
  }

  get count(): number {
    return this.pending.length;
  }

  /** Add files, refusing (with the French reason, nothing uploaded) those over the limits. */
  add(files: File[]): void {
    this.say(null);
    try {
      this.client.attachments.check(files, this.pending.length);
    } catch (err) {
      this.say(describeError(err));
      return;
    }
    for (const file of files) {
      const entry: (typeof this.pending)[number] = { id: this.nextId++, name: file.name, ready: this.client.attachments.prepare(file) };
      entry.ready.then(
        (p) => {
          entry.prepared = p;
          this.draw();
        },
        (err) => {
          this.pending = this.pending.filter((e) => e !== entry);
          this.say(err instanceof AttachmentRefused ? err.message : describeError(err));
          this.draw();
        },
      );
      this.pending.push(entry);
    }
    this.draw();
  }

  /** The prepared files (waiting for those still being encrypted), and an empty tray. */
  async take(): Promise<Prepared[]> {
    const entries = this.pending;
    const files = await Promise.all(entries.map((e) => e.ready));
    this.pending = [];
    this.draw();
    return files;
  }

  /** Empty the tray (another conversation opened). */
  clear(): void {
    this.pending = [];
    this.say(null);
    this.draw();
  }

  say(text: string | null): void {
    this.error.textContent = text ?? "";
    this.error.hidden = text === null;
  }

  private draw(): void {
    this.tray.hidden = this.pending.length === 0;
    fill(
      this.tray,
      this.pending.map((e) =>
        h(
          "li",
          { class: "att-pending", "data-testid": "att-pending", "data-name": e.name, "data-ready": String(e.prepared !== undefined) },
          e.prepared?.thumb ? h("img", { src: thumbUrl(e.prepared.thumb), alt: "" }) : h("span", { class: "att-icon" }, e.prepared ? fileIcon(e.prepared.type) : "⋯"),
          h("span", { class: "att-name small" }, e.name),
          h("span", { class: "muted small" }, e.prepared ? formatSize(e.prepared.size) : t("att.preparing")),
          h("button", {
            type: "button",
            class: "link small",
            title: t("att.remove"),
            "aria-label": `${t("att.remove")} ${e.name}`,
            "data-testid": "att-remove",
            onclick: () => {
              this.pending = this.pending.filter((x) => x !== e);
              this.say(null);
              this.draw();
            },
          }, "✕"),
        ),
      ),
    );
    this.changed();
  }
}

/** A file's badge where no thumbnail shows: its kind in three letters. */
function fileIcon(type: string): string {
  return type === "application/pdf" ? "PDF" : type === "image/heic" || type === "image/heif" ? "HEIC" : isImageType(type) ? "IMG" : "FICHIER";
}

/** A message's attachments in its bubble (uploading ones with their progress). */
export function attachmentsBlock(client: MissClient, m: MessageRecord, viewer: Viewer): HTMLElement | null {
  if (m.files?.length) {
    const progress = client.attachments.progress(m.id);
    return h(
      "ul",
      { class: "att-list", "data-testid": "attachments" },
      m.files.map((f, i) => {
        const percent = Math.floor(100 * (progress?.[i] ?? 0));
        return h(
          "li",
          { class: "att-item uploading", "data-testid": "attachment", "data-name": f.name },
          f.thumb ? h("img", { class: "att-thumb", src: thumbUrl(f.thumb), alt: f.name }) : h("span", { class: "att-icon" }, fileIcon(f.type)),
          h("span", { class: "att-name small" }, f.name),
          m.status === "pending"
            ? h("span", { class: "att-progress small", "data-testid": "att-progress", "data-percent": percent },
              h("progress", { max: 100, value: percent }), " ", t("att.uploading", { percent }))
            : null,
        );
      }),
    );
  }
  if (!m.atts?.length) return null;
  return h(
    "ul",
    { class: "att-list", "data-testid": "attachments" },
    m.atts.map((a, i) =>
      h(
        "li",
        { class: "att-item", "data-testid": "attachment", "data-name": a.name, "data-index": i },
        a.thumb && isImageType(a.type)
          ? h("button", { type: "button", class: "att-open", title: a.name, "data-testid": "att-open", onclick: () => viewer.show(a) },
            h("img", { class: "att-thumb", "data-testid": "att-thumb", src: thumbUrl(a.thumb), alt: a.name }))
          : h("button", { type: "button", class: "att-card", "data-testid": "att-open", onclick: () => viewer.show(a) },
            h("span", { class: "att-icon" }, fileIcon(a.type))),
        h("span", { class: "att-meta small", title: `${a.name} · ${formatSize(a.size)}` }, a.name),
        h("button", { type: "button", class: "link small", "data-testid": "att-download", onclick: () => void viewer.download(a) }, t("att.download")),
      ),
    ),
  );
}

/** The full-screen viewer: decrypts on demand, shows images, offers the download. */
export class Viewer {
  readonly root = h("div", { class: "att-viewer", "data-testid": "att-viewer", hidden: true, role: "dialog", "aria-modal": "true" });
  private url: string | null = null;
  private showing: string | null = null;

  constructor(
    private readonly client: MissClient,
    private readonly toast: (text: string) => void,
  ) {
    this.root.addEventListener("click", (ev) => {
      if (ev.target === this.root) this.close();
    });
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && !this.root.hidden) this.close();
    });
  }

  close(): void {
    this.root.hidden = true;
    this.showing = null;
    fill(this.root);
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = null;
  }

  /** Open `a`: decrypt it, show it (an image the browser decodes) or its card. */
  show(a: Attachment): void {
    this.close();
    this.showing = a.blob;
    this.root.hidden = false;
    const status = h("p", { class: "att-status", "data-testid": "att-status" }, t("att.loading", { percent: 0 }));
    const frame = h("div", { class: "att-frame" }, status);
    fill(
      this.root,
      h(
        "div",
        { class: "att-panel" },
        h("header", {},
          h("strong", { class: "att-name" }, a.name),
          h("span", { class: "muted small" }, ` · ${formatSize(a.size)}`),
          h("span", { class: "spacer" }),
          h("button", { type: "button", class: "secondary", "data-testid": "viewer-download", onclick: () => void this.download(a) }, t("att.download")),
          h("button", { type: "button", class: "secondary", "data-testid": "viewer-close", onclick: () => this.close() }, t("att.close"))),
        frame,
      ),
    );
    this.client.attachments
      .fetch(a, (f) => (status.textContent = t("att.loading", { percent: Math.floor(100 * f) })))
      .then((bytes) => {
        if (this.showing !== a.blob) return;
        if (this.url) URL.revokeObjectURL(this.url);
        this.url = URL.createObjectURL(new Blob([bytes as BlobPart], { type: a.type }));
        const card = (): HTMLElement => h("p", { class: "att-card-big", "data-testid": "att-card" }, h("span", { class: "att-icon" }, fileIcon(a.type)), " ", a.name, h("br"), h("span", { class: "muted small" }, t("att.no_preview")));
        if (!isImageType(a.type)) {
          fill(frame, card());
          return;
        }
        const img = h("img", { class: "att-full", "data-testid": "viewer-image", alt: a.name, "data-sha256": digest(bytes) });
        img.addEventListener("error", () => fill(frame, card()));
        img.src = this.url;
        fill(frame, img);
      })
      .catch((err) => {
        if (this.showing !== a.blob) return;
        fill(frame, h("p", { class: "att-status danger", "data-testid": "att-failed" }, failureText(err)));
      });
  }

  /** Save `a` as its name (decrypted and checked first). */
  async download(a: Attachment): Promise<void> {
    let bytes: Uint8Array;
    try {
      bytes = await this.client.attachments.fetch(a);
    } catch (err) {
      this.toast(failureText(err));
      return;
    }
    const url = URL.createObjectURL(new Blob([bytes as BlobPart], { type: a.type }));
    const link = h("a", { href: url, download: a.name, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }
}

function failureText(err: unknown): string {
  if (err instanceof AttachmentUnavailable) return t("att.unavailable");
  if (err instanceof AttachmentError) return t("att.corrupt");
  return describeError(err);
}

/** SHA-256 of what the viewer shows, hex (tests compare it with the file sent). */
function digest(bytes: Uint8Array): string {
  return toHex(sodium().crypto_hash_sha256(bytes));
}
