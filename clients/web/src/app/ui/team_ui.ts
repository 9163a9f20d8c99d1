/**
 * Pieces of the interface for care teams and message lifespan (SPEC §13):
 * the lifespan choices and their picker, delays said in words, a team's
 * membership change said as a sentence, and the banner that says why
 * nothing can be sent to a team whose member list cannot be trusted.
 *
 * Names come from the attested identities this device pinned; a user it
 * never looked up shows as their id (never as something the hub says).
 */
import { t, type MessageKey } from "../i18n";
import type { TeamEvent, TeamProblem, TeamView } from "../teams";
import { h } from "./dom";

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/** The lifespans a user can pick (SPEC §13.6 bounds: 1 h … 30 days); null: none. */
export const LIFESPANS: ReadonlyArray<readonly [MessageKey, number | null]> = [
  ["lifespan.none", null],
  ["lifespan.1h", HOUR],
  ["lifespan.8h", 8 * HOUR],
  ["lifespan.24h", DAY],
  ["lifespan.7d", 7 * DAY],
  ["lifespan.30d", 30 * DAY],
];

/** "3 h", "2 j", "12 min": the rounded-up size of a delay. */
export function formatDelay(ms: number): string {
  if (ms < 60_000) return t("duration.soon");
  const minutes = Math.ceil(ms / 60_000);
  if (minutes < 60) return t("duration.minutes", { n: minutes });
  if (ms >= 2 * DAY) return t("duration.days", { n: Math.round(ms / DAY) });
  return t("duration.hours", { n: Math.max(1, Math.round(ms / HOUR)) });
}

/** The label of a lifespan: its name in the picker, or the delay. */
export function lifespanLabel(ms: number | null | undefined): string {
  const known = LIFESPANS.find(([, value]) => value === (ms ?? null));
  return known ? t(known[0]) : formatDelay(ms!);
}

/**
 * A `<select>` of lifespans with `preselect` chosen (added when it is not
 * one of the usual choices: a team may have any default within bounds).
 * The value is "" for none, else the milliseconds.
 */
export function lifespanSelect(testid: string, preselect: number | undefined, label: string): HTMLSelectElement {
  const select = h("select", { "data-testid": testid, "aria-label": label, class: "lifespan" });
  fillLifespans(select, preselect);
  return select;
}

/** Replace the choices of a lifespan `<select>` and choose `preselect`. */
export function fillLifespans(select: HTMLSelectElement, preselect: number | undefined, defaultLabel = false): void {
  select.replaceChildren();
  const values = LIFESPANS.map(([, v]) => v);
  const options = LIFESPANS.map(([key, value]) => [t(key), value] as const);
  if (preselect !== undefined && !values.includes(preselect)) options.push([formatDelay(preselect), preselect]);
  for (const [text, value] of options) {
    const chosen = (value ?? undefined) === preselect;
    select.append(
      h("option", { value: value === null ? "" : String(value), selected: chosen },
        chosen && defaultLabel && value !== null ? t("lifespan.default", { value: text }) : text),
    );
  }
  select.value = preselect === undefined ? "" : String(preselect);
}

/** The lifespan chosen in a picker (undefined: none). */
export function chosenLifespan(select: HTMLSelectElement): number | undefined {
  return select.value === "" ? undefined : Number(select.value);
}

/** A membership change as a sentence ("Dr X a ajouté Dr Y"). */
export function eventText(ev: TeamEvent, team: TeamView, name: (user: string) => string): string {
  const by = ev.by === "authority" ? t("team.event.authority") : name(ev.by);
  const user = name(ev.user);
  switch (ev.op) {
    case "create":
      return t("team.event.create", { by, name: team.name });
    case "add":
      return t("team.event.add", { by, user });
    case "remove":
      return t("team.event.remove", { by, user });
    case "leave":
      return t("team.event.leave", { user });
    case "promote":
      return t("team.event.promote", { by, user });
    case "demote":
      return t("team.event.demote", { by, user });
    default:
      return String(ev.op);
  }
}

/** The red banner of a team whose member list cannot be trusted. */
export function problemBanner(problem: Exclude<TeamProblem, null>): HTMLElement {
  return h(
    "div",
    { class: "banner danger team-problem", role: "alert", "data-testid": "team-problem", "data-problem": problem },
    h("strong", {}, problem === "tampered" ? t("team.tampered") : t("team.diverged")),
    " ",
    t("team.problem_advice"),
  );
}
