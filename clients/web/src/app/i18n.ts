/**
 * Interface text: one catalogue per language (`locales/`), French first.
 * `t(key, params)` looks a key up in the current language and fills its
 * `{name}` placeholders; dates and times are formatted for that language.
 */
import { en } from "./locales/en";
import { fr, type Catalogue, type MessageKey } from "./locales/fr";

export type Language = "fr" | "en";
export const LANGUAGES: readonly Language[] = ["fr", "en"];

const CATALOGUES: Record<Language, Catalogue> = { fr, en };
const LANGUAGE_KEY = "miss.language"; // a preference, not a secret: localStorage

let current: Language = initialLanguage();

function initialLanguage(): Language {
  try {
    const saved = localStorage.getItem(LANGUAGE_KEY);
    if (saved === "fr" || saved === "en") return saved;
  } catch {
    // storage refused: French
  }
  return "fr";
}

export function language(): Language {
  return current;
}

export function setLanguage(lang: Language): void {
  current = lang;
  document.documentElement.lang = lang;
  try {
    localStorage.setItem(LANGUAGE_KEY, lang);
  } catch {
    // storage refused: for this page only
  }
}

export function t(key: MessageKey, params: Record<string, string | number> = {}): string {
  const text: string = CATALOGUES[current][key] ?? fr[key];
  return text.replace(/\{(\w+)\}/g, (whole, name: string) =>
    name in params ? String(params[name]) : whole,
  );
}

const locale = (): string => (current === "fr" ? "fr-FR" : "en-GB");

export function formatTime(ms: number): string {
  return new Date(ms).toLocaleTimeString(locale(), { hour: "2-digit", minute: "2-digit" });
}

export function formatDate(ms: number): string {
  return new Date(ms).toLocaleDateString(locale(), { day: "numeric", month: "long", year: "numeric" });
}

export function formatDateTime(ms: number): string {
  return t("time.at", { date: formatDate(ms), time: formatTime(ms) });
}

/** "Aujourd'hui", "Hier" or the date: the label of a day separator. */
export function dayLabel(ms: number, now: number = Date.now()): string {
  const day = startOfDay(ms);
  const today = startOfDay(now);
  if (day === today) return t("conv.today");
  if (day === startOfDay(today - 12 * 3600 * 1000)) return t("conv.yesterday");
  return formatDate(ms);
}

export function startOfDay(ms: number): number {
  const d = new Date(ms);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

export type { MessageKey };
