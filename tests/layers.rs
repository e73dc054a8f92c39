//! The library's modules form layers that only point down (see `src/lib.rs`): data → nn →
//! engine → tasks → transfer → commands. This test reads every file under `src/` and fails when
//! a `crate::` path reaches a top-level module of a higher layer, naming the file and line.

use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first. Modules of one layer may use each other.
const LAYERS: &[&[&str]] = &[
    &["error", "platform"],
    &["data"],
    &["nn", "report"],
    &["config"],
    &["engine"],
    &["tasks"],
    &["transfer"],
    &["commands"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules a line names through `crate::x` or `use crate::{x, y}`. (`super::`
/// paths are not looked at: they stay inside the file's own top-level module.)
fn crate_modules(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            // use crate::{a::b, c, d::{e, f}}: the names at brace depth 0
            let mut depth = 0;
            let mut name = String::new();
            let mut at_start = true;
            for ch in list.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if !name.is_empty() {
                            found.push(std::mem::take(&mut name));
                        }
                        at_start = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && at_start {
                    if ch.is_alphanumeric() || ch == '_' {
                        name.push(ch);
                    } else if !name.is_empty() {
                        found.push(std::mem::take(&mut name));
                        at_start = false;
                    }
                }
            }
            if !name.is_empty() {
                found.push(name);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    let mut unknown = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        let Some(own) = layer_of(&top) else {
            // main.rs, cli.rs and lib.rs sit above every layer.
            assert!(
                ["main", "cli", "lib"].contains(&top.as_str()),
                "src/{}: module {top} is in no layer; add it to LAYERS here and in src/lib.rs",
                rel.display()
            );
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for m in crate_modules(code) {
                match layer_of(&m) {
                    Some(l) if l > own => bad.push(format!(
                        "src/{}:{}: `{top}` (layer {own}) uses `crate::{m}` (layer {l}): {}",
                        rel.display(),
                        n + 1,
                        line.trim()
                    )),
                    Some(_) => {}
                    None if ["Error", "Result"].contains(&m.as_str()) => {}
                    None => unknown.push(format!("src/{}:{}: crate::{m}", rel.display(), n + 1)),
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports that point up a layer:\n{}",
        bad.join("\n")
    );
    assert!(
        unknown.is_empty(),
        "paths to modules in no layer:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn the_path_reader_finds_what_a_line_uses() {
    assert_eq!(crate_modules("use crate::engine::task::Task;"), ["engine"]);
    assert_eq!(
        crate_modules("use crate::{Error, Result, data::loader::{A, B}, nn};"),
        ["Error", "Result", "data", "nn"]
    );
    assert_eq!(
        crate_modules("let x = crate::platform::device::seeded(&d, 0, || crate::tasks::find(n));"),
        ["platform", "tasks"]
    );
    assert!(crate_modules("use super::checkpoint;").is_empty());
}
