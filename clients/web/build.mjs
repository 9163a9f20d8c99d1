#!/usr/bin/env node
/**
 * Builds the browser client's bundle into miss_server/static/, which the hub
 * serves and which is committed (the hub needs no Node.js).
 *
 *   node build.mjs            build into ../../miss_server/static/ (npm run build)
 *   node build.mjs --check    build into a temporary directory and compare it
 *                             byte for byte with the committed one; exit 1,
 *                             naming the files that differ (npm run check)
 *
 * What it writes, and nothing else (the directory is the build's: files
 * there that it does not write are removed, and `--check` reports them):
 *
 * - app.js: src/app/main.ts and everything it imports (libsodium included),
 *   one minified IIFE for ES2020, no source map;
 * - app.css: src/app/styles.css, minified;
 * - index.html: the template clients/web/index.html with `%APP_JS_SRI%` and
 *   `%APP_CSS_SRI%` replaced by the SRI hashes (sha384) of app.js and app.css;
 * - the files of clients/web/public/, if it exists, as they are.
 *
 * The hub serves the bundle under `script-src 'self' 'wasm-unsafe-eval';
 * style-src 'self'`, so the build refuses inline scripts, styles or event
 * handlers in index.html, and `eval`/`new Function` in app.js. It is
 * deterministic: the same sources and lock file give the same bytes.
 *
 * It prints each file with its size, raw and gzipped, and the bundle hash:
 * "sha256:" and the hex SHA-256 of index.html, which pins every other file
 * through SRI (`bundleHash`, as miss_server/web.py's `bundle_hash`).
 */
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { gzipSync } from "node:zlib";

export const WEB_DIR = dirname(fileURLToPath(import.meta.url));
export const OUT_DIR = resolve(WEB_DIR, "../../miss_server/static");
const ENTRY_JS = "src/app/main.ts";
const ENTRY_CSS = "src/app/styles.css";
const TEMPLATE = "index.html";
const PUBLIC_DIR = "public";
const PLACEHOLDERS = { "%APP_JS_SRI%": "app.js", "%APP_CSS_SRI%": "app.css" };

/** The bundle hash: "sha256:" and the lowercase hex SHA-256 of index.html's bytes. */
export function bundleHash(indexHtml) {
  return "sha256:" + createHash("sha256").update(indexHtml).digest("hex");
}

/** A Subresource Integrity value for `bytes` (sha384, base64). */
export function sri(bytes) {
  return "sha384-" + createHash("sha384").update(bytes).digest("base64");
}

/** Node's built-in modules that libsodium's Emscripten glue names (in code
 * paths for Node only): resolved to an empty module in the browser bundle. */
const nodeBuiltinsEmpty = {
  name: "node-builtins-empty",
  setup(b) {
    b.onResolve({ filter: /^(node:)?(fs|path|crypto)$/ }, (args) => ({ path: args.path, namespace: "empty" }));
    b.onLoad({ filter: /.*/, namespace: "empty" }, () => ({ contents: "export default {};", loader: "js" }));
  },
};

/** What the page's CSP would refuse, in the built files. */
function cspProblems(files) {
  const problems = [];
  const html = Buffer.from(files.get("index.html")).toString("utf8");
  if (/<script\b(?![^>]*\bsrc\s*=)[^>]*>/i.test(html)) problems.push("index.html: an inline <script>");
  if (/<style\b/i.test(html)) problems.push("index.html: a <style> element");
  if (/\sstyle\s*=/i.test(html)) problems.push("index.html: a style attribute");
  if (/\son[a-z]+\s*=/i.test(html)) problems.push("index.html: an inline event handler");
  if (/javascript:/i.test(html)) problems.push("index.html: a javascript: URL");
  const js = Buffer.from(files.get("app.js")).toString("utf8");
  for (const m of js.matchAll(/(?<![\w$.])(?:eval|new\s+Function|Function)\s*\(/g)) {
    problems.push(`app.js: '${m[0]}' at offset ${m.index} (needs 'unsafe-eval')`);
  }
  return problems;
}

async function publicFiles(dir, base = dir, out = new Map()) {
  if (!existsSync(dir)) return out;
  for (const entry of (await readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) await publicFiles(path, base, out);
    else out.set(relative(base, path).split(sep).join("/"), new Uint8Array(await readFile(path)));
  }
  return out;
}

/** The bundle's files, by name (relative path, "/"-separated) -> bytes. */
export async function buildBundle() {
  const result = await build({
    absWorkingDir: WEB_DIR,
    entryPoints: [
      { in: ENTRY_JS, out: "app" },
      { in: ENTRY_CSS, out: "app" },
    ],
    outdir: "out", // not written: write is false
    write: false,
    bundle: true,
    format: "iife",
    platform: "browser",
    target: "es2020",
    minify: true,
    sourcemap: false,
    legalComments: "eof",
    charset: "utf8",
    metafile: false,
    logLevel: "warning",
    // libsodium's glue reads import.meta.url, inside a try, only for
    // locating a .wasm file it does not need (the module is embedded).
    define: { "import.meta.url": "undefined" },
    plugins: [nodeBuiltinsEmpty],
  });
  const files = new Map();
  for (const file of result.outputFiles) {
    files.set(relative(join(WEB_DIR, "out"), file.path).split(sep).join("/"), file.contents);
  }
  for (const name of Object.values(PLACEHOLDERS)) {
    if (!files.has(name)) throw new Error(`esbuild wrote no ${name} (outputs: ${[...files.keys()].join(", ")})`);
  }
  let html = await readFile(join(WEB_DIR, TEMPLATE), "utf8");
  for (const [placeholder, name] of Object.entries(PLACEHOLDERS)) {
    if (!html.includes(placeholder)) throw new Error(`${TEMPLATE} lacks the placeholder ${placeholder}`);
    html = html.replaceAll(placeholder, sri(files.get(name)));
  }
  files.set("index.html", new TextEncoder().encode(html));
  for (const [name, bytes] of await publicFiles(join(WEB_DIR, PUBLIC_DIR))) {
    if (files.has(name)) throw new Error(`${PUBLIC_DIR}/${name} would overwrite a built file`);
    files.set(name, bytes);
  }
  const problems = cspProblems(files);
  if (problems.length) throw new Error(`the bundle breaks the hub's Content-Security-Policy:\n  ${problems.join("\n  ")}`);
  return new Map([...files].sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** Every regular file under `dir`, by "/"-separated relative path. */
async function readTree(dir, base = dir, out = new Map()) {
  if (!existsSync(dir)) return out;
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) await readTree(path, base, out);
    else out.set(relative(base, path).split(sep).join("/"), new Uint8Array(await readFile(path)));
  }
  return out;
}

/** Write `files` into `dir`, removing whatever else was there. */
export async function writeBundle(files, dir) {
  await rm(dir, { recursive: true, force: true });
  for (const [name, bytes] of files) {
    const path = join(dir, ...name.split("/"));
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, bytes);
  }
}

function report(files) {
  const width = Math.max(...[...files.keys()].map((n) => n.length));
  const num = (n) => n.toLocaleString("en-US").padStart(9);
  for (const [name, bytes] of files) {
    console.log(`  ${name.padEnd(width)}  ${num(bytes.length)} B   gzip ${num(gzipSync(bytes, { level: 9 }).length)} B`);
  }
  console.log(`bundle hash: ${bundleHash(files.get("index.html"))}`);
}

const same = (a, b) => a.length === b.length && Buffer.from(a).equals(Buffer.from(b));

async function check() {
  const tmp = await mkdtemp(join(tmpdir(), "miss-web-"));
  try {
    await writeBundle(await buildBundle(), tmp);
    const built = await readTree(tmp);
    const committed = await readTree(OUT_DIR);
    const differing = [];
    for (const [name, bytes] of built) {
      if (!committed.has(name)) differing.push(`${name} (missing from the committed bundle)`);
      else if (!same(bytes, committed.get(name))) differing.push(`${name} (differs)`);
    }
    for (const name of committed.keys()) if (!built.has(name)) differing.push(`${name} (not built from the sources)`);
    const where = relative(process.cwd(), OUT_DIR) || OUT_DIR;
    if (differing.length) {
      console.error(`${where} is not what the sources build to:`);
      for (const line of differing.sort()) console.error(`  ${line}`);
      console.error("run `npm run build` in clients/web and commit miss_server/static/");
      return 1;
    }
    console.log(`${where} is up to date (${built.size} files)`);
    report(built);
    return 0;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

async function main(args) {
  if (args.includes("--check")) return check();
  const files = await buildBundle();
  await writeBundle(files, OUT_DIR);
  console.log(`wrote ${relative(process.cwd(), OUT_DIR) || OUT_DIR}:`);
  report(files);
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      console.error(err instanceof Error ? err.message : err);
      process.exit(1);
    },
  );
}
