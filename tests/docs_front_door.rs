//! The crate's front door stays true: the README's Rust example is
//! `examples/quickstart.rs` (which the crate docs include and doc-test, so the
//! README's code is compiled and run exactly as a user would write it),
//! library users do not get the CLI by default, docs.rs builds every feature,
//! and the package metadata a registry shows is there.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

#[test]
fn the_readme_example_is_the_quickstart_the_docs_test() {
    let readme = read("README.md");
    let start = readme
        .find("```rust\n")
        .expect("a rust block in the README")
        + "```rust\n".len();
    let end = start + readme[start..].find("```\n").unwrap();
    let block = &readme[start..end];
    assert_eq!(
        block,
        read("examples/quickstart.rs"),
        "README's example and examples/quickstart.rs differ: keep them identical"
    );
    // As a user writes it: no dev-dependency, no test preset.
    assert!(!block.contains("tempfile"), "tempfile is a dev-dependency");
    assert!(
        !block.contains("small()"),
        "JournalOptions::small is a test preset"
    );
    assert!(
        !block.lines().any(|l| l.trim_start().starts_with("# ")),
        "no hidden lines"
    );
    let lib = read("src/lib.rs");
    assert!(lib.contains("#![doc = include_str!(\"../examples/quickstart.rs\")]"));
}

#[test]
fn cargo_toml_builds_the_fixed_interfaces_by_default_and_documents_every_feature() {
    let toml = read("Cargo.toml");
    let default = toml
        .lines()
        .find(|l| l.starts_with("default = "))
        .expect("default features");
    // DESIGN.md's examples (batch_agent, fleet_agent) are invoked without
    // feature flags, so their features are defaults; no CLI feature (the
    // operator tool is its own package, checked below); a library user opts
    // out of the fleet with `default-features = false` (checked by .ci/run's
    // no-default builds).
    assert_eq!(default, r#"default = ["tokio", "postgres"]"#);
    assert!(
        toml.contains("default-features = false, features = [\"tokio\"]"),
        "Cargo.toml shows library users how to opt out of the fleet"
    );
    for field in [
        "repository = ",
        "documentation = ",
        "keywords = ",
        "categories = ",
        "rust-version = ",
    ] {
        assert!(
            toml.lines().any(|l| l.starts_with(field)),
            "Cargo.toml lacks {field}"
        );
    }
    assert!(toml.contains("[package.metadata.docs.rs]\n"));
    assert!(toml.contains("all-features = true"));
    assert!(read("src/lib.rs").contains("#![cfg_attr(docsrs, feature(doc_cfg))]"));
    // The demo must run with the README's command: no required feature
    // outside the defaults.
    let demo = toml
        .find("name = \"batch_agent\"")
        .expect("the demo example");
    let section = &toml[demo..toml[demo..].find("\n\n").map_or(toml.len(), |e| demo + e)];
    assert!(
        !section.contains("cli") && !section.contains("http"),
        "batch_agent must need default features only: {section}"
    );
    assert!(read("CHANGELOG.md").contains("## [Unreleased]"));
}

/// Library users do not pay for the CLI: the `agentwal` package has no clap
/// or indicatif, not even optional; `wal-inspect` is its own package, in the
/// workspace's default members so that `cargo build --release` and
/// `cargo run --bin wal-inspect` at the root still build and run it; and no
/// example needs a feature outside the defaults (they run with no flags).
#[test]
fn the_library_has_no_cli_dependency_and_the_root_still_builds_wal_inspect() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let package = |name: &str| {
        packages
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no package {name}"))
    };
    let lib = package("agentwal");
    let deps: Vec<&str> = lib["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"].is_null()) // normal dependencies
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    for cli in ["clap", "indicatif"] {
        assert!(!deps.contains(&cli), "agentwal depends on {cli}: {deps:?}");
    }
    let defaults: Vec<&str> = lib["features"]["default"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for target in lib["targets"].as_array().unwrap() {
        if target["kind"][0] == "example" {
            for f in target["required-features"].as_array().into_iter().flatten() {
                let f = f.as_str().unwrap();
                assert!(
                    defaults.contains(&f),
                    "example {} needs {f}, not a default feature",
                    target["name"]
                );
            }
        }
    }
    let tool = package("wal-inspect");
    assert!(
        tool["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["kind"][0] == "bin" && t["name"] == "wal-inspect"),
        "the wal-inspect package builds the wal-inspect binary"
    );
    assert_eq!(
        tool["rust_version"], lib["rust_version"],
        "wal-inspect has the library's MSRV (checked in .ci/run)"
    );
    let default_members: Vec<&str> = meta["workspace_default_members"]
        .as_array()
        .expect("cargo >= 1.71 reports workspace_default_members")
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for id in [&lib["id"], &tool["id"]] {
        let id = id.as_str().unwrap();
        assert!(
            default_members.contains(&id),
            "{id} is not a default member: {default_members:?}"
        );
    }
}
