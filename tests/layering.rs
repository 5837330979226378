//! The module layering written in `src/lib.rs` holds: every `crate::` path in a module's
//! code (its unit tests aside) names a module of a lower layer. An import cycle between
//! modules therefore fails here, as does a module missing from the table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Layer of each module, read from the `//! | N | a, b | ... |` rows of lib.rs.
fn layers(lib: &str) -> BTreeMap<String, u32> {
    let mut layers = BTreeMap::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! |") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(layer) = cells.first().and_then(|c| c.parse::<u32>().ok()) else {
            continue;
        };
        for module in cells[1].split(',').map(str::trim) {
            assert!(
                layers.insert(module.to_owned(), layer).is_none(),
                "{module} is in the layering table twice"
            );
        }
    }
    layers
}

/// The `pub mod` / `mod` declarations of lib.rs.
fn declared_modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect()
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules a file's code names through `crate::m` or `use crate::{m, ...}`, its
/// `#[cfg(test)]` tail aside (unit tests may build inputs with any module).
fn used_modules(text: &str, known: &BTreeMap<String, u32>) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut used = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = item.trim().split("::").next().unwrap_or("").trim();
                used.insert(name.to_owned());
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used.insert(name);
        }
    }
    used.retain(|m| known.contains_key(m));
    used
}

#[test]
fn every_module_uses_only_lower_layers() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("read lib.rs");
    let layers = layers(&lib);
    assert!(
        layers.len() >= 10,
        "the layering table of lib.rs was not found"
    );

    let declared = declared_modules(&lib);
    let tabled: BTreeSet<String> = layers.keys().cloned().collect();
    let missing: Vec<_> = declared.difference(&tabled).collect();
    assert!(
        missing.is_empty(),
        "modules missing from lib.rs's layering table: {missing:?}"
    );

    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(src()).expect("under src");
        let first = relative
            .iter()
            .next()
            .and_then(|c| c.to_str())
            .unwrap_or("");
        let module = first.trim_end_matches(".rs");
        let Some(&own) = layers.get(module) else {
            // lib.rs, main.rs and the binary's own modules sit above every layer.
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        for used in used_modules(&text, &layers) {
            if used != module && layers[&used] >= own {
                violations.push(format!(
                    "{} (layer {own}) uses {used} (layer {})",
                    relative.display(),
                    layers[&used]
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the layering of src/lib.rs:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_inline_paths() {
    let known: BTreeMap<String, u32> = [("a", 0), ("b", 0), ("c", 0)]
        .into_iter()
        .map(|(m, l)| (m.to_owned(), l))
        .collect();
    let text = "use crate::{a::X, b};\nfn f() { crate::c::g() }\n#[cfg(test)]\nuse crate::d;";
    let used: Vec<_> = used_modules(text, &known).into_iter().collect();
    assert_eq!(used, ["a", "b", "c"]);
}
