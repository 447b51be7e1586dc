//! The README's module map is the code's: every module of `src/` has a row, a module calls only modules its
//! row lists and only rows below its own (so there is no import cycle and no call from a lower layer to a
//! higher one), and the platform-neutral modules reach the platform only through `platform`'s seams.
//!
//! A module's calls are the `crate::…` paths in its files outside their unit tests and comments. The
//! `platform` folder's interfaces and Linux parts are rows of their own (`platform::keep_alive`, …), since the
//! supervisor and the store implement the interfaces that the selection in `platform` binds.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The parts of `platform` with rows of their own: its interfaces and the Linux pieces that call no more
/// than their row says.
const PLATFORM_PARTS: [&str; 7] = [
    "destination",
    "keep_alive",
    "naming",
    "paths",
    "process",
    "target",
    "users",
];

/// Written once for every platform: no Unix API, and no Linux implementation called by name.
const NEUTRAL: [&str; 5] = ["sync", "worker", "status", "settings", "keeper"];
const UNIX_ONLY: [&str; 7] = [
    "cfg(unix)",
    "signal_hook",
    "std::os::unix",
    "libc::",
    "nix::",
    "exacl::",
    "crate::store",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The map's name for the module a file belongs to (`None`: the crate root and the binary).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let parts: Vec<&str> = rel.iter().map(|p| p.to_str().unwrap()).collect();
    match parts.as_slice() {
        ["lib"] | ["main"] => None,
        ["platform", .., last] if PLATFORM_PARTS.contains(last) => {
            Some(format!("platform::{last}"))
        }
        [first, ..] => Some(first.to_string()),
        [] => None,
    }
}

/// A file's code without its unit tests and comments.
fn code(file: &Path) -> String {
    let text = fs::read_to_string(file).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// The modules `code` names as `crate::<module>` (or `crate::platform::<part>`, `crate::platform::{<part>, …}`).
fn calls(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let module: String = rest.chars().take_while(|c| is_ident(*c)).collect();
        if module.is_empty() {
            continue;
        }
        if module != "platform" {
            out.insert(module);
            continue;
        }
        let after = rest["platform".len()..].strip_prefix("::").unwrap_or("");
        let named: Vec<String> = if let Some(list) = after.strip_prefix('{') {
            let list = &list[..list.find('}').unwrap_or(list.len())];
            list.split(',')
                .map(|item| item.trim().split("::").next().unwrap_or("").to_string())
                .collect()
        } else {
            vec![after.chars().take_while(|c| is_ident(*c)).collect()]
        };
        for name in named {
            if PLATFORM_PARTS.contains(&name.as_str()) {
                out.insert(format!("platform::{name}"));
            } else {
                out.insert("platform".to_string());
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&file) else {
            continue;
        };
        let mut called = calls(&code(&file));
        called.remove(&module);
        graph.entry(module).or_default().extend(called);
    }
    graph
}

/// The README map's rows, top to bottom: the modules of each row and the modules its last column allows.
fn map_rows() -> Vec<(Vec<String>, BTreeSet<String>)> {
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("## The code: modules and what they may call")
        .expect("the README has its module map");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let backticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(|name| name.trim_end_matches('/').to_string())
            .collect()
    };
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
            let modules = backticked(cells[0])
                .into_iter()
                .filter(|m| !m.ends_with(".rs"))
                .collect();
            let allowed = backticked(cells[cells.len() - 1]).into_iter().collect();
            (modules, allowed)
        })
        .collect()
}

#[test]
fn every_module_calls_only_what_its_row_allows_and_only_rows_below() {
    let graph = graph();
    let rows = map_rows();
    let row_of = |module: &str| {
        rows.iter()
            .position(|(ms, _)| ms.iter().any(|m| m == module))
    };
    let mut wrong = Vec::new();
    for (module, called) in &graph {
        let Some(row) = row_of(module) else {
            wrong.push(format!("{module} has no row in the README's module map"));
            continue;
        };
        for callee in called {
            let below = row_of(callee).is_some_and(|r| r > row);
            if !below {
                wrong.push(format!(
                    "{module} calls {callee}, which is not in a row below it"
                ));
            }
            if !rows[row].1.contains(callee) {
                wrong.push(format!(
                    "{module} calls {callee}, which its row does not list"
                ));
            }
        }
    }
    for (modules, _) in &rows {
        for m in modules {
            if !graph.contains_key(m) {
                wrong.push(format!(
                    "the map has a row for {m}, which src/ does not have"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_module_graph_has_no_cycle() {
    // Independent of the map: a depth-first search for a back edge.
    let graph = graph();
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for callee in graph.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(callee, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_platform_neutral_modules_use_no_unix_api() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut found = Vec::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        if !NEUTRAL.contains(&module.as_str()) {
            continue;
        }
        let code = code(file);
        for word in UNIX_ONLY {
            if code.contains(word) {
                found.push(format!("{} uses {word}", file.display()));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_call_reader_sees_every_form_of_path() {
    let code = "use crate::platform::{CertificateDestination, naming, keep_alive::{self, X}};\n\
                let x = crate::store::quiesce();\nuse crate::platform::paths::ARC_KEY_DIR;\n\
                use crate::platform::Keeper;";
    let found: Vec<String> = calls(code).into_iter().collect();
    assert_eq!(
        found,
        [
            "platform",
            "platform::keep_alive",
            "platform::naming",
            "platform::paths",
            "store"
        ]
    );
}
