//! Tidy tests: the README says what the code does. Each compares a list in the README with the
//! code it describes, so a new field, command or suite fails here until it is documented (and a
//! documented one that is gone fails too).

use std::collections::BTreeSet;

use clap::{CommandFactory, ValueEnum};

fn readme() -> String {
    std::fs::read_to_string(crate::stage::root().join("README.md")).unwrap_or_default()
}

/// The fields the policy takes at `path` (`""`: the top level), as its parser names them when
/// it refuses an unknown one ("unknown field `…`, expected one of `a`, `b`").
fn policy_fields(path: &str) -> BTreeSet<String> {
    let mut probe = serde_json::json!({ "__tidy": 1 });
    for segment in path.split('.').filter(|s| !s.is_empty()).rev() {
        probe = serde_json::json!({ segment: probe });
    }
    // `limiter.global` is read only with the global backend.
    if path == "limiter.global" {
        probe["limiter"]["backend"] = "global".into();
        probe["limiter"]["hash_key"] = "00112233445566778899aabbccddeeff".into();
    }
    let error = match portcullis_core::Policy::from_json(probe.to_string().as_bytes()) {
        Ok(_) => panic!("the policy took an unknown field at {path:?}"),
        Err(error) => error.to_string(),
    };
    let expected = error.split("expected one of ").nth(1).or_else(|| error.split("expected ").nth(1));
    let expected = expected.unwrap_or_else(|| panic!("no field list in {error:?}"));
    expected.split(", ").map(|f| f.trim_matches(|c: char| c == '`' || c.is_whitespace()).to_owned()).collect()
}

/// The README's policy table: every field the parser takes, and nothing else.
#[test]
fn the_readme_policy_table_lists_every_field() {
    let readme = readme();
    let documented: BTreeSet<String> = readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once("` |").map(|(field, _)| field.to_owned()))
        .collect();
    let mut fields = BTreeSet::new();
    for object in ["", "https_redirect", "client_ip", "limiter", "limiter.global"] {
        for field in policy_fields(object) {
            let full = if object.is_empty() { field } else { format!("{object}.{field}") };
            // Objects are documented field by field.
            if !["https_redirect", "client_ip", "limiter", "limiter.global"].contains(&full.as_str()) {
                fields.insert(full);
            }
        }
    }
    let missing: Vec<_> = fields.iter().filter(|f| !documented.contains(*f)).collect();
    assert!(missing.is_empty(), "policy fields missing from the README's table: {missing:?}");
    // Rows of this table are the only README rows that name a field in this form.
    let table =
        &readme[readme.find("## Policy configuration").unwrap_or(0)..readme.find("### Header presets").unwrap_or(0)];
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let field = line[3..].split('`').next().unwrap_or_default();
        assert!(fields.contains(field), "the README documents a policy field that does not exist: {field}");
    }
    // A tier's and a profile's fields are listed inside their rows.
    for (row, object) in [("| `rate_limits` |", "rate_limits"), ("| `profiles` |", "profiles")] {
        let line = readme.lines().find(|l| l.starts_with(row)).unwrap_or_default();
        let probe = format!(r#"{{"{object}": [{{"__tidy": 1}}]}}"#);
        let error =
            portcullis_core::Policy::from_json(probe.as_bytes()).err().map(|e| e.to_string()).unwrap_or_default();
        let listed = error.split("expected one of ").nth(1).unwrap_or_default();
        for field in listed.split(", ").map(|f| f.trim_matches('`')) {
            assert!(
                line.contains(&format!("\"{field}\"")),
                "the README's {object} row does not name \"{field}\": {line}"
            );
        }
    }
}

/// Every `cargo xtask` command is in the README, and the README names no other.
#[test]
fn the_readme_names_every_xtask_command() {
    let readme = readme();
    let commands: BTreeSet<String> = crate::Cli::command().get_subcommands().map(|c| c.get_name().to_owned()).collect();
    let named: BTreeSet<String> = readme
        .split("cargo xtask ")
        .skip(1)
        .filter_map(|rest| {
            let word: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '-').collect();
            (!word.is_empty()).then_some(word)
        })
        .collect();
    let undocumented: Vec<_> = commands.difference(&named).collect();
    assert!(undocumented.is_empty(), "commands the README does not mention: {undocumented:?}");
    let unknown: Vec<_> = named.difference(&commands).collect();
    assert!(unknown.is_empty(), "the README names commands that do not exist: {unknown:?}");
}

/// Wherever the README lists the bench suites, it lists exactly the ones there are.
#[test]
fn the_readme_lists_the_bench_suites() {
    let suites: Vec<String> = crate::bench::Suite::value_variants()
        .iter()
        .filter_map(|s| s.to_possible_value().map(|v| v.get_name().to_owned()))
        .collect();
    let readme = readme();
    let mut lists = 0;
    for rest in readme.split("cargo xtask bench [").skip(1) {
        let listed: Vec<&str> = rest.split(']').next().unwrap_or_default().split('|').collect();
        let mut expected: Vec<&str> = suites.iter().map(String::as_str).collect();
        let mut got = listed.clone();
        expected.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, expected, "a README list of bench suites: {listed:?}");
        lists += 1;
    }
    assert!(lists > 0, "the README lists no bench suites");
}
