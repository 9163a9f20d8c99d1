/**
 * Enrolling this browser as a device (SPEC §5.1): fresh keys, the `enroll`
 * answering the hub's challenge, and, on `welcome`, the profile sealed
 * under the chosen passphrase. The authority key the user entered is
 * checked against the one the hub announces before the code is spent
 * (`WrongAuthority`: nothing sent), unless the hub's rotation statements
 * lead from the entered key to the announced one (SPEC §15): then the new
 * key is the one kept, with the statements (a key handed out on paper before
 * a rotation still enrolls); statements that do not lead there are
 * RotationRefused, nothing sent. The connection, now authenticated, is
 * handed over to the client.
 */
import { decodeAuthorityKey } from "../protocol/attestation";
import { generateKeys, type DeviceKeys } from "../protocol/crypto";
import { CAP_BLOBS, CAP_ONCALL, CAP_REFUSALS, CAP_ROTATION, CAP_TEAMS, SUBPROTOCOL } from "../protocol/frames";
import { consider } from "../protocol/rotation";
import { ClientSession } from "../protocol/session";
import { fieldText } from "../protocol/text";
import { Vault } from "./vault";

export class Unreachable extends Error {}
export class BadAuthorityKey extends Error {}

export interface Enrolled {
  vault: Vault;
  keys: DeviceKeys;
  ws: WebSocket;
  session: ClientSession;
  /** Frames received after `welcome`, before the client took over. */
  backlog: Uint8Array[];
}

export interface EnrollForm {
  server: string;
  code: string;
  authority: string;
  label: string;
  passphrase: string;
}

/** The hub's WebSocket URL when the page is served by the hub itself. */
export function defaultServer(): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/`;
}

export async function enroll(form: EnrollForm): Promise<Enrolled> {
  let authority: Uint8Array;
  try {
    authority = decodeAuthorityKey(form.authority.trim());
  } catch {
    throw new BadAuthorityKey("invalid authority key");
  }
  const label = fieldText(form.label); // sent in a frame string: no controls (SPEC §3.1)
  const keys = generateKeys();
  const ws = new WebSocket(form.server, [SUBPROTOCOL]);
  ws.binaryType = "arraybuffer";
  const session = new ClientSession();
  const backlog: Uint8Array[] = [];
  let rotations: Uint8Array[] = [];
  const welcome = await new Promise<{ user: string; device: string }>((resolve, reject) => {
    ws.onmessage = (ev: MessageEvent) => {
      if (session.welcome) {
        backlog.push(new Uint8Array(ev.data as ArrayBuffer));
        return;
      }
      try {
        const event = session.receive(new Uint8Array(ev.data as ArrayBuffer));
        if (event.kind === "challenged") {
          const outcome = consider(authority, [], session.hubAuthority, event.challenge.rotations ?? []);
          if (outcome.kind === "rotated") {
            authority = outcome.current;
            rotations = outcome.stored;
          } else if (outcome.kind === "same") rotations = outcome.stored;
          ws.send(session.enroll(fieldText(form.code), keys, label, [CAP_REFUSALS, CAP_TEAMS, CAP_ONCALL, CAP_ROTATION, CAP_BLOBS], { authority }));
        } else if (event.kind === "welcomed") {
          resolve({ user: event.welcome.user, device: event.welcome.device });
        }
      } catch (err) {
        ws.close();
        reject(err);
      }
    };
    ws.onclose = (ev: CloseEvent) => {
      reject(session.connectionClosed(ev.code, ev.reason) ?? new Unreachable(`closed (${ev.code})`));
    };
  });
  ws.onclose = null;
  const vault = await Vault.create(
    form.passphrase,
    { server: form.server, user: welcome.user, device: welcome.device, label, authority, rotations },
    { signSeed: keys.signSeed, boxSk: keys.boxSk },
  );
  return { vault, keys, ws, session, backlog };
}
