#!/usr/bin/env node
// Generates src/api.ts, the API's JSON shapes as TypeScript types, from Reactor's OpenAPI
// document (components.schemas), so that the SDK's types cannot drift from the server's.
//
//   node scripts/api-types.mjs <document URL or file>           writes src/api.ts
//   node scripts/api-types.mjs <document URL or file> --check   fails when src/api.ts differs
//
// The document is what `GET /fn/v1/_admin/openapi.json` serves (`reactor dev` answers it).

import { readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const OUT = join(dirname(fileURLToPath(import.meta.url)), "..", "src", "api.ts");

async function load(source) {
  if (/^https?:\/\//.test(source)) {
    const res = await fetch(source);
    if (!res.ok) {
      throw new Error(`GET ${source}: HTTP ${res.status}`);
    }
    return res.json();
  }
  return JSON.parse(await readFile(source, "utf8"));
}

const refName = (ref) => {
  const prefix = "#/components/schemas/";
  if (!ref.startsWith(prefix)) {
    throw new Error(`unsupported $ref ${ref}`);
  }
  return ref.slice(prefix.length);
};

const IDENT = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
const key = (k) => (IDENT.test(k) ? k : JSON.stringify(k));
const paren = (t) => (/[|&]/.test(t) ? `(${t})` : t);

function comment(text, indent) {
  if (!text) {
    return "";
  }
  const lines = String(text).trim().split("\n");
  if (lines.length === 1) {
    return `${indent}/** ${lines[0].replaceAll("*/", "* /")} */\n`;
  }
  return `${indent}/**\n${lines.map((l) => `${indent} * ${l.replaceAll("*/", "* /")}`.trimEnd()).join("\n")}\n${indent} */\n`;
}

function union(types) {
  const unique = [...new Set(types)];
  if (unique.includes("unknown")) {
    return "unknown";
  }
  return unique.join(" | ");
}

/** A property's description: its own, else that of a branch (`oneOf: [null, $ref]`). */
function describe(schema) {
  if (schema?.description) {
    return schema.description;
  }
  const branches = schema?.oneOf ?? schema?.anyOf ?? [];
  return branches.map((b) => b?.description).find(Boolean);
}

/** Names a generated type may not take: TypeScript's own globals. */
const RESERVED = new Set(["Array", "Boolean", "Error", "Function", "Map", "Number", "Object", "Promise", "Record", "Response", "Set", "String"]);

/** The TypeScript type of a schema. */
function toTs(schema, indent) {
  if (schema === true || schema === undefined || schema === null) {
    return "unknown";
  }
  if (schema === false) {
    return "never";
  }
  if (schema.$ref) {
    return refName(schema.$ref);
  }
  if (schema.const !== undefined) {
    return JSON.stringify(schema.const);
  }
  if (Array.isArray(schema.enum)) {
    return union(schema.enum.map((v) => JSON.stringify(v)));
  }
  if (schema.oneOf || schema.anyOf) {
    const branches = schema.oneOf ?? schema.anyOf;
    return branches.length === 0 ? "never" : union(branches.map((s) => toTs(s, indent)));
  }
  if (schema.allOf) {
    return schema.allOf.map((s) => paren(toTs(s, indent))).join(" & ");
  }
  if (Array.isArray(schema.type)) {
    return union(schema.type.map((t) => toTs({ ...schema, type: t }, indent)));
  }
  switch (schema.type) {
    case "string":
      return "string";
    case "integer":
    case "number":
      return "number";
    case "boolean":
      return "boolean";
    case "null":
      return "null";
    case "array":
      return `${paren(toTs(schema.items, indent))}[]`;
    case "object":
      return objectType(schema, indent);
    case undefined:
      return schema.properties ? objectType(schema, indent) : "unknown";
    default:
      throw new Error(`unsupported schema type ${JSON.stringify(schema.type)}`);
  }
}

function objectType(schema, indent) {
  const props = Object.entries(schema.properties ?? {});
  const extra = schema.additionalProperties;
  if (props.length === 0) {
    if (extra === false) {
      return "Record<string, never>";
    }
    return `Record<string, ${extra && extra !== true ? toTs(extra, indent) : "unknown"}>`;
  }
  const required = new Set(schema.required ?? []);
  const inner = `${indent}  `;
  const lines = props.map(
    ([name, s]) =>
      `${comment(describe(s), inner)}${inner}${key(name)}${required.has(name) ? "" : "?"}: ${toTs(s, inner)};`,
  );
  if (extra && extra !== false) {
    // Every named property must fit the index signature: only `unknown` is sure to.
    lines.push(`${inner}[more: string]: unknown;`);
  }
  return `{\n${lines.join("\n")}\n${indent}}`;
}

export function generate(doc) {
  const schemas = doc?.components?.schemas;
  if (!schemas || typeof schemas !== "object") {
    throw new Error("the document has no components.schemas");
  }
  let out =
    "// Generated from Reactor's OpenAPI document by scripts/api-types.mjs: do not edit.\n" +
    `// Regenerate with: node scripts/api-types.mjs http://127.0.0.1:8080/fn/v1/_admin/openapi.json\n` +
    `// (OpenAPI ${doc.openapi}, API ${doc.info?.version ?? "?"})\n`;
  for (const name of Object.keys(schemas).sort()) {
    if (!IDENT.test(name) || RESERVED.has(name)) {
      throw new Error(`schema name ${JSON.stringify(name)} cannot name a TypeScript type`);
    }
    const schema = schemas[name];
    const type = toTs(schema, "");
    const plainObject =
      !schema.oneOf &&
      !schema.anyOf &&
      !schema.allOf &&
      !schema.$ref &&
      (schema.type === "object" || schema.type === undefined) &&
      Object.keys(schema.properties ?? {}).length > 0;
    out += `\n${comment(schema.description, "")}`;
    out += plainObject
      ? `export interface ${name} ${type}\n`
      : `export type ${name} = ${type};\n`;
  }
  return out;
}

async function main() {
  const [source, flag] = process.argv.slice(2);
  if (!source || (flag && flag !== "--check")) {
    console.error("usage: node scripts/api-types.mjs <document URL or file> [--check]");
    process.exit(2);
  }
  const text = generate(await load(source));
  if (flag === "--check") {
    const current = await readFile(OUT, "utf8").catch(() => "");
    if (current !== text) {
      console.error(
        `src/api.ts is not what the document generates: run node scripts/api-types.mjs ${source}`,
      );
      process.exit(1);
    }
    console.log("src/api.ts matches the document");
    return;
  }
  await writeFile(OUT, text);
  console.log(`wrote ${OUT}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(e.message ?? e);
    process.exit(1);
  });
}
