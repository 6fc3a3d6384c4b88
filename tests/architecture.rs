//! The module graph, checked from the source: the top-level modules form layers, each
//! using only those below it (README, "Architecture"). Fails when a module reaches up or
//! sideways, when a cycle appears, or when the engine uses anything but leaf modules.
//!
//! A module's dependencies are the `crate::<module>` paths in its files (including
//! grouped imports, `crate::{a, b}`); its own submodules reach each other with `super::`,
//! which cannot leave it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, lowest first. A module may use modules of lower layers only; modules of
/// one layer do not use each other (cold storage sits beside the shard layer and talks
/// to it only through `wire` records and the `health` and `ports` interfaces).
const LAYERS: &[&[&str]] = &[
    &["ids", "numbering", "config", "metrics", "process"],
    &["engine"],
    &["accounts", "shard_map"],
    &["wire", "redis_state", "health", "ports"],
    &["shard", "cold"],
    &["api"],
    &["server"],
];

fn sources(path: &Path, out: &mut Vec<String>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            sources(&p, out);
        }
    } else if path.is_file() && path.extension().is_some_and(|x| x == "rs") {
        out.push(std::fs::read_to_string(path).unwrap());
    }
}

/// The identifiers a source names right after `crate::`.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        // Not `exchange_crate::` or the like.
        if text[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            found.extend(group[..end].split(',').map(|item| ident(item.trim())).filter(|i| !i.is_empty()));
        } else {
            found.insert(ident(rest));
        }
    }
    found
}

/// Top-level module → the other top-level modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut graph = BTreeMap::new();
    for m in &modules {
        let mut texts = Vec::new();
        sources(&src.join(m), &mut texts);
        sources(&src.join(format!("{m}.rs")), &mut texts);
        let used: BTreeSet<String> =
            texts.iter().flat_map(|t| crate_paths(t)).filter(|u| u != m && modules.contains(u)).collect();
        graph.insert(m.clone(), used);
    }
    graph
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// A cycle through `m`, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, m: &str, path: &mut Vec<String>) -> Option<Vec<String>> {
    if let Some(start) = path.iter().position(|p| p == m) {
        let mut cycle = path[start..].to_vec();
        cycle.push(m.to_owned());
        return Some(cycle);
    }
    path.push(m.to_owned());
    for next in &graph[m] {
        if let Some(c) = cycle_from(graph, next, path) {
            return Some(c);
        }
    }
    path.pop();
    None
}

#[test]
fn the_parser_sees_single_and_grouped_imports() {
    let text = "use crate::engine::Side;\nuse crate::{accounts::Fill, wire};\nlet x = exchange_crate::no; crate::ids::encode();";
    let found: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(found, ["accounts", "engine", "ids", "wire"]);
}

#[test]
fn no_cycle_among_top_level_modules() {
    let graph = graph();
    for m in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, m, &mut Vec::new()) {
            panic!("cycle among top-level modules: {}\n{graph:#?}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_engine_uses_only_leaf_modules() {
    let graph = graph();
    for used in &graph["engine"] {
        assert!(graph[used].is_empty(), "the engine uses `{used}`, which itself uses {:?}", graph[used]);
    }
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (m, used) in &graph {
        let Some(layer) = layer_of(m) else {
            wrong.push(format!("`{m}` is in no layer: add it to LAYERS (and to the README's Architecture)"));
            continue;
        };
        for u in used {
            if layer_of(u).is_none_or(|l| l >= layer) {
                wrong.push(format!("`{m}` (layer {layer}) uses `{u}` (layer {:?})", layer_of(u)));
            }
        }
    }
    assert!(wrong.is_empty(), "{}\n{graph:#?}", wrong.join("\n"));
}
