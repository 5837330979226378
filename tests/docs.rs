//! The documentation cannot drift from the code:
//!
//! - every key the config loader accepts (every field of a `pub struct` in
//!   `src/config/file.rs`, under the section path that struct is read at) is documented
//!   in `docs/configuration.md`, and every top-level section has a heading there;
//! - the README's metrics paragraph names exactly the metric families that the real
//!   binary's `/metrics` exposes.
//!
//! Both go one way where the contract runs ahead of the code: the reference may document
//! keys the loader does not accept yet.

mod common;

use common::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

const FILE_RS: &str = include_str!("../src/config/file.rs");
const CONFIGURATION_MD: &str = include_str!("../docs/configuration.md");
const README: &str = include_str!("../README.md");
const METRICS_ENCODE_RS: &str = include_str!("../src/metrics/encode.rs");

// ---------------------------------------------------------------------------
// docs/configuration.md covers every key of src/config/file.rs
// ---------------------------------------------------------------------------

/// One `pub struct Name { ... }` of file.rs (every struct there is a shape serde reads).
#[derive(Debug)]
struct FileStruct {
    /// The `///` lines right above it, joined.
    doc: String,
    /// `(field, type)` for each `pub field: Type,`.
    fields: Vec<(String, String)>,
}

/// Every `pub struct` in `source`, by name.
fn file_structs(source: &str) -> BTreeMap<String, FileStruct> {
    let mut structs = BTreeMap::new();
    let mut doc = String::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if let Some(text) = line.strip_prefix("///") {
            doc.push_str(text);
            doc.push('\n');
            continue;
        }
        if line.starts_with("#[") {
            continue; // attributes between the doc comment and the item
        }
        let name = line
            .strip_prefix("pub struct ")
            .and_then(|rest| rest.strip_suffix('{'))
            .map(str::trim);
        if let Some(name) = name {
            let mut fields = Vec::new();
            for field in lines.by_ref() {
                let field = field.trim();
                if field.starts_with('}') {
                    break;
                }
                let Some(rest) = field.strip_prefix("pub ") else {
                    continue;
                };
                if let Some((field, ty)) = rest.split_once(':') {
                    let field = field.trim().trim_start_matches("r#");
                    fields.push((field.to_owned(), ty.trim().trim_end_matches(',').to_owned()));
                }
            }
            structs.insert(
                name.to_owned(),
                FileStruct {
                    doc: std::mem::take(&mut doc),
                    fields,
                },
            );
        }
        doc.clear();
    }
    structs
}

/// Whether the Rust type `ty` mentions the type `name` as a whole word.
fn mentions(ty: &str, name: &str) -> bool {
    ty.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|word| word == name)
}

/// The section path a struct is read at, e.g. `server.tls`, `upstreams.<name>`,
/// `routes[]`: from the field that holds it (`tls: Option<TlsFile>` in the struct at
/// `server`), or, for a struct no other struct holds (a section that `config::document` reads
/// from the top level), from its doc comment, which names the path: ``/// `routes[i]:` ``.
fn struct_path(
    name: &str,
    structs: &BTreeMap<String, FileStruct>,
    seen: &mut Vec<String>,
) -> String {
    assert!(
        !seen.iter().any(|s| s == name),
        "{name} holds itself: {seen:?}"
    );
    seen.push(name.to_owned());
    let holder = structs.iter().find_map(|(parent, s)| {
        s.fields
            .iter()
            .find(|(_, ty)| mentions(ty, name))
            .map(|(field, ty)| (parent.clone(), field.clone(), ty.clone()))
    });
    let path = match holder {
        Some((parent, field, ty)) => {
            let parent_path = struct_path(&parent, structs, seen);
            if ty.contains("Map<") {
                format!("{parent_path}.{field}.<name>")
            } else if ty.contains("Vec<") {
                format!("{parent_path}.{field}[]")
            } else {
                format!("{parent_path}.{field}")
            }
        }
        None => {
            let doc = &structs[name].doc;
            let named = doc
                .split('`')
                .skip(1)
                .step_by(2)
                .find_map(|quoted| quoted.strip_suffix(':'))
                .unwrap_or_else(|| {
                    panic!(
                        "src/config/file.rs: {name} is read at the top level, so its doc comment must \
                         name its key path as in ``/// `section:` `` (found {doc:?})"
                    )
                });
            named.replace("[i]", "[]")
        }
    };
    seen.pop();
    path
}

/// The top-level sections of `file::SECTIONS`.
fn sections(source: &str) -> Vec<String> {
    let start = source
        .find("pub const SECTIONS")
        .expect("file.rs has no SECTIONS");
    let list = &source[start..];
    let list = &list[list.find('=').unwrap()..];
    let list = &list[list.find('[').unwrap() + 1..list.find("];").unwrap()];
    list.split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Every key path the loader accepts, e.g. `server.tls.cert_file`, `upstreams.<name>.url`,
/// `routes[].require_claims`.
fn accepted_keys() -> BTreeSet<String> {
    let structs = file_structs(FILE_RS);
    let mut keys = BTreeSet::new();
    for (name, s) in &structs {
        let path = struct_path(name, &structs, &mut Vec::new());
        for (field, _) in &s.fields {
            keys.insert(format!("{path}.{field}"));
        }
    }
    keys
}

#[test]
fn the_key_list_is_derived_from_the_loader() {
    // Guards the parser above: a change in file.rs's layout must not make the
    // completeness test pass vacuously.
    let keys = accepted_keys();
    for expected in [
        "server.listen",
        "server.tls.cert_file",
        "admin.token",
        "jwt.private_key_file",
        "jwt.csrf.methods",
        "blocklist.on_store_error",
        "logout.backchannel_revokes",
        "upstreams.<name>.ca_file",
        "routes[].require_claims",
        "forward.identity_headers",
    ] {
        assert!(keys.contains(expected), "{expected} not derived: {keys:#?}");
    }
    assert!(
        keys.len() > 50,
        "only {} keys derived: {keys:#?}",
        keys.len()
    );
    let sections = sections(FILE_RS);
    assert!(sections.contains(&"routes".to_owned()), "{sections:?}");
    for key in &keys {
        let section = key.split(['.', '[']).next().unwrap();
        assert!(
            sections.iter().any(|s| s == section),
            "{key}: section {section} is not in SECTIONS {sections:?}"
        );
    }
}

#[test]
fn every_key_the_loader_accepts_is_documented() {
    let missing: Vec<String> = accepted_keys()
        .into_iter()
        .filter(|key| !CONFIGURATION_MD.contains(&format!("`{key}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not document these keys (write each as `{}` with its type, \
         default, an example and what it does):\n  {}",
        missing.first().map_or("", String::as_str),
        missing.join("\n  ")
    );
    let headings: Vec<&str> = CONFIGURATION_MD
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::trim)
        .collect();
    for section in sections(FILE_RS) {
        assert!(
            headings.contains(&section.as_str()),
            "docs/configuration.md has no `## {section}` heading (headings: {headings:?})"
        );
    }
}

// ---------------------------------------------------------------------------
// The README's metrics list is what /metrics exposes
// ---------------------------------------------------------------------------

/// Metric families that appear in a scrape only under some condition, so the default
/// test gateway does not show them. Each is checked to be encoded by src/metrics/encode.rs
/// instead (a counter by its name without `_total`, which the encoder appends).
const CONDITIONAL_FAMILIES: &[&str] = &[
    // Only with a JWKS (jwt.jwks_url or jwt.discovery).
    "portcullis_jwks_fetches_total",
    "portcullis_jwks_fetch_failures_total",
    "portcullis_jwks_unknown_kid_refetches_total",
    "portcullis_jwks_keys",
];

/// Expands `a{b,c}d` into `abd`, `acd` (one brace group is enough for our lists).
fn expand_braces(name: &str) -> Vec<String> {
    match (name.find('{'), name.find('}')) {
        (Some(open), Some(close)) if open < close => name[open + 1..close]
            .split(',')
            .flat_map(|alt| expand_braces(&format!("{}{alt}{}", &name[..open], &name[close + 1..])))
            .collect(),
        _ => vec![name.to_owned()],
    }
}

/// The `portcullis_*` names in the README paragraph that starts with `Metrics:`.
fn readme_metric_families() -> BTreeSet<String> {
    let start = README
        .find("\nMetrics:")
        .expect("README.md has no paragraph starting with `Metrics:`");
    let paragraph = &README[start + 1..];
    let paragraph = &paragraph[..paragraph.find("\n\n").unwrap_or(paragraph.len())];
    let mut names = BTreeSet::new();
    let mut rest = paragraph;
    while let Some(at) = rest.find("portcullis_") {
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '{' | '}' | ',')))
            .unwrap_or(rest.len());
        // A `,` right after a closed brace group ends the name (`..._total{a,b}, next`).
        let mut token = &rest[..end];
        let mut depth = 0;
        for (i, c) in token.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    token = &token[..i];
                    break;
                }
                _ => {}
            }
        }
        // `{hits,misses}` inside a name (after a `_`) is a brace expansion; after a
        // complete name (`portcullis_requests_total{route,outcome}`) it lists labels.
        let token = match token.find('{') {
            Some(open) if !token[..open].ends_with('_') => &token[..open],
            _ => token,
        };
        names.extend(expand_braces(token));
        rest = &rest[token.len().max(1)..];
    }
    names
}

/// The metric families of a Prometheus text scrape (`# TYPE <name> <kind>`).
fn scraped_families(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_metric_names_are_parsed() {
    let names = readme_metric_families();
    for expected in [
        "portcullis_requests_total",
        "portcullis_token_cache_hits_total",
        "portcullis_token_cache_misses_total",
        "portcullis_upstream_latency_seconds",
    ] {
        assert!(names.contains(expected), "{expected} not in {names:#?}");
    }
    assert!(
        !names.iter().any(|n| n.contains(['{', '}', ','])),
        "{names:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_metrics_list_matches_the_scrape() {
    let up = Upstream::start().await;
    let mut config = Config::new(up.addr);
    config.set(
        "admin",
        json!({"listen": "127.0.0.1:0", "token": "docs-test-admin-token-0123456789"}),
    );
    let gw = Gateway::start(config).await;
    // One forwarded request, so that per-route and per-upstream series exist too.
    let reply = get(
        gw.edge,
        "/x",
        &[("Authorization", &bearer(&token(&access("alice"))))],
    )
    .await;
    assert_eq!(reply.0, 200, "{}", reply.2);
    let admin = gw
        .admin
        .expect("the admin listener's address in the ready line");
    let (status, _, body) = get(admin, "/metrics", &[]).await;
    assert_eq!(status, 200, "{body}");

    let scraped = scraped_families(&body);
    let listed = readme_metric_families();
    for name in CONDITIONAL_FAMILIES {
        let encoded = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            METRICS_ENCODE_RS.contains(&format!("\"{encoded}\"")),
            "{name} is allow-listed as conditional but src/metrics/encode.rs does not expose it"
        );
        assert!(
            listed.contains(*name),
            "{name} (exposed with a JWKS) is not in the README's metrics paragraph"
        );
    }
    let conditional: BTreeSet<String> =
        CONDITIONAL_FAMILIES.iter().map(|s| s.to_string()).collect();
    let unlisted: Vec<&String> = scraped.difference(&listed).collect();
    let phantom: Vec<&String> = listed
        .difference(&scraped)
        .filter(|n| !conditional.contains(*n))
        .collect();
    assert!(
        unlisted.is_empty() && phantom.is_empty(),
        "README.md's metrics paragraph and /metrics disagree.\n\
         exposed but not in the README: {unlisted:?}\n\
         in the README but not exposed: {phantom:?}\n\
         scrape:\n{body}"
    );
}
