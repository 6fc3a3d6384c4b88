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

/// The rooms of a shard (`src/shard/`), lowest first. A room may use its own modules and
/// the rooms of lower layers only; the top layer (the `Shard` of `mod.rs` and the
/// dispatcher) holds the rooms and hands them requests.
const ROOMS: &[&[&str]] = &[
    &["tape"],
    &["protocol"],
    &["rpc"],
    &["core"],
    &["log"],
    &["projections"],
    &["accounts"],
    &["symbols"],
    &["mod", "dispatch"],
];

/// The module path of a source file under `src/`: `shard/log/mod.rs` is `[shard, log]`.
fn module_path(file: &Path, src: &Path) -> Vec<String> {
    let mut parts: Vec<String> =
        file.strip_prefix(src).unwrap().with_extension("").iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The absolute paths (as module path components) a source names with `crate::` or
/// `super::` (grouped imports included), resolved from the module `at`.
fn named_paths(text: &str, at: &[String]) -> Vec<Vec<String>> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    let mut found = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let boundary = text[..i].chars().next_back().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        let (mut base, mut tail) = if boundary && rest.starts_with("crate::") {
            (Vec::new(), &rest["crate::".len()..])
        } else if boundary && rest.starts_with("super::") {
            let mut base = at.to_vec();
            let mut tail = rest;
            while let Some(t) = tail.strip_prefix("super::") {
                base.pop();
                tail = t;
            }
            (base, tail)
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        // Path segments up to the item, then a group or a single name.
        loop {
            if let Some(group) = tail.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name = ident(item.trim());
                    if !name.is_empty() && name != "self" {
                        let mut p = base.clone();
                        p.push(name);
                        found.push(p);
                    } else if name == "self" {
                        found.push(base.clone());
                    }
                }
                break;
            }
            let name = ident(tail);
            if name.is_empty() {
                found.push(base.clone());
                break;
            }
            base.push(name.clone());
            tail = &tail[name.len()..];
            match tail.strip_prefix("::") {
                Some(t) => tail = t,
                None => {
                    found.push(base.clone());
                    break;
                }
            }
        }
        i += 1;
    }
    found
}

fn room_layer(room: &str) -> Option<usize> {
    ROOMS.iter().position(|layer| layer.contains(&room))
}

/// The room a module path under `shard` belongs to: its first component, or `mod` for
/// what `shard/mod.rs` itself defines.
fn room_of(path: &[String]) -> Option<String> {
    if path.first().is_none_or(|p| p != "shard") {
        return None;
    }
    let first = path.get(1).cloned().unwrap_or_else(|| "mod".to_owned());
    Some(if ROOMS.iter().any(|l| l.contains(&first.as_str())) { first } else { "mod".to_owned() })
}

fn shard_files(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            shard_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|x| x == "rs") {
        out.push(path.to_owned());
    }
}

#[test]
fn the_resolver_sees_super_and_crate_paths_and_groups() {
    let at: Vec<String> = ["shard", "symbols", "stream"].map(String::from).to_vec();
    let text = "use super::SymbolRoom;\nuse super::super::log::{voids, Log};\nuse crate::shard::core::now_ms;\nx::super::no";
    let rooms: Vec<Option<String>> = named_paths(text, &at).iter().map(|p| room_of(p)).collect();
    assert_eq!(rooms, [Some("symbols"), Some("log"), Some("log"), Some("core")].map(|r| r.map(String::from)));
}

#[test]
fn the_rooms_of_a_shard_use_only_the_rooms_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    shard_files(&src.join("shard"), &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut rooms_seen = BTreeSet::new();
    for file in &files {
        let at = module_path(file, &src);
        let Some(room) = room_of(&at) else { continue };
        let Some(layer) = room_layer(&room) else {
            wrong.push(format!("{}: room `{room}` is in no layer: add it to ROOMS (and to the shard's module doc)", file.display()));
            continue;
        };
        rooms_seen.insert(room.clone());
        let text = std::fs::read_to_string(file).unwrap();
        for used in named_paths(&text, &at).iter().filter_map(|p| room_of(p)) {
            let ok = used == room || room_layer(&used).is_some_and(|l| l < layer || (l == layer && layer == ROOMS.len() - 1));
            if !ok {
                wrong.push(format!("{}: room `{room}` (layer {layer}) uses `{used}` (layer {:?})", file.display(), room_layer(&used)));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    for room in ["accounts", "symbols", "log", "projections", "core"] {
        assert!(rooms_seen.contains(room), "no room `{room}` under src/shard");
    }
}
