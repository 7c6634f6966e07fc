//! The agent's module folders import one way (README's Layout): the exporter
//! and the engine-neutral parts know no engine, engines know neither the
//! exporter nor the main loop nor each other, and no two folders import each
//! other through any path. Read from the sources, as `use crate::…` says.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// Top-level modules named after `crate::` in `text`, including the items of
/// a `crate::{a::…, b, …}` group.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let bytes = code.as_bytes();
    let ident = |from: usize| -> String {
        code[from..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut at = 0;
    while let Some(i) = code[at..].find("crate::") {
        let start = at + i + "crate::".len();
        at = start;
        if bytes.get(start) != Some(&b'{') {
            out.insert(ident(start));
            continue;
        }
        // A group: the first identifier of each item at depth 1.
        let (mut depth, mut item_start) = (0, true);
        for (k, c) in code[start..].char_indices() {
            match c {
                '{' => {
                    depth += 1;
                    item_start = depth == 1;
                }
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                ',' if depth == 1 => item_start = true,
                c if depth == 1 && item_start && (c.is_ascii_alphabetic() || c == '_') => {
                    out.insert(ident(start + k));
                    item_start = false;
                }
                _ => {}
            }
        }
    }
    out
}

fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            visit(&p, files);
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
}

/// Top-level module -> the top-level modules it imports.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(&src)
                .unwrap()
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let module = f
            .strip_prefix(&src)
            .unwrap()
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        for r in crate_refs(&fs::read_to_string(f).unwrap()) {
            if r != module && modules.contains(&r) {
                g.entry(module.clone()).or_default().insert(r);
            }
        }
    }
    g
}

#[test]
fn folders_import_one_way() {
    let g = graph();
    let imports = |m: &str| g.get(m).cloned().unwrap_or_default();
    let forbidden: &[(&str, &[&str])] = &[
        ("export", &["postgres", "mysql", "run", "attach", "check"]),
        (
            "pipeline",
            &["postgres", "mysql", "run", "attach", "check", "export"],
        ),
        (
            "host",
            &[
                "postgres", "mysql", "run", "attach", "check", "export", "pipeline",
            ],
        ),
        (
            "engine",
            &["postgres", "mysql", "run", "attach", "check", "export"],
        ),
        ("postgres", &["mysql", "run", "attach", "check", "export"]),
        ("mysql", &["postgres", "run", "attach", "check", "export"]),
    ];
    for (m, not) in forbidden {
        let bad: Vec<_> = imports(m)
            .into_iter()
            .filter(|i| not.contains(&i.as_str()))
            .collect();
        assert!(bad.is_empty(), "{m}/ imports {bad:?}");
    }
    // No circle, however long.
    for start in g.keys() {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = imports(start).into_iter().collect();
        while let Some(m) = todo.pop() {
            assert!(&m != start, "{start} imports itself through {seen:?}");
            if seen.insert(m.clone()) {
                todo.extend(imports(&m));
            }
        }
    }
    // The parser sees what it should.
    assert!(
        imports("run").contains("postgres") && imports("postgres").contains("pipeline"),
        "{g:?}"
    );
}

#[test]
fn groups_and_paths_are_read() {
    let refs = crate_refs(
        "use crate::{\n    a::{self, B},\n    c,\n};\nlet x = crate::d::e(); // crate::f\n",
    );
    assert_eq!(refs.into_iter().collect::<Vec<_>>(), ["a", "c", "d"]);
}
