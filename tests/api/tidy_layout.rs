//! Layout invariants (ARCHITECTURE.md), like `tidy.rs`: no import circle between top-level
//! modules (`configuration` a leaf, test aids plugged in by `startup.rs` alone), one owner per
//! table group, no file over 800 lines. Each rule is first tried on snippets.

use crate::tidy::{code, rel, root, sources, src_files, without_tests};

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
        let code = without_tests(code);
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

/// Each table group and the one place that owns it (ARCHITECTURE.md).
const TABLE_OWNERS: &[(&str, &[&str])] = &[
    (
        "queue/",
        &[
            "jobs",
            "job_events",
            "job_event_log",
            "dead_letters",
            "job_event_minutes",
            "job_minute_deltas",
            "job_keys",
            "job_counts",
            "worker_parking",
            "parking_slots",
        ],
    ),
    ("fleet/", &["workers"]),
    (
        "datasets/",
        &[
            "dataset_manifests",
            "promotions",
            "superseded_versions",
            "cache_manifest",
            "rollbacks",
        ],
    ),
    ("audit.rs", &["audit_log"]),
    ("sink/postgres.rs", &["sink_documents"]),
    (
        "sources/store.rs",
        &["source_schedules", "source_runs", "ingest_ledger"],
    ),
    ("testing/", &["test_stage_runs", "test_pauses"]),
];

/// Reads across groups, each with its reason.
const CROSS_READS: &[(&str, &str)] = &[
    // The rescuer decides on a worker's liveness in the statement that requeues its jobs.
    ("queue/store.rs", "workers"),
    // A bulk cancel writes out a running job's first claim (ADR 0018) with the version of
    // the worker that ran it, as the single cancel and the rescue in store.rs do.
    ("queue/filter.rs", "workers"),
];

/// Where `files` name a table in SQL (`FROM`, `INTO`, `UPDATE`, `JOIN`) outside its owner.
fn foreign_tables(files: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (r, c) in files {
        let sql = without_tests(c);
        for (owner, tables) in TABLE_OWNERS {
            let owns = r == owner || (owner.ends_with('/') && r.starts_with(owner));
            if owns {
                continue;
            }
            for t in *tables {
                let named = ["FROM ", "INTO ", "UPDATE ", "JOIN "].iter().any(|k| {
                    sql.split(&format!("{k}{t}")).skip(1).any(|rest| {
                        !rest.starts_with(|ch: char| ch.is_ascii_alphanumeric() || ch == '_')
                    })
                });
                if named && !CROSS_READS.contains(&(r.as_str(), t)) {
                    out.push(format!("{r} uses {t}, owned by {owner}"));
                }
            }
        }
    }
    out
}

#[test]
fn each_table_group_has_one_owner() {
    let found = foreign_tables(&src_files());
    assert!(found.is_empty(), "{found:#?}");
    // The rule itself: a store reaching into another group's table trips it; the owner and
    // a table whose name merely starts the same do not.
    let probe = |path: &str, sql: &str| foreign_tables(&[(path.into(), sql.into())]);
    assert_eq!(
        probe(
            "datasets/store.rs",
            "sqlx::query(\"UPDATE jobs SET state = 'x'\")"
        ),
        ["datasets/store.rs uses jobs, owned by queue/"]
    );
    assert!(probe("queue/store.rs", "DELETE FROM jobs WHERE id = $1").is_empty());
    assert!(probe("etl/x.rs", "SELECT * FROM jobs_archive").is_empty());
}

/// The invariants of ARCHITECTURE.md (each `- **…**` item under "Architecture invariants"),
/// with the checks each names (`module::test` in backticks).
fn invariants(map: &str) -> Vec<(String, Vec<String>)> {
    let section = map
        .split("## Architecture invariants")
        .nth(1)
        .unwrap_or_default()
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in section.lines() {
        if let Some(rest) = line.strip_prefix("- **") {
            out.push((rest.split("**").next().unwrap().to_string(), Vec::new()));
        }
        if let Some((_, checks)) = out.last_mut() {
            for quoted in line.split('`').skip(1).step_by(2) {
                let ident = |s: &str| {
                    !s.is_empty()
                        && s.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                };
                let parts: Vec<&str> = quoted.split("::").collect();
                // A test's name is a sentence (`drain_waits_for_in_flight_jobs`); a short path
                // (`sources::ingest`) names code, not its check.
                let sentence = parts.last().unwrap().matches('_').count() >= 2;
                if parts.len() >= 2 && parts.iter().all(|p| ident(p)) && sentence {
                    checks.push(quoted.to_string());
                }
            }
        }
    }
    out
}

/// Whether the check `name` (`file::test` under tests/api, or `module::…::test` in src/)
/// is a test that exists.
fn check_exists(name: &str) -> bool {
    let parts: Vec<&str> = name.split("::").collect();
    let test = format!("fn {}(", parts.last().unwrap());
    let integration = root().join("tests/api").join(format!("{}.rs", parts[0]));
    let unit = root().join("src").join(format!("{}.rs", parts[0]));
    let unit_dir = root().join("src").join(parts[0]);
    let in_dir = if unit_dir.is_dir() {
        sources(&unit_dir)
    } else {
        Vec::new()
    };
    [integration, unit]
        .iter()
        .chain(in_dir.iter())
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .any(|text| text.contains(&test))
}

#[test]
fn every_invariant_names_a_check_that_exists() {
    let map = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let found = invariants(&map);
    assert!(found.len() >= 15, "invariants found: {}", found.len());
    for (invariant, checks) in &found {
        assert!(
            !checks.is_empty(),
            "\"{invariant}\" names no test or tidy rule"
        );
        for c in checks {
            assert!(
                check_exists(c),
                "\"{invariant}\" names {c}, which does not exist"
            );
        }
    }
    // The rule itself.
    let probe = "## Architecture invariants\n\n- **A rule** with its check\n  (`tidy::every_metric_is_documented`).\n- **Another** without one.\n\n## Next";
    let parsed = invariants(probe);
    assert_eq!(
        parsed,
        [
            (
                "A rule".to_string(),
                vec!["tidy::every_metric_is_documented".to_string()]
            ),
            ("Another".to_string(), vec![]),
        ]
    );
    assert!(check_exists("tidy::every_metric_is_documented"));
    assert!(!check_exists("tidy::a_rule_nobody_wrote"));
}
