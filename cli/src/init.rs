//! `reactor init NAME --template bun|wasm-rust|wasm-js`: writes a function directory that
//! deploys as it is: a manifest, a handler answering the seed's hello, a `.reactorignore`
//! and a test of its own. The templates live in `cli/templates/`, compiled in.

use crate::Output;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// The function's name (lowercase letters, digits and '-', starting with a letter).
    pub name: String,
    /// What to start from.
    #[arg(long, value_enum, default_value_t = Template::Bun)]
    pub template: Template,
    /// Where to write it (default: `./NAME`); it must not exist or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Template {
    /// TypeScript on Bun, with a `bun test`.
    Bun,
    /// A Rust wasi:http component, with `cargo test`.
    WasmRust,
    /// JavaScript compiled to a wasi:http component by ComponentizeJS, with `node --test`.
    WasmJs,
}

impl Template {
    fn runtime(self) -> &'static str {
        match self {
            Template::Bun => "bun",
            Template::WasmRust | Template::WasmJs => "wasm",
        }
    }

    /// (path in the new directory, contents) with `{{name}}` and `{{crate}}` to fill in.
    fn files(self) -> &'static [(&'static str, &'static str)] {
        macro_rules! t {
            ($dir:literal, $file:literal) => {
                include_str!(concat!("../templates/", $dir, "/", $file))
            };
        }
        match self {
            Template::Bun => &[
                ("manifest.json", t!("bun", "manifest.json")),
                ("index.ts", t!("bun", "index.ts")),
                ("index.test.ts", t!("bun", "index.test.ts")),
                (".reactorignore", t!("bun", ".reactorignore")),
            ],
            Template::WasmRust => &[
                ("manifest.json", t!("wasm-rust", "manifest.json")),
                ("Cargo.toml", t!("wasm-rust", "Cargo.toml.tmpl")),
                (
                    "rust-toolchain.toml",
                    t!("wasm-rust", "rust-toolchain.toml"),
                ),
                ("src/lib.rs", t!("wasm-rust", "src/lib.rs")),
                (".reactorignore", t!("wasm-rust", ".reactorignore")),
                (".gitignore", t!("wasm-rust", "gitignore.tmpl")),
            ],
            Template::WasmJs => &[
                ("manifest.json", t!("wasm-js", "manifest.json")),
                ("package.json", t!("wasm-js", "package.json.tmpl")),
                ("package-lock.json", t!("wasm-js", "package-lock.json")),
                ("wit.mjs", t!("wasm-js", "wit.mjs")),
                ("wit/world.wit", t!("wasm-js", "wit/world.wit")),
                ("src/index.js", t!("wasm-js", "src/index.js")),
                ("src/index.test.js", t!("wasm-js", "src/index.test.js")),
                (".reactorignore", t!("wasm-js", ".reactorignore")),
                (".gitignore", t!("wasm-js", "gitignore.tmpl")),
            ],
        }
    }

    /// What to run next, after `cd DIR`.
    fn next_steps(self, name: &str) -> Vec<String> {
        let mut steps = Vec::new();
        match self {
            Template::Bun => {
                // The Bun the server runs (the set-up's is not on PATH).
                let bun = reactor_worker_bun::find_bun(None)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "bun".into());
                steps.push(format!("{bun} test   # the handler's test"))
            }
            Template::WasmRust => {
                steps.push("cargo test                    # the handler's test".into())
            }
            Template::WasmJs => {
                steps.push("npm install                   # the component toolchain".into());
                steps.push("npm test                      # the handler's test".into());
            }
        }
        steps.push(format!(
            "reactor functions create {name} --runtime {}",
            self.runtime()
        ));
        steps.push(format!(
            "reactor functions dev {name} --dir .   # deploy on every save"
        ));
        steps
    }
}

pub fn run(args: &InitArgs, output: Output) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let written = write(&args.name, args.template, &dir)?;
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "name": args.name,
                "template": args.template,
                "runtime": args.template.runtime(),
                "dir": dir,
                "files": written,
            }))?
        );
        return Ok(());
    }
    println!(
        "Wrote {} ({} function, {} files) in {}",
        args.name,
        args.template.runtime(),
        written.len(),
        dir.display()
    );
    println!("Next:\n  cd {}", dir.display());
    for step in args.template.next_steps(&args.name) {
        println!("  {step}");
    }
    Ok(())
}

/// Writes the template into `dir` (created; refused when it has files) and returns the
/// paths written.
pub fn write(name: &str, template: Template, dir: &Path) -> anyhow::Result<Vec<String>> {
    if !reactor_control_plane::valid_function_name(name) {
        bail!(
            "{name:?} is not a function name (lowercase letters, digits and '-', starting with a letter, at most 63)"
        );
    }
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} already exists and is not empty: choose another --dir",
                dir.display()
            );
        }
    }
    let crate_name = name.replace('-', "_");
    let mut written = Vec::new();
    for (path, text) in template.files() {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let text = text
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name);
        std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
        written.push(path.to_string());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_in_the_name_and_refuse_a_used_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for template in [Template::Bun, Template::WasmRust, Template::WasmJs] {
            let dir = tmp.path().join(format!("{template:?}"));
            let files = write("my-fn", template, &dir).expect("written");
            assert!(files.contains(&"manifest.json".to_string()));
            assert!(files.contains(&".reactorignore".to_string()));
            let manifest = std::fs::read(dir.join("manifest.json")).expect("manifest");
            let manifest =
                reactor_api::manifest::Manifest::parse(&manifest).expect("a valid manifest");
            assert_eq!(manifest.name.as_deref(), Some("my-fn"));
            assert_eq!(
                manifest.runtime.map(|r| r.to_string()).as_deref(),
                Some(template.runtime())
            );
            for file in &files {
                let text = std::fs::read_to_string(dir.join(file)).expect("text");
                assert!(!text.contains("{{"), "{file} still has a placeholder");
            }
            let again = write("my-fn", template, &dir).expect_err("not empty");
            assert!(again.to_string().contains("not empty"), "{again}");
        }
        let err = write("My_Fn", Template::Bun, &tmp.path().join("x")).expect_err("bad name");
        assert!(err.to_string().contains("not a function name"), "{err}");
        assert!(
            !tmp.path().join("x").exists(),
            "nothing written for a bad name"
        );
    }
}
