/**
 * Packing a function directory into a bundle as the CLI does: a tar.gz of the directory
 * minus `.git`, what `.reactorignore` lists (gitignore patterns) and env files (`.env`,
 * `.env.*`: secrets go to `functions.env.set`); with a manifest `build`, only the manifest
 * and the build output. Returns the bytes and their SHA-256 (hex), sent as
 * `X-Reactor-Bundle-SHA256`.
 */

import { createHash } from "node:crypto";
import { lstat, readFile, readdir, readlink, stat } from "node:fs/promises";
import { join } from "node:path";
import { gzipSync } from "node:zlib";

export interface Packed {
  bytes: Uint8Array<ArrayBuffer>;
  sha256: string;
  files: string[];
  /** Env files found and left out. */
  leftOut: string[];
}

interface Rule {
  regex: RegExp;
  negate: boolean;
  dirOnly: boolean;
}

/** A gitignore pattern as a regular expression over slash-separated relative paths. */
function rule(line: string): Rule | undefined {
  let pattern = line.replace(/\s+$/, "");
  if (pattern === "" || pattern.startsWith("#")) {
    return undefined;
  }
  const negate = pattern.startsWith("!");
  if (negate) pattern = pattern.slice(1);
  const dirOnly = pattern.endsWith("/");
  if (dirOnly) pattern = pattern.slice(0, -1);
  // A pattern with a slash (other than at the end) is anchored to the directory.
  const anchored = pattern.includes("/");
  if (pattern.startsWith("/")) pattern = pattern.slice(1);
  let source = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === "*" && pattern[i + 1] === "*") {
      const slash = pattern[i + 2] === "/";
      source += slash ? "(?:.*/)?" : ".*";
      i += slash ? 2 : 1;
    } else if (c === "*") {
      source += "[^/]*";
    } else if (c === "?") {
      source += "[^/]";
    } else {
      source += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
    }
  }
  const prefix = anchored ? "^" : "^(?:.*/)?";
  return { regex: new RegExp(`${prefix}${source}$`), negate, dirOnly };
}

function ignored(rules: Rule[], path: string, isDir: boolean): boolean {
  let result = false;
  for (const r of rules) {
    if (r.dirOnly && !isDir) continue;
    if (r.regex.test(path)) result = !r.negate;
  }
  return result;
}

async function readRules(dir: string): Promise<Rule[]> {
  try {
    const text = await readFile(join(dir, ".reactorignore"), "utf8");
    return text.split(/\r?\n/).flatMap((l) => rule(l) ?? []);
  } catch {
    return [];
  }
}

/** The files to pack: [path on disk, path in the bundle], sorted by the latter. */
export async function select(dir: string): Promise<{ files: [string, string][]; leftOut: string[] }> {
  let manifest: { build?: { output?: string }; entrypoint?: string } | undefined;
  try {
    manifest = JSON.parse(await readFile(join(dir, "manifest.json"), "utf8"));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") {
      throw new Error(`${join(dir, "manifest.json")}: ${(e as Error).message}`);
    }
  }
  const output = manifest?.build?.output;
  if (output) {
    const entry = (manifest?.entrypoint ?? output).replace(/^\.\//, "");
    const built = await stat(join(dir, output)).catch(() => undefined);
    if (!built?.isFile()) {
      throw new Error(
        `the build output ${join(dir, output)} does not exist: run the manifest's build first`,
      );
    }
    return {
      files: [
        [join(dir, "manifest.json"), "manifest.json"],
        [join(dir, output), entry],
      ],
      leftOut: [],
    };
  }
  const rules = await readRules(dir);
  const files: [string, string][] = [];
  const leftOut: string[] = [];
  async function walk(abs: string, rel: string): Promise<void> {
    const entries = await readdir(abs, { withFileTypes: true });
    for (const e of entries) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      const disk = join(abs, e.name);
      if (e.name === ".git") continue;
      if (e.isDirectory()) {
        if (ignored(rules, path, true)) continue;
        await walk(disk, path);
      } else if (e.isFile() || e.isSymbolicLink()) {
        if (ignored(rules, path, false)) continue;
        if (e.name === ".env" || e.name.startsWith(".env.")) {
          leftOut.push(path);
          continue;
        }
        files.push([disk, path]);
      }
      // Symbolic links are packed as links (the server checks where they point), as the
      // CLI does; special files are not packed.
    }
  }
  await walk(dir, "");
  files.sort((a, b) => (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return { files, leftOut };
}

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, "0") + "\0";
}

/** One ustar header (`type` "0" a file, "2" a symbolic link to `link`); names over 100
 * bytes use the 155-byte prefix field. */
function header(name: string, size: number, mode: number, type = "0", link = ""): Buffer {
  const h = Buffer.alloc(512);
  let prefix = "";
  let base = name;
  if (Buffer.byteLength(name) > 100) {
    const cut = name.lastIndexOf("/", 155);
    if (
      cut <= 0 ||
      Buffer.byteLength(name.slice(0, cut)) > 155 ||
      Buffer.byteLength(name.slice(cut + 1)) > 100
    ) {
      throw new Error(`path too long for a bundle: ${name}`);
    }
    prefix = name.slice(0, cut);
    base = name.slice(cut + 1);
  }
  h.write(base, 0, 100, "utf8");
  h.write(octal(mode, 8), 100, "ascii");
  h.write(octal(0, 8), 108, "ascii");
  h.write(octal(0, 8), 116, "ascii");
  h.write(octal(size, 12), 124, "ascii");
  h.write(octal(Math.floor(Date.now() / 1000), 12), 136, "ascii");
  h.write("        ", 148, "ascii");
  h.write(type, 156, "ascii");
  if (Buffer.byteLength(link) > 100) {
    throw new Error(`link target too long for a bundle: ${name} -> ${link}`);
  }
  h.write(link, 157, 100, "utf8");
  h.write("ustar\0", 257, "ascii");
  h.write("00", 263, "ascii");
  h.write(prefix, 345, 155, "utf8");
  let sum = 0;
  for (const b of h) sum += b;
  h.write(octal(sum, 7) + " ", 148, "ascii");
  return h;
}

/** Packs `dir` into a tar.gz. */
export async function pack(dir: string): Promise<Packed> {
  const { files, leftOut } = await select(dir);
  const parts: Buffer[] = [];
  for (const [disk, name] of files) {
    const info = await lstat(disk);
    if (info.isSymbolicLink()) {
      parts.push(header(name, 0, 0o777, "2", await readlink(disk)));
      continue;
    }
    const data = await readFile(disk);
    const mode = (info.mode & 0o111) !== 0 ? 0o755 : 0o644;
    parts.push(header(name, data.length, mode), data);
    const pad = (512 - (data.length % 512)) % 512;
    if (pad) parts.push(Buffer.alloc(pad));
  }
  parts.push(Buffer.alloc(1024));
  const bytes = gzipSync(Buffer.concat(parts));
  return {
    bytes: new Uint8Array(bytes),
    sha256: createHash("sha256").update(bytes).digest("hex"),
    files: files.map(([, name]) => name),
    leftOut,
  };
}
