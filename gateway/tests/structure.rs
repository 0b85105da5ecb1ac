//! The layout rules of `gateway/src`, checked on the source text:
//! - no cycles between its top-level modules (each `crate::<module>` a
//!   file names is an edge), so data flows one way;
//! - no cycles between the transports in `transport/` either (`sse`,
//!   `http_stream`, `websocket`: each `super::<t>` or `transport::<t>` a
//!   transport's file names is an edge);
//! - the WebSocket library (tungstenite, a dev-dependency for the tests'
//!   clients) and the gateway's own WebSocket stack are named only inside
//!   `transport/websocket/`, by the router that hands `/ws` to it, and by
//!   the crate root's re-export for the Autobahn echo example, so a new
//!   transport never has to cut through another's types.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a source file belongs to (`hub` for
/// `src/hub/channels.rs`), or `None` for the crate roots.
fn module_of(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(src()).ok()?;
    let first = relative
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// The Rust identifier `text` starts with.
fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Code without `//` comments (doc comments name modules in prose).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&file) else {
            continue;
        };
        let text = code(&std::fs::read_to_string(&file).expect("readable source"));
        let edges = graph.entry(module.clone()).or_default();
        for (at, _) in text.match_indices("crate::") {
            let name = ident(&text[at + "crate::".len()..]);
            if !name.is_empty() && name != module {
                edges.insert(name);
            }
        }
        // `use crate::{a, b::c}` groups.
        for (at, _) in text.match_indices("crate::{") {
            let group: String = text[at + "crate::{".len()..]
                .chars()
                .take_while(|c| *c != '}')
                .collect();
            for item in group.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() && name != module && name != "self" {
                    edges.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(graph, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn top_level_modules_have_no_cycles() {
    let graph = graph();
    assert!(graph.len() > 20, "the source tree was read: {graph:?}");
    assert!(
        graph["server"].contains("transport"),
        "edges are found: {graph:?}"
    );
    assert_no_cycles(&graph, "module cycles in gateway/src");
}

/// Fails with every cycle of `graph`, one per line.
fn assert_no_cycles(graph: &BTreeMap<String, BTreeSet<String>>, what: &str) {
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|module| cycle_from(graph, module))
        .map(|cycle| cycle.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "{what}:\n{}", cycles.join("\n"));
}

/// The transports (folders of `src/transport/`) and, for each, the other
/// transports its files name.
fn transport_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = src().join("transport");
    let names: Vec<String> = std::fs::read_dir(&root)
        .expect("readable transport/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().expect("named").to_string_lossy().into_owned())
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in &names {
        let mut files = Vec::new();
        sources(&root.join(name), &mut files);
        let edges = graph.entry(name.clone()).or_default();
        for file in files {
            let text = code(&std::fs::read_to_string(&file).expect("readable source"));
            // What follows `super::` or `transport::`: a name, or each
            // name of a `{a, b::c}` group.
            let mut named: BTreeSet<String> = BTreeSet::new();
            for prefix in ["super::", "transport::"] {
                for (at, _) in text.match_indices(prefix) {
                    let rest = &text[at + prefix.len()..];
                    let items = match rest.strip_prefix('{') {
                        Some(group) => group.split('}').next().unwrap_or("").to_string(),
                        None => rest.to_string(),
                    };
                    for item in items.split(',') {
                        let item = ident(item.trim());
                        named.insert(item);
                    }
                }
            }
            for other in names.iter().filter(|o| *o != name && named.contains(*o)) {
                edges.insert(other.clone());
            }
        }
    }
    graph
}

#[test]
fn transports_have_no_cycles() {
    let graph = transport_graph();
    assert!(
        ["http_stream", "sse", "websocket"]
            .iter()
            .all(|t| graph.contains_key(*t)),
        "the transports were read: {graph:?}"
    );
    assert!(
        graph["http_stream"].contains("sse"),
        "edges are found (HTTP streaming builds on the SSE stream): {graph:?}"
    );
    assert_no_cycles(&graph, "cycles between transports");
}

#[test]
fn only_the_websocket_transport_names_the_websocket_library() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let inside = src().join("transport").join("websocket");
    // Who may hand work to the WebSocket stack: the router (`/ws`), the
    // crate root (re-exported for the Autobahn echo example) and the
    // transport folder's own `mod.rs`, which declares it.
    let callers = [
        src().join("server").join("router.rs"),
        src().join("lib.rs"),
        src().join("transport").join("mod.rs"),
    ];
    let mut offenders = Vec::new();
    let mut seen_in_router = false;
    for file in files.iter().filter(|f| !f.starts_with(&inside)) {
        let text = code(&std::fs::read_to_string(file).expect("readable source"));
        if text.contains("tungstenite") {
            offenders.push(format!("{}: tungstenite", file.display()));
        }
        let in_group = text.match_indices("transport::{").any(|(at, _)| {
            text[at..]
                .split('}')
                .next()
                .is_some_and(|group| group.split([',', '{']).any(|item| item.trim() == "websocket"))
        });
        let names_stack = text.contains("transport::websocket") || text.contains("websocket::") || in_group;
        if names_stack {
            if callers.contains(file) {
                seen_in_router |= file.ends_with("router.rs");
            } else {
                offenders.push(format!("{}: the WebSocket transport", file.display()));
            }
        }
    }
    assert!(
        seen_in_router,
        "the check reads the router's use of the WebSocket transport"
    );
    assert!(
        offenders.is_empty(),
        "the WebSocket library or stack named outside transport/websocket: {offenders:?}"
    );
}
