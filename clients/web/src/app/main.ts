/**
 * The browser client's entry point: wait for libsodium, then show the
 * enrollment screen (no device in this browser), the unlock screen, or the
 * application once unlocked. Locking (or a revoked device) returns here.
 */
import { keysFromSecrets } from "../protocol/crypto";
import { ready } from "../protocol/sodium";
import { MissClient, isTeamId } from "./client";
import type { Enrolled } from "./enroll";
import { setLanguage, language, t } from "./i18n";
import { LocalState } from "./store";
import { displayName, MainView } from "./ui/main_view";
import { enrollScreen, unlockScreen } from "./ui/screens";
import { beep, notifyUrgent, unlockAudio } from "./ui/oncall_ui";
import { h } from "./ui/dom";
import { storedProfile, type Vault } from "./vault";

const root = document.getElementById("app")!;

function show(el: HTMLElement): void {
  root.replaceChildren(el);
  const focus = el.querySelector<HTMLElement>("[autofocus]");
  focus?.focus();
}

function fatal(text: string): void {
  show(h("main", { class: "screen" }, h("div", { class: "card" }, h("h1", {}, t("app.name")), h("p", { class: "form-error", role: "alert" }, text))));
}

async function start(): Promise<void> {
  setLanguage(language());
  document.title = t("app.title");
  if (!window.isSecureContext || !crypto.subtle) return fatal(t("error.not_secure"));
  await ready();
  let profile;
  try {
    profile = await storedProfile();
  } catch {
    return fatal(t("error.storage"));
  }
  holding ||= await holdDevice();
  if (!holding) return fatal(t("error.other_tab"));
  if (profile === null) show(enrollScreen(enrolled));
  else show(unlockScreen(profile, (vault) => void unlocked(vault), () => void start()));
}

/** Whether this tab holds the device (for the page's life, lock included). */
let holding = false;

/**
 * Hold the device for this tab (Web Locks): two tabs of one device would
 * take the hub's session from each other (`session_replaced`) and write the
 * same vault. Resolves to false if another tab holds it.
 */
async function holdDevice(): Promise<boolean> {
  if (!("locks" in navigator)) return true;
  return new Promise((resolve) => {
    void navigator.locks.request("miss-device", { ifAvailable: true }, (lock) => {
      if (lock === null) {
        resolve(false);
        return undefined;
      }
      resolve(true);
      return new Promise<void>(() => undefined); // released when the page goes
    });
  });
}

async function enrolled(e: Enrolled): Promise<void> {
  const client = await open(e.vault);
  client.adopt(e.ws, e.session, e.backlog);
}

async function unlocked(vault: Vault): Promise<void> {
  const client = await open(vault);
  client.start();
}

async function open(vault: Vault): Promise<MissClient> {
  const state = new LocalState(vault, vault.profile.user);
  await state.load();
  const keys = keysFromSecrets(vault.secrets.signSeed, vault.secrets.boxSk);
  const client = new MissClient(vault, keys, state);
  const view = new MainView(client, () => {
    client.stop();
    view.destroy();
    vault.close();
    void start();
  });
  client.onChange = () => view.render();
  client.onMessage = (m) => {
    if (m.urgent) return; // rings through onAlert below
    if (document.visibilityState === "visible" || !("Notification" in window) || Notification.permission !== "granted") return;
    // The text stays out of the notification: a lock screen is not private.
    const name = displayName(state.peers.get(m.fromUser), m.fromUser);
    const team = isTeamId(m.peer) ? client.team(m.peer) : undefined;
    const body = team ? t("notify.body_team", { name, team: team.name }) : t("notify.body", { name });
    const note = new Notification(t("notify.title"), { body, tag: m.peer });
    note.onclick = () => {
      window.focus();
      view.open(m.peer);
      note.close();
    };
  };
  // An urgent message rings at arrival and at each reminder, visible tab
  // or not, until someone acknowledges it (SPEC §14).
  client.oncall.onAlert = (m, alert) => {
    beep();
    const name = displayName(state.peers.get(m.fromUser), m.fromUser);
    notifyUrgent(client, m, alert, name, () => view.open(m.peer));
  };
  client.oncall.onReleased = (info) => view.toast(t("role.released", { role: info.name }));
  unlockAudio();
  show(view.root);
  return client;
}

void start();
