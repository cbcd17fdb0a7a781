//! Plugin discovery (crates/runner/plugins.rs, run by the runner's build
//! script): a crate whose Cargo.toml declares
//! `[package.metadata.brain-rs] plugin = true` is linked into the runner by
//! one dependency line in the runner's Cargo.toml.

#[path = "../crates/runner/plugins.rs"]
mod plugins;

use std::fs;
use std::path::Path;

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn package(name: &str, metadata: &str) -> String {
    format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\n{metadata}\n[dependencies]\n")
}

const PLUGIN: &str = "\n[package.metadata.brain-rs]\nplugin = true\n";

/// A workspace with a runner, plugin crates (one referenced through
/// `[workspace.dependencies]`, one to be added by a path line, one never
/// added) and crates that are not plugins.
fn workspace(root: &Path, runner_deps: &str) {
    write(
        root,
        "Cargo.toml",
        r#"[workspace]
members = ["crates/runner", "crates/helper", "crates/plain", "crates/estimators/*"]

[workspace.dependencies]
serde = "1"
helper = { path = "crates/helper" }
ws-plugin = { path = "crates/estimators/ws-plugin" }
"#,
    );
    write(
        root,
        "crates/runner/Cargo.toml",
        &format!("{}{runner_deps}", package("runner", "")),
    );
    write(root, "crates/helper/Cargo.toml", &package("helper", ""));
    write(
        root,
        "crates/plain/Cargo.toml",
        &package("plain", "\n[package.metadata.brain-rs]\nplugin = false\n"),
    );
    write(
        root,
        "crates/estimators/ws-plugin/Cargo.toml",
        &package("ws-plugin", PLUGIN),
    );
    write(
        root,
        "crates/estimators/mine/Cargo.toml",
        &package("mine", PLUGIN),
    );
    write(
        root,
        "crates/estimators/forgotten/Cargo.toml",
        &package("forgotten", PLUGIN),
    );
}

fn uses(source: &str) -> Vec<&str> {
    source.lines().filter(|l| !l.starts_with("//")).collect()
}

fn unlinked(found: &plugins::Discovery) -> Vec<&str> {
    found.unlinked.iter().map(|(n, _)| n.as_str()).collect()
}

const BASE_DEPS: &str = r#"serde.workspace = true
helper.workspace = true
ws-plugin.workspace = true
plain = { path = "../plain" }
"#;

#[test]
fn one_dependency_line_links_a_plugin_crate() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    // Before the line: `mine` is not linked, and the build script warns.
    workspace(root, BASE_DEPS);
    let before = plugins::discover(&root.join("crates/runner/Cargo.toml")).unwrap();
    assert_eq!(uses(&before.source), ["use ws_plugin as _;"]);
    assert_eq!(unlinked(&before), ["forgotten", "mine"]);

    // The one line.
    workspace(
        root,
        &format!("{BASE_DEPS}mine = {{ path = \"../estimators/mine\" }}\n"),
    );
    let after = plugins::discover(&root.join("crates/runner/Cargo.toml")).unwrap();
    assert_eq!(
        uses(&after.source),
        ["use mine as _;", "use ws_plugin as _;"]
    );
    assert_eq!(unlinked(&after), ["forgotten"]);

    // Every manifest read reruns the build script, and so does a new crate in
    // a globbed member folder.
    for rel in [
        "Cargo.toml",
        "crates/runner/Cargo.toml",
        "crates/helper/Cargo.toml",
        "crates/plain/Cargo.toml",
        "crates/estimators/mine/Cargo.toml",
        "crates/estimators/ws-plugin/Cargo.toml",
        "crates/estimators",
    ] {
        assert!(
            after.read.iter().any(|p| p == &root.join(rel)),
            "{rel} not in {:?}",
            after.read
        );
    }
}

#[test]
fn plugin_must_be_a_boolean() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    workspace(root, BASE_DEPS);
    write(
        root,
        "crates/helper/Cargo.toml",
        &package(
            "helper",
            "\n[package.metadata.brain-rs]\nplugin = \"yes\"\n",
        ),
    );
    let err = plugins::discover(&root.join("crates/runner/Cargo.toml")).unwrap_err();
    assert!(
        err.contains("helper") && err.contains("must be true or false"),
        "{err}"
    );
}

/// The real workspace: every plugin crate is linked, none is left out. (The
/// list is not spelled out here, so adding an estimator stays one crate and
/// one dependency line.)
#[test]
fn the_runner_links_every_plugin_crate_of_the_workspace() {
    let found =
        plugins::discover(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let uses = uses(&found.source);
    for core in [
        "use align_data as _;",
        "use align_evaluators as _;",
        "use align_goodness as _;",
        "use align_models as _;",
        "use align_rewards as _;",
        "use brain as _;",
        "use dpo as _;",
        "use rso as _;",
        "use slic as _;",
    ] {
        assert!(uses.contains(&core), "{core} missing from {uses:?}");
    }
    assert_eq!(unlinked(&found), Vec::<&str>::new());
}
