//! Architecture invariants (ARCHITECTURE.md), enforced on the source text as rust-analyzer's
//! `tidy.rs` does: a change that breaks a boundary fails the build with the rule it broke.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `src/`-relative path with forward slashes.
fn rel(p: &Path) -> String {
    p.strip_prefix(root().join("src"))
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/")
}

/// Source text without comments (so prose may name what code must not use).
fn code(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn check(rule: &str, allowed: &[&str], token: &str) {
    let offenders: Vec<String> = sources(&root().join("src"))
        .iter()
        .filter(|p| {
            let r = rel(p);
            !allowed
                .iter()
                .any(|a| r == *a || (a.ends_with('/') && r.starts_with(a)))
        })
        .filter(|p| code(p).contains(token))
        .map(|p| rel(p))
        .collect();
    assert!(
        offenders.is_empty(),
        "{rule}: `{token}` is used in {offenders:?}"
    );
}

/// The stores: the only files that run SQL, each the owner of its table group.
const STORES: &[&str] = &[
    "db.rs",
    "queue/",
    "fleet/",
    "datasets/",
    "audit.rs",
    "sink/postgres.rs",
    "sources/store.rs",
    // Test aids (a feature the release build does not have) keep their own tables.
    "testing/",
];

#[test]
fn only_the_stores_touch_sqlx() {
    check(
        "SQL lives in the stores (api/, etl/, worker/, maintenance/ hold stores, never pools)",
        STORES,
        "sqlx",
    );
    check("no raw pool leaves the stores", STORES, "PgPool");
}

/// Sources decide slots, leases and ages on PostgreSQL's clock: a worker whose clock is wrong
/// must change nothing (ADR 0012).
#[test]
fn sources_read_no_local_clock() {
    for token in ["Utc::now(", "SystemTime::now(", "Local::now("] {
        let offenders: Vec<String> = sources(&root().join("src/sources"))
            .iter()
            .filter(|p| code(p).contains(token))
            .map(|p| rel(p))
            .collect();
        assert!(
            offenders.is_empty(),
            "`{token}` in {offenders:?}: use the database's now()"
        );
    }
}

/// Everything the repository cites lives in it: someone who clones it has no `../shared`.
/// The one exception is the peer benchmark kit, an input `scripts/bench-vs-peers` documents.
#[test]
fn the_repository_cites_only_itself() {
    let repo = root();
    let mut files = vec![
        repo.join("ARCHITECTURE.md"),
        repo.join("README.md"),
        repo.join("Cargo.toml"),
    ];
    for dir in [
        "src",
        "docs",
        "scripts",
        "tests",
        "benches",
        "config",
        "migrations",
        "sql",
        "console",
        "examples",
    ] {
        let mut stack = vec![repo.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    if !p.ends_with("node_modules") {
                        stack.push(p);
                    }
                } else if p.file_name().is_some_and(|n| n != "tidy.rs") {
                    files.push(p);
                }
            }
        }
    }
    let allowed = |p: &Path, line: &str| {
        line.contains("../shared/peers")
            && (p.ends_with("scripts/bench-vs-peers") || p.ends_with("docs/benchmarks.md"))
    };
    let mut offenders = Vec::new();
    for p in &files {
        let Ok(text) = std::fs::read_to_string(p) else {
            continue; // binary fixtures
        };
        for (i, line) in text.lines().enumerate() {
            let cites = [
                "../shared",
                "shared/",
                "DECISIONS.md",
                "DECISIONS D",
                "PERF.md",
                "SPEC.md",
            ]
            .iter()
            .any(|t| line.contains(t));
            if cites && !allowed(p, line) {
                offenders.push(format!(
                    "{}:{}",
                    p.strip_prefix(&repo).unwrap().display(),
                    i + 1
                ));
            }
        }
    }
    assert!(
        offenders.len() < files.len() && files.len() > 100,
        "the walk found the repository's files"
    );
    assert!(
        offenders.is_empty(),
        "these cite files outside the repository (put what they need in docs/): {offenders:?}"
    );
}

#[test]
fn no_store_hands_out_its_pool() {
    for token in ["pub fn pool(", "pub(crate) fn pool("] {
        check("stores expose named operations, not their pool", &[], token);
    }
}

#[test]
fn anyhow_only_at_the_binary_edge() {
    check(
        "the library reports typed errors (thiserror); anyhow is for the binary",
        &["main.rs", "cli/"],
        "anyhow",
    );
}

#[test]
fn background_tasks_are_started_in_one_place() {
    check(
        "tasks go on a tracker started by startup.rs (one shutdown path)",
        &[
            "startup.rs",
            "cli/",
            // A stage's progress reporter: cancelled by a drop guard when its stage ends.
            "etl/stages/mod.rs",
            // The drain timer's unit test spawns it on the test runtime.
            "lifecycle.rs",
        ],
        "tokio::spawn(",
    );
}

#[test]
fn defaults_live_in_config_default_toml_only() {
    let toml: toml::Table = std::fs::read_to_string(root().join("config/default.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let mut keys = Vec::new();
    fn walk(t: &toml::Table, keys: &mut Vec<String>) {
        for (k, v) in t {
            keys.push(k.clone());
            if let toml::Value::Table(t) = v {
                walk(t, keys);
            }
        }
    }
    walk(&toml, &mut keys);
    for p in sources(&root().join("src")) {
        for line in code(&p).lines() {
            let Some(rest) = line.trim().strip_prefix("pub const DEFAULT_") else {
                continue;
            };
            let name = rest.split(':').next().unwrap().to_lowercase();
            assert!(
                !keys.contains(&name),
                "{}: DEFAULT_{} repeats config/default.toml's {name}",
                rel(&p),
                name.to_uppercase()
            );
        }
    }
}

#[test]
fn every_module_says_what_it_is_for() {
    for p in sources(&root().join("src")) {
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.trim_start().starts_with("//!"),
            "{} has no module doc comment",
            rel(&p)
        );
    }
}

#[test]
fn etl_stages_are_types_not_names() {
    // Each stage is a `Stage` of its own; nothing dispatches on a stage's name.
    let kind = code(&root().join("src/etl/mod.rs"));
    for stage in ["Extract", "Sync", "Verify", "Promote"] {
        assert!(kind.contains(&format!("stages::{stage}(")), "{stage}");
    }
    for p in sources(&root().join("src/etl")) {
        let c = code(&p);
        assert!(
            !c.contains("\"extract\" =>") && !c.contains("_ => promote"),
            "{}: dispatch by stage name",
            rel(&p)
        );
    }
    // The generic job API never reads a kind's checkpoint layout.
    let jobs = code(&root().join("src/api/jobs.rs"));
    assert!(
        !jobs.contains("\"extract\""),
        "api/jobs.rs knows the ETL checkpoint"
    );
}

#[test]
fn every_metric_is_documented() {
    let src = std::fs::read_to_string(root().join("src/metrics.rs")).unwrap();
    let docs = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let names: Vec<&str> = src
        .split("r.register(")
        .skip(1)
        .filter_map(|rest| rest.split('"').nth(1))
        .collect();
    assert!(names.len() >= 15, "registrations found: {names:?}");
    for name in names {
        assert!(
            docs.contains(&format!("| `etlq_{name}` |")),
            "etlq_{name} is not in docs/metrics.md"
        );
    }
}

#[test]
fn every_route_is_in_the_openapi_document() {
    let src = std::fs::read_to_string(root().join("src/api/mod.rs")).unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("docs/openapi.json")).unwrap())
            .unwrap();
    // Path templates compared without their parameter names.
    let shape = |p: &str| {
        p.split('/')
            .map(|s| if s.starts_with('{') { "{}" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    };
    let documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (shape(p), m.to_string()))
        })
        .collect();
    let mut routes = 0;
    for part in src.split(".route(\"").skip(1) {
        let (path, rest) = part.split_once('"').unwrap();
        let handlers = &rest[..rest.find(")\n").unwrap_or(rest.len())];
        let full = if path.starts_with("/v1") || !src_nested(path) {
            path.to_string()
        } else {
            format!("/v1{path}")
        };
        for method in ["get", "post", "put", "delete", "patch"] {
            if handlers.contains(&format!("{method}(")) {
                routes += 1;
                assert!(
                    documented.contains(&(shape(&full), method.to_string())),
                    "{} {full} is not in docs/openapi.json",
                    method.to_uppercase()
                );
            }
        }
    }
    assert!(routes >= 18, "routes found: {routes}");
}

/// Routes under `.nest("/v1", …)` are written without the prefix in src/api/mod.rs.
fn src_nested(path: &str) -> bool {
    !matches!(path, "/healthz" | "/readyz" | "/metrics" | "/openapi.json")
        && !path.starts_with("/console")
        && path != "/"
}

/// Files longer than this are split along their seams (issue 19).
const MAX_LINES: usize = 800;

/// The files of `texts` (path, text) longer than `MAX_LINES`.
fn too_long(texts: &[(String, String)]) -> Vec<String> {
    texts
        .iter()
        .filter(|(_, t)| t.lines().count() > MAX_LINES)
        .map(|(p, t)| format!("{p} ({} lines)", t.lines().count()))
        .collect()
}

#[test]
fn no_source_file_is_over_800_lines() {
    let mut texts = Vec::new();
    for dir in ["src", "tests", "benches", "examples"] {
        for p in sources(&root().join(dir)) {
            let shown = p.strip_prefix(root()).unwrap().display().to_string();
            texts.push((shown, std::fs::read_to_string(&p).unwrap()));
        }
    }
    assert!(texts.len() > 100, "the walk found the sources");
    let long = too_long(&texts);
    assert!(long.is_empty(), "split these along their seams: {long:?}");
    // The rule itself: one line over trips it, the limit does not.
    let lines = |n: usize| "x\n".repeat(n);
    assert_eq!(
        too_long(&[("a.rs".into(), lines(MAX_LINES + 1))]),
        ["a.rs (801 lines)"]
    );
    assert!(too_long(&[("a.rs".into(), lines(MAX_LINES))]).is_empty());
}

/// The top-level module a `src/`-relative path belongs to (`etl/parse.rs` → `etl`).
fn top_module(rel: &str) -> String {
    rel.split('/')
        .next()
        .unwrap()
        .trim_end_matches(".rs")
        .to_string()
}

/// Which top-level modules each one names (`crate::x` in its code; comments and unit-test
/// modules aside: a test may reach anywhere without making the build circular).
fn module_graph(
    files: &[(String, String)],
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for (rel, code) in files {
        let from = top_module(rel);
        if from == "main" || from == "lib" {
            continue;
        }
        let deps = graph.entry(from.clone()).or_default();
        let code = code.split("#[cfg(test)]\nmod tests").next().unwrap();
        for part in code.split("crate::").skip(1) {
            let to: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !to.is_empty() && to != from {
                deps.insert(to);
            }
        }
    }
    graph
}

/// Every circle among the modules of `graph`, each as the path that closes it.
fn circles(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Vec<String> {
    fn walk(
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        found: &mut std::collections::BTreeSet<String>,
    ) {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            // The same circle found from another start is reported once.
            let min = (0..cycle.len()).min_by_key(|&k| &cycle[k]).unwrap();
            cycle.rotate_left(min);
            cycle.push(cycle[0].clone());
            found.insert(cycle.join(" → "));
            return;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            walk(graph, next, path, found);
        }
        path.pop();
    }
    let mut found = std::collections::BTreeSet::new();
    for node in graph.keys() {
        walk(graph, node, &mut Vec::new(), &mut found);
    }
    found.into_iter().collect()
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let files: Vec<(String, String)> = sources(&root().join("src"))
        .iter()
        .map(|p| (rel(p), code(p)))
        .collect();
    let graph = module_graph(&files);
    assert!(graph.len() > 15, "modules found: {:?}", graph.keys());
    assert!(
        graph["configuration"].is_empty(),
        "configuration is a leaf: it names {:?}",
        graph["configuration"]
    );
    let found = circles(&graph);
    assert!(found.is_empty(), "import circles: {found:?}");
    // The test aids are plugged in by the wiring (startup.rs) alone.
    let naming_testing: Vec<&String> = graph
        .iter()
        .filter(|(m, deps)| {
            deps.contains("testing") && !["startup", "testing"].contains(&m.as_str())
        })
        .map(|(m, _)| m)
        .collect();
    assert!(
        naming_testing.is_empty(),
        "production modules naming testing: {naming_testing:?}"
    );
    // The rule itself: a circle through three files trips it, a chain does not.
    let snippet = |files: &[(&str, &str)]| {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(p, c)| (p.to_string(), c.to_string()))
            .collect();
        circles(&module_graph(&files))
    };
    assert_eq!(
        snippet(&[
            ("configuration/mod.rs", "use crate::etl::connector::Spec;"),
            ("etl/artifact.rs", "use crate::storage::BlobStore;"),
            ("storage.rs", "use crate::configuration::BlobSettings;"),
        ]),
        ["configuration → etl → storage → configuration"]
    );
    assert!(
        snippet(&[
            ("etl/artifact.rs", "use crate::storage::BlobStore;"),
            ("storage.rs", "use crate::configuration::BlobSettings;"),
        ])
        .is_empty()
    );
}
