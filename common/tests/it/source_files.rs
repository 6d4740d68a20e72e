//! Every non-test source file of the workspace opens with a `//!` paragraph that says what lives
//! in it and why (CONVENTIONS in ARCHITECTURE.md): a newcomer reads that paragraph before the code.

use std::path::{Path, PathBuf};

/// The workspace root: the directory above this crate.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_path_buf()
}

/// The `.rs` files under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Whether `text` opens (after blank lines) with a `//!` line that says something.
fn opens_with_module_doc(text: &str) -> bool {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.starts_with("//!") && l.trim_start_matches("//!").trim().len() > 10)
}

/// The source files of every crate of the workspace (`src/`, `examples/`, `build.rs`; the
/// integration tests under `tests/` state their property per test instead), each opening with
/// its `//!` paragraph.
#[test]
fn every_source_file_opens_with_its_module_doc() {
    let root = workspace();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members: Vec<String> = manifest
        .lines()
        .skip_while(|l| !l.starts_with("members"))
        .take_while(|l| !l.trim().is_empty())
        .flat_map(|l| l.split('"').skip(1).step_by(2).map(str::to_string))
        .collect();
    assert!(
        members.len() >= 5,
        "workspace members not found: {members:?}"
    );
    let mut files = Vec::new();
    for m in &members {
        let krate = root.join(m);
        rust_files(&krate.join("src"), &mut files);
        rust_files(&krate.join("examples"), &mut files);
        let build = krate.join("build.rs");
        if build.exists() {
            files.push(build);
        }
    }
    assert!(
        files.len() > 50,
        "too few source files found: {}",
        files.len()
    );
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !opens_with_module_doc(&std::fs::read_to_string(f).unwrap()))
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` paragraph saying what lives in them and why: {missing:?}"
    );
}

/// The check itself tells a file with a module doc from one without.
#[test]
fn the_check_tells_files_apart() {
    assert!(opens_with_module_doc(
        "\n//! The worker's hub: streams by user.\nuse x;"
    ));
    assert!(!opens_with_module_doc("use std::fmt;\n//! late"));
    assert!(!opens_with_module_doc(
        "/// An item doc, not a module doc.\nfn f() {}"
    ));
    assert!(!opens_with_module_doc("//!\n"));
}

/// A crate's modules, by path (`["replicated", "raft", "types"]`), and their files.
fn modules(src: &Path) -> Vec<(Vec<String>, PathBuf)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(src).unwrap().with_extension("");
            let mut path: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into()).collect();
            if matches!(
                path.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                path.pop();
            }
            (path, f)
        })
        .collect()
}

/// The modules that `text`, the file of module `me`, names through `crate::` or `super::`
/// paths, each resolved to the longest module path that exists (an item of a module with
/// children: that module and all of them, since it may be a re-export). Its unit tests are left
/// out, and so are `me`'s own descendants and ancestors (re-exports and `super` items are not
/// cycles).
fn imports(me: &[String], text: &str, known: &[Vec<String>]) -> Vec<Vec<String>> {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let is_path = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    for (i, _) in text.match_indices("::") {
        let start = text[..i].rfind(|c: char| !is_path(c)).map_or(0, |s| s + 1);
        if start + 1 > i || text[start..i].contains("::") {
            continue; // not the first segment of a path
        }
        let segments: Vec<&str> = text[start..]
            .split(|c: char| !is_path(c))
            .next()
            .unwrap_or("")
            .split("::")
            .filter(|s| !s.is_empty())
            .collect();
        // `crate::` starts at the root; each `super::` goes up one from this module.
        let mut path: Vec<String> = match segments.first() {
            Some(&"crate") => Vec::new(),
            Some(&"super") => me.to_vec(),
            _ => continue,
        };
        for seg in &segments {
            match *seg {
                "crate" => {}
                "super" => {
                    path.pop();
                }
                s => path.push(s.to_string()),
            }
        }
        let Some(target) = (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| known.contains(p))
        else {
            continue;
        };
        // An item of a module with children may be re-exported from any of them: count them all
        // (but not for an item of an ancestor, which is in scope through `super`).
        let reexported = target.len() < path.len() && !me.starts_with(&target);
        for m in known {
            let hit = m == &target || (reexported && m.starts_with(&target));
            if hit && !(m.starts_with(me) || me.starts_with(m)) {
                out.push(m.clone());
            }
        }
    }
    out
}

/// No crate has an import cycle between its modules: a module never uses, directly or through
/// others, a module that uses it (layers call downwards only).
#[test]
fn no_crate_has_an_import_cycle() {
    let root = workspace();
    for krate in [
        "proto", "common", "master", "worker", "client", "e2e", "bench",
    ] {
        let mods = modules(&root.join(krate).join("src"));
        let known: Vec<Vec<String>> = mods.iter().map(|(p, _)| p.clone()).collect();
        let edges: Vec<(Vec<String>, Vec<Vec<String>>)> = mods
            .iter()
            .map(|(m, f)| {
                let text = std::fs::read_to_string(f).unwrap();
                (m.clone(), imports(m, &text, &known))
            })
            .collect();
        // A cycle exists when some module reaches itself.
        for (start, _) in &edges {
            let mut seen: Vec<Vec<String>> = Vec::new();
            let mut todo: Vec<(Vec<String>, Vec<Vec<String>>)> = vec![(start.clone(), vec![])];
            while let Some((m, via)) = todo.pop() {
                let next = edges.iter().find(|(e, _)| *e == m).map(|(_, n)| n);
                for n in next.into_iter().flatten() {
                    let mut route = via.clone();
                    route.push(n.clone());
                    assert!(
                        n != start,
                        "{krate}: import cycle {}",
                        std::iter::once(start)
                            .chain(&route)
                            .map(|p| p.join("::"))
                            .collect::<Vec<_>>()
                            .join(" → ")
                    );
                    if !seen.contains(n) {
                        seen.push(n.clone());
                        todo.push((n.clone(), route));
                    }
                }
            }
        }
    }
}
