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
    // DESIGN.md's interfaces (wal-inspect, batch_agent, fleet_agent) are
    // invoked without feature flags; a library user opts out with
    // `default-features = false` (checked by .ci/run's no-default builds).
    for needed in ["tokio", "cli", "postgres"] {
        assert!(default.contains(needed), "{default} lacks {needed}");
    }
    assert!(
        toml.contains("default-features = false, features = [\"tokio\"]"),
        "Cargo.toml shows library users how to opt out of the tools"
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
        !section.contains("cli"),
        "batch_agent must not need `cli`: {section}"
    );
    assert!(read("CHANGELOG.md").contains("## [Unreleased]"));
}
