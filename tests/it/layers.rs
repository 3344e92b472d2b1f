//! The crate's layers point one way. Reads every `crate::...` path in
//! `src/` and fails on an import from a lower layer to a higher one, or
//! from one domain into another, naming the file and line.
//!
//! - shell: `main`, `cli`, `server`, `config` (assembles everything);
//! - domains: `fleet`, `ingest`, `retention`, `figures`, `app`, `agent`
//!   (each a feature; they share only what lies below them);
//! - foundations: `storage`, `error`, `auth`, `body`, `wire`, `format`,
//!   `builds`, `stats`, `ledger`, `telemetry`, `cache`, `clock`, `files`,
//!   `meters`, `verify`, `gather` (what every domain stands on).
//!
//! A module not listed here fails the test too, so that a new one is
//! placed on purpose.

use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    Foundation,
    Domain,
    Shell,
}

fn layer_of(module: &str) -> Option<Layer> {
    match module {
        "main" | "lib" | "cli" | "server" | "config" | "site" => Some(Layer::Shell),
        "fleet" | "ingest" | "retention" | "figures" | "app" | "agent" => Some(Layer::Domain),
        "storage" | "error" | "auth" | "body" | "wire" | "format" | "builds" | "stats"
        | "ledger" | "telemetry" | "cache" | "clock" | "files" | "meters" | "verify" | "gather" => {
            Some(Layer::Foundation)
        }
        _ => None,
    }
}

/// The top-level module a source file belongs to: `src/fleet/routes.rs` is
/// in `fleet`, `src/wire.rs` in `wire`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap_or(file);
    let first = relative
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The top-level modules a line names through `crate::`, including every
/// item of a grouped `use crate::{a::x, b}`.
fn crate_paths(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut modules = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        modules.push(leading_ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            modules.push(leading_ident(&item));
        } else {
            modules.push(leading_ident(rest));
        }
    }
    modules.retain(|m| !m.is_empty() && m != "self");
    modules
}

fn leading_ident(text: &str) -> String {
    text.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Why an import from `from` to `to` breaks the layers, if it does.
fn violation(from: &str, to: &str) -> Option<String> {
    if from == to {
        return None;
    }
    let Some(from_layer) = layer_of(from) else {
        return Some(format!(
            "`{from}` is in no layer (add it to tests/it/layers.rs)"
        ));
    };
    let Some(to_layer) = layer_of(to) else {
        return Some(format!(
            "`{to}` is in no layer (add it to tests/it/layers.rs)"
        ));
    };
    if to_layer > from_layer {
        Some(format!(
            "{from_layer:?} `{from}` imports {to_layer:?} `{to}`, a higher layer"
        ))
    } else if from_layer == Layer::Domain && to_layer == Layer::Domain {
        Some(format!("domain `{from}` imports domain `{to}`"))
    } else {
        None
    }
}

/// Every `crate::` import in `src/` points to the importer's own module or
/// to a lower layer, never up and never sideways between domains.
#[test]
fn imports_point_down_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    for file in &files {
        let from = module_of(&src, file);
        let text = std::fs::read_to_string(file).expect("source file");
        for (number, line) in text.lines().enumerate() {
            for to in crate_paths(line) {
                if let Some(why) = violation(&from, &to) {
                    let shown = file.strip_prefix(&src).unwrap_or(file).display();
                    problems.push(format!(
                        "src/{shown}:{}: {why}\n    {}",
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} imports break the layers:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The path reader sees grouped, nested and inline paths and ignores
/// comments and `$crate`.
#[test]
fn crate_paths_are_read_like_the_compiler_would() {
    assert_eq!(crate_paths("use crate::wire::Snapshot;"), ["wire"]);
    assert_eq!(
        crate_paths("use crate::{auth::{a, b}, error::Result, self};"),
        ["auth", "error"]
    );
    assert_eq!(
        crate_paths("let x = crate::db::now_ms() + crate::format::f();"),
        ["db", "format"]
    );
    assert!(crate_paths("// see crate::server").is_empty());
    assert!(crate_paths("$crate::x").is_empty());
    assert_eq!(violation("fleet", "server").map(|_| ()), Some(()));
    assert_eq!(violation("fleet", "ingest").map(|_| ()), Some(()));
    assert_eq!(violation("wire", "fleet").map(|_| ()), Some(()));
    assert_eq!(violation("fleet", "wire"), None);
    assert_eq!(violation("server", "fleet"), None);
}
