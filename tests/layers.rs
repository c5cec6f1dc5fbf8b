//! Modules import only the layers below them (README, "Layout of the source"): every
//! `crate::<module>` path outside test code must name a layer at or below the file's own.
//! The embedded scene set's room spans two layers: its grammar, renderer, writer and
//! parser sit with `data`, its heads, readers and probe with `models`.

use std::path::{Path, PathBuf};

const ORDER: [&str; 15] = [
    "distributed",
    "util",
    "config",
    "device",
    "data",
    "eval",
    "nn",
    "models",
    "train",
    "report",
    "stages",
    "export",
    "serve",
    "cli",
    "app",
];

/// The scene files (and the names `scenes` re-exports) that sit with `data`.
const SCENE_DATA: [&str; 10] = [
    "scene",
    "paint",
    "describe",
    "parse",
    "render",
    "render_dataset",
    "render_extra",
    "make_item",
    "scene_of",
    "Item",
];

/// The layer of a module path (`["scenes", "probe"]`, `["stages", "t2i"]`).
fn layer(path: &[&str]) -> Option<usize> {
    let top = *path.first()?;
    let name = if top == "scenes" {
        match path.get(1) {
            None => "data",
            Some(sub) if SCENE_DATA.contains(sub) || *sub == "mod" => "data",
            Some(_) => "models",
        }
    } else {
        top
    };
    ORDER.iter().position(|l| *l == name)
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

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    let mut upward = vec![];
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap().with_extension("");
        let parts: Vec<&str> = rel.iter().map(|p| p.to_str().unwrap()).collect();
        let Some(own) = layer(&parts) else { continue };
        if parts.last() == Some(&"tests") {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let body = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in body.lines().enumerate() {
            for hit in line.split("crate::").skip(1) {
                let path: Vec<&str> = hit
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap()
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .collect();
                if let Some(target) = layer(&path) {
                    if target > own {
                        upward.push(format!(
                            "{}:{}: {} imports {}",
                            rel.display(),
                            n + 1,
                            ORDER[own],
                            path.join("::")
                        ));
                    }
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that look up:\n{}",
        upward.join("\n")
    );
    // The check sees the tree: each layer has files.
    assert!(files.len() > 100, "{} files", files.len());
}
