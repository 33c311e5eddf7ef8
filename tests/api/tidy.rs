//! Architecture invariants (ARCHITECTURE.md), enforced on the source text as rust-analyzer's
//! `tidy.rs` does: a change that breaks a boundary fails the build with the rule it broke.

use std::path::{Path, PathBuf};

pub(crate) fn sources(dir: &Path) -> Vec<PathBuf> {
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

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `src/`-relative path with forward slashes.
pub(crate) fn rel(p: &Path) -> String {
    p.strip_prefix(root().join("src"))
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/")
}

/// Source text without comments (so prose may name what code must not use).
pub(crate) fn code(p: &Path) -> String {
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

/// Every `src/` file as (`src/`-relative path, code without comments).
pub(crate) fn src_files() -> Vec<(String, String)> {
    sources(&root().join("src"))
        .iter()
        .map(|p| (rel(p), code(p)))
        .collect()
}

/// The files of `files` outside `allowed` (paths, or directories ending in `/`) whose code
/// uses `token`; unit-test modules aside.
fn offenders(files: &[(String, String)], allowed: &[&str], token: &str) -> Vec<String> {
    files
        .iter()
        .filter(|(r, _)| {
            !allowed
                .iter()
                .any(|a| r == a || (a.ends_with('/') && r.starts_with(a)))
        })
        .filter(|(_, c)| without_tests(c).contains(token))
        .map(|(r, _)| r.clone())
        .collect()
}

/// Code without its unit-test module (`#[cfg(test)] mod tests { … }`, braces matched, so
/// code after it still counts).
pub(crate) fn without_tests(code: &str) -> std::borrow::Cow<'_, str> {
    let Some(start) = code.find("#[cfg(test)]\nmod tests {") else {
        return std::borrow::Cow::Borrowed(code);
    };
    let open = start + code[start..].find('{').unwrap();
    let mut depth = 0usize;
    let mut end = code.len();
    for (i, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = open + i + 1;
                    break;
                }
            }
            _ => {}
        }
    }
    std::borrow::Cow::Owned(format!("{}{}", &code[..start], &code[end..]))
}

#[test]
fn unit_test_modules_are_cut_out_and_nothing_else() {
    let code = "use a;\n#[cfg(test)]\nmod tests {\n    fn t() { if x { crate::etl::y(); } }\n}\nconst B: u8 = crate::etl::Z;\n";
    let kept = without_tests(code);
    assert!(
        kept.contains("use a;") && kept.contains("const B"),
        "{kept}"
    );
    assert!(!kept.contains("fn t()"), "{kept}");
}

/// Applies a token rule to the repository, after checking on two snippets that it trips
/// where it must and not where it must not (a rule that matches nothing fails here).
fn check(rule: &str, allowed: &[&str], token: &str) {
    let snippet = |path: &str| vec![(path.to_string(), format!("fn f() {{ {token} }}"))];
    assert_eq!(
        offenders(&snippet("api/probe.rs"), allowed, token),
        ["api/probe.rs"],
        "{rule}: the rule does not trip on `{token}`"
    );
    if let Some(ok) = allowed.first() {
        let inside = if ok.ends_with('/') {
            format!("{ok}probe.rs")
        } else {
            ok.to_string()
        };
        assert!(
            offenders(&snippet(&inside), allowed, token).is_empty(),
            "{rule}: the rule trips inside {ok}"
        );
    }
    let found = offenders(&src_files(), allowed, token);
    assert!(found.is_empty(), "{rule}: `{token}` is used in {found:?}");
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
    let in_sources: Vec<(String, String)> = src_files()
        .into_iter()
        .filter(|(r, _)| r.starts_with("sources/"))
        .collect();
    assert!(in_sources.len() > 5, "the sources module was found");
    for token in ["Utc::now(", "SystemTime::now(", "Local::now("] {
        let trips = offenders(
            &[("sources/probe.rs".into(), format!("let t = {token});"))],
            &[],
            token,
        );
        assert_eq!(trips, ["sources/probe.rs"], "the rule trips on {token}");
        let found = offenders(&in_sources, &[], token);
        assert!(
            found.is_empty(),
            "`{token}` in {found:?}: use the database's now()"
        );
    }
}

/// Whether `line` of the file `p` cites something outside the repository; the peer benchmark
/// kit is the one documented input.
fn cites_outside(p: &Path, line: &str) -> bool {
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
    let allowed = line.contains("../shared/peers")
        && (p.ends_with("scripts/bench-vs-peers") || p.ends_with("docs/benchmarks.md"));
    cites && !allowed
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
    let mut offenders = Vec::new();
    for p in &files {
        let Ok(text) = std::fs::read_to_string(p) else {
            continue; // binary fixtures
        };
        for (i, line) in text.lines().enumerate() {
            if cites_outside(p, line) {
                offenders.push(format!(
                    "{}:{}",
                    p.strip_prefix(&repo).unwrap().display(),
                    i + 1
                ));
            }
        }
    }
    // The rule itself.
    assert!(cites_outside(
        Path::new("ARCHITECTURE.md"),
        "see ../shared/SPEC.md §8"
    ));
    assert!(cites_outside(
        Path::new("src/storage.rs"),
        "// DECISIONS.md D3"
    ));
    assert!(!cites_outside(
        Path::new("scripts/bench-vs-peers"),
        "PEERS=${PEERS:-../shared/peers}"
    ));
    assert!(!cites_outside(Path::new("README.md"), "docs/spec.md §8"));
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
    // Every way to start a task or a thread. Each place allowed says why it is not a
    // background task the shutdown path would miss.
    let allowed = &[
        // The application's tracker: every background task, one shutdown path.
        "startup.rs",
        // The binary's signal handler for `serve`.
        "cli/",
        // The worker's own tracker (fetch loops, runners, completer, leases, heartbeat),
        // which `Worker::wait` waits for.
        "worker/",
        // Connections in a JoinSet the server drains on shutdown.
        "api/server.rs",
        // A blocking file move, awaited where it is started.
        "storage.rs",
        // The work-dir sweep (blocking directory reads), awaited where it is started.
        "maintenance/orphans.rs",
        // A stage's progress reporter: stopped by a drop guard when its stage ends.
        "etl/stages/mod.rs",
        // Threads that supervise a child process (or a command), joined before returning.
        "etl/isolate.rs",
        "etl/child.rs",
        "etl/extractor.rs",
        // Scoped threads (joined by construction) splitting one parse in two.
        "etl/parse.rs",
        "etl/workbook/xlsx/mod.rs",
    ];
    for token in [
        "tokio::spawn(",
        "tokio::task::spawn(",
        "spawn_blocking(",
        "JoinSet",
        "thread::spawn(",
        "thread::Builder",
        "scope.spawn(",
        "scope_.spawn(",
    ] {
        check(
            "tasks and threads start in the places that wait for them",
            allowed,
            token,
        );
    }
}

/// Lines of `code` (library code, tests aside) holding a default that is neither a setting
/// nor named: a `Duration` literal outside a `const` item, a constant named like a
/// `config/default.toml` key (`DEFAULT_<KEY>` or `<KEY>`), or a string literal equal to a
/// deployment choice of config/default.toml (a region, an account).
fn unnamed_defaults(code: &str, keys: &[String], choices: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_const = false;
    for line in without_tests(code).lines() {
        let t = line.trim();
        let starts_const = [
            "const ",
            "pub const ",
            "pub(crate) const ",
            "pub(super) const ",
        ]
        .iter()
        .any(|p| t.starts_with(p));
        if starts_const {
            in_const = true;
            let name = t.split("const ").nth(1).unwrap().split(':').next().unwrap();
            let key = name.trim_start_matches("DEFAULT_").to_lowercase();
            // `DEFAULT_<KEY>`, or a multi-word key's name (`RETRY_BUDGET_MS`); one word
            // (`VERSION`) is too common to be a setting's echo.
            let echoes = name.starts_with("DEFAULT_") || key.contains('_');
            if echoes && keys.contains(&key) {
                out.push(format!("{name} repeats config/default.toml's {key}"));
            }
        }
        let literal = ["Duration::from_secs(", "Duration::from_millis("]
            .iter()
            .any(|f| {
                t.split(f)
                    .skip(1)
                    .any(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            });
        if literal && !in_const {
            out.push(format!("a Duration literal outside a named const: {t}"));
        }
        for c in choices {
            if t.contains(&format!("\"{c}\"")) {
                out.push(format!("{c:?} is a setting in config/default.toml: {t}"));
            }
        }
        if in_const && t.ends_with(';') {
            in_const = false;
        }
    }
    out
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
    // Deployment choices: values an operator picks for where etlq runs.
    let choices = vec![
        toml["sink"]["cosmos"]["preferred_region"]
            .as_str()
            .unwrap()
            .to_string(),
    ];
    let mut found = Vec::new();
    for (r, c) in src_files() {
        // The binary's own waits (a CLI poll, a shutdown bound) are its user interface;
        // unit-test files are tests.
        if r.starts_with("cli/") || r.ends_with("/tests.rs") {
            continue;
        }
        found.extend(
            unnamed_defaults(&c, &keys, &choices)
                .into_iter()
                .map(|m| format!("{r}: {m}")),
        );
    }
    assert!(found.is_empty(), "{found:#?}");
    // The rule itself.
    let keys = vec!["retry_budget_ms".to_string()];
    let choices = vec!["West Europe".to_string()];
    let trips = |code: &str| !unnamed_defaults(code, &keys, &choices).is_empty();
    assert!(trips("fn f() { sleep(Duration::from_secs(5)); }"));
    assert!(trips("pub const DEFAULT_RETRY_BUDGET_MS: u64 = 30_000;"));
    assert!(trips("build(ProximityTo(\"West Europe\".into()))"));
    assert!(!trips(
        "/// Why.\nconst PAUSE: Duration =\n    Duration::from_millis(100);\nfn f() { sleep(PAUSE) }"
    ));
    assert!(!trips(
        "fn f(s: &S) { sleep(Duration::from_millis(s.pause_ms)) }"
    ));
}

/// A module says what it is for when its text opens with a `//!` comment.
fn says_what_it_is_for(text: &str) -> bool {
    text.trim_start().starts_with("//!")
}

#[test]
fn every_module_says_what_it_is_for() {
    for p in sources(&root().join("src")) {
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            says_what_it_is_for(&text),
            "{} has no module doc comment",
            rel(&p)
        );
    }
    assert!(says_what_it_is_for("//! Reads sheets.\nuse x;"));
    assert!(!says_what_it_is_for("use x;\n//! Too late."));
    assert!(!says_what_it_is_for(
        "/// An item's doc is not the module's.\nfn f() {}"
    ));
}

/// Code that decides something by a stage's name (a match arm or a comparison on
/// `"extract"`, `"sync"`, `"verify"`, `"promote"`).
fn stage_name_dispatch(code: &str) -> bool {
    ["\"extract\"", "\"sync\"", "\"verify\"", "\"promote\""]
        .iter()
        .any(|name| {
            [
                format!("{name} =>"),
                format!("{name} |"),
                format!("| {name}"),
                format!("== {name}"),
                format!("{name} =="),
                format!("!= {name}"),
            ]
            .iter()
            .any(|form| code.contains(form.as_str()))
        })
}

#[test]
fn etl_stages_are_types_not_names() {
    // Each stage is a `Stage` of its own; nothing dispatches on a stage's name.
    let kind = code(&root().join("src/etl/mod.rs"));
    for stage in ["Extract", "Sync", "Verify", "Promote"] {
        assert!(kind.contains(&format!("stages::{stage}(")), "{stage}");
    }
    for (r, c) in src_files() {
        assert!(
            !stage_name_dispatch(&without_tests(&c)),
            "{r}: decides by a stage's name"
        );
    }
    // The generic job API never reads a kind's checkpoint layout.
    let jobs = code(&root().join("src/api/jobs.rs"));
    assert!(
        !jobs.contains("\"extract\""),
        "api/jobs.rs knows the ETL checkpoint"
    );
    // The rule itself.
    assert!(stage_name_dispatch("match s { \"sync\" => 1, _ => 2 }"));
    assert!(stage_name_dispatch("if ctx.stage == \"promote\" {}"));
    assert!(stage_name_dispatch("\"extract\" | \"verify\" => true"));
    assert!(!stage_name_dispatch(
        "pub const ETL_STAGES: [&str; 4] = [\"extract\", \"sync\", \"verify\", \"promote\"];"
    ));
}

/// Metrics registered in `src` (metrics.rs's `r.register("name", …)`) missing from `docs`.
fn undocumented_metrics(src: &str, docs: &str) -> (usize, Vec<String>) {
    let names: Vec<&str> = src
        .split("r.register(")
        .skip(1)
        .filter_map(|rest| rest.split('"').nth(1))
        .collect();
    let missing = names
        .iter()
        .filter(|name| !docs.contains(&format!("| `etlq_{name}` |")))
        .map(|name| format!("etlq_{name}"))
        .collect();
    (names.len(), missing)
}

#[test]
fn every_metric_is_documented() {
    let src = std::fs::read_to_string(root().join("src/metrics.rs")).unwrap();
    let docs = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let (found, missing) = undocumented_metrics(&src, &docs);
    assert!(found >= 15, "registrations found: {found}");
    assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
    let src =
        "r.register(\n    \"jobs_total\", \"help\", x);\nr.register(\"new_thing\", \"h\", y);";
    assert_eq!(
        undocumented_metrics(src, "| `etlq_jobs_total` | counter |"),
        (2, vec!["etlq_new_thing".to_string()])
    );
}

/// The (path, method) pairs a router's source registers: every `.route(` — on one line or
/// several — with each method its handler chain names.
fn routes_in(code: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for part in code.split(".route(").skip(1) {
        let rest = part.trim_start();
        let Some(rest) = rest.strip_prefix('"') else {
            continue;
        };
        let (path, rest) = rest.split_once('"').unwrap();
        // The handler chain: up to the parenthesis that closes `.route(`.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(rest.len(), |(i, _)| i);
        let chain = &rest[..end];
        let full = if !src_nested(path) {
            path.to_string()
        } else {
            format!("/v1{path}")
        };
        for method in ["get", "post", "put", "delete", "patch", "options"] {
            let called = chain
                .trim_start_matches(|c: char| c == ',' || c.is_whitespace())
                .starts_with(&format!("{method}("))
                || chain.contains(&format!(".{method}("));
            if called {
                out.push((full.clone(), method.to_string()));
            }
        }
    }
    out
}

/// Path templates compared without their parameter names.
fn shape(p: &str) -> String {
    p.split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// Both directions: routes missing from the document, and documented operations no router has.
fn route_mismatches(routes: &[(String, String)], documented: &[(String, String)]) -> Vec<String> {
    let shaped = |v: &[(String, String)]| -> Vec<(String, String)> {
        v.iter().map(|(p, m)| (shape(p), m.clone())).collect()
    };
    let (r, d) = (shaped(routes), shaped(documented));
    let mut out = Vec::new();
    for (path, m) in &r {
        // CORS-style handshakes (the Event Grid webhook's OPTIONS) are documented with their POST.
        if m != "options" && !d.contains(&(path.clone(), m.clone())) {
            out.push(format!(
                "{} {path} is not in docs/openapi.json",
                m.to_uppercase()
            ));
        }
    }
    for (path, m) in &d {
        if !r.contains(&(path.clone(), m.clone())) {
            out.push(format!(
                "{} {path} is documented but no router has it",
                m.to_uppercase()
            ));
        }
    }
    out
}

#[test]
fn every_route_is_in_the_openapi_document() {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("docs/openapi.json")).unwrap())
            .unwrap();
    let documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|m| !["parameters", "summary", "description"].contains(&m.as_str()))
                .map(move |m| (p.clone(), m.to_string()))
        })
        .collect();
    // Every router under src/api, not only mod.rs (the console's included).
    let mut routes = Vec::new();
    for (r, c) in src_files() {
        if r.starts_with("api/") {
            routes.extend(routes_in(&c));
        }
    }
    assert!(routes.len() >= 40, "routes found: {}", routes.len());
    let wrong = route_mismatches(&routes, &documented);
    assert!(wrong.is_empty(), "{wrong:#?}");
    // And every route has its access rule (the auth layer refuses a route without one, and
    // the role matrix test calls every rule): both directions again.
    let ruled: Vec<(String, String)> = etlq::api::access::ROUTES
        .iter()
        .map(|(m, p, _)| (p.to_string(), m.to_lowercase()))
        .collect();
    let unruled = route_mismatches(&routes, &ruled);
    assert!(
        unruled.is_empty(),
        "api::access::ROUTES and the routers differ: {unruled:#?}"
    );
    // The rule itself: a multi-line route and a chained method are read; a route missing
    // from the document and a documented operation no router has are both reported.
    let probe = routes_in(
        ".route(\n    \"/things/{id}\",\n    get(things::show)\n        .post(things::edit),\n)\n.route(\"/healthz\", get(h))",
    );
    assert_eq!(
        probe,
        [
            ("/v1/things/{id}".to_string(), "get".to_string()),
            ("/v1/things/{id}".into(), "post".into()),
            ("/healthz".into(), "get".into()),
        ]
    );
    let doc = [
        ("/v1/things/{x}".to_string(), "get".to_string()),
        ("/v1/gone".into(), "get".into()),
    ];
    assert_eq!(
        route_mismatches(&probe, &doc),
        [
            "POST /v1/things/{} is not in docs/openapi.json",
            "GET /healthz is not in docs/openapi.json",
            "GET /v1/gone is documented but no router has it",
        ]
    );
}

/// Routes under `.nest("/v1", …)` are written without the prefix in src/api/mod.rs.
fn src_nested(path: &str) -> bool {
    !matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/favicon.ico"
    ) && !path.starts_with("/console")
        && !path.starts_with("/v1")
        && path != "/"
}

/// The first migration ADR 0025's rule holds for; the ones before it reshaped tables in ways
/// the rule now forbids (and kept the previous release working by hand).
const FIRST_EXPAND_ONLY_MIGRATION: u64 = 20261204000013;

/// What a migration may not do while a previous release still runs on its schema (ADR 0025):
/// take away or reshape something that release's statements name. Comments and function
/// bodies (`$$ … $$`: what a function does when called, e.g. dropping an expired partition)
/// aside.
fn breaks_previous_release(sql: &str) -> Vec<&'static str> {
    let text: String = sql
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ")
        .split("$$")
        .step_by(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase();
    let words: Vec<&str> = text.split_whitespace().collect();
    let text = words.join(" ");
    let mut found = Vec::new();
    for (what, rule) in [
        ("DROP TABLE", "drops a table"),
        ("DROP VIEW", "drops a view"),
        ("DROP COLUMN", "drops a column"),
        ("DROP FUNCTION", "drops a function"),
        (" RENAME ", "renames something"),
        ("SET NOT NULL", "makes a column NOT NULL"),
    ] {
        if text.contains(what) {
            found.push(rule);
        }
    }
    // A column's type changed, or a NOT NULL column added without a default (the previous
    // release's inserts do not name it).
    for stmt in text.split(';') {
        if stmt.contains("ALTER COLUMN") && stmt.contains(" TYPE ") {
            found.push("changes a column's type");
        }
        if stmt.contains("ADD COLUMN") && stmt.contains("NOT NULL") && !stmt.contains("DEFAULT") {
            found.push("adds a NOT NULL column without a default");
        }
    }
    found
}

#[test]
fn migrations_keep_the_previous_releases_statements_working() {
    let mut checked = 0;
    let mut offenders = Vec::new();
    for e in std::fs::read_dir(root().join("migrations"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let version: u64 = name.split('_').next().unwrap().parse().unwrap();
        if version < FIRST_EXPAND_ONLY_MIGRATION {
            continue;
        }
        checked += 1;
        let sql = std::fs::read_to_string(e.path()).unwrap();
        for rule in breaks_previous_release(&sql) {
            offenders.push(format!("{name} {rule}"));
        }
    }
    assert!(checked >= 5, "the walk found the migrations");
    assert!(
        offenders.is_empty(),
        "a previous release runs on this schema during a deploy (ADR 0025); wait for the \
         release after: {offenders:?}"
    );
    // The rule itself.
    assert!(breaks_previous_release("ALTER TABLE jobs DROP COLUMN progress;").len() == 1);
    assert!(breaks_previous_release("ALTER TABLE jobs\n  RENAME TO jobs_old;").len() == 1);
    assert!(breaks_previous_release("ALTER TABLE t ALTER COLUMN n TYPE bigint;").len() == 1);
    assert!(breaks_previous_release("ALTER TABLE t ADD COLUMN b boolean NOT NULL;").len() == 1);
    assert!(
        breaks_previous_release(
            "-- DROP TABLE in prose\nALTER TABLE t ADD COLUMN b boolean NOT NULL DEFAULT false;\n\
             CREATE OR REPLACE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$\n\
             BEGIN EXECUTE format('DROP TABLE %I', 'p'); END $$;\n\
             DROP TRIGGER IF EXISTS x ON t; DROP INDEX i;"
        )
        .is_empty()
    );
}
