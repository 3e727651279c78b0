// Writes wit/deps: the WASI packages the proxy world needs, taken from the definitions
// jco ships (node_modules/@bytecodealliance/jco/lib/wit/builtin/0.2.12) and labelled
// 0.2.10, the version the engine inside ComponentizeJS 0.23 is built for. Between the
// two, the packages differ only in their version strings and in `exit-with-code`, which
// 0.2.10 marks unstable and is left out.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const from = join("node_modules", "@bytecodealliance", "jco", "lib", "wit", "builtin", "0.2.12");
for (const pkg of ["cli", "clocks", "filesystem", "http", "io", "random", "sockets"]) {
  const text = readFileSync(join(from, `wasi-${pkg}`, "package.wit"), "utf8")
    .replaceAll("0.2.12", "0.2.10")
    .split("\n")
    .filter((line) => !line.includes("exit-with-code: func"))
    .join("\n");
  mkdirSync(join("wit", "deps", pkg), { recursive: true });
  writeFileSync(join("wit", "deps", pkg, "package.wit"), text);
}
