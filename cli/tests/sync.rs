//! `stowage sync --to-config FILE` with the real binary: two automerge stores exchange changes
//! both ways and merge concurrent edits; any other provider is exit 5.

mod sandbox;

use sandbox::Sandbox;

fn automerge_config(sb: &Sandbox, name: &str, root: &str) {
    sb.write(
        name,
        format!("[storage]\nprovider = \"automerge\"\n[storage.config]\nroot = \"{root}\"\n"),
    );
}

fn put_json(sb: &Sandbox, config: &str, key: &str, json: &str, extra: &[&str]) {
    let mut args = vec![
        "--config",
        config,
        "put",
        key,
        "-",
        "--content-type",
        "application/json",
    ];
    args.extend_from_slice(extra);
    let run = sb.run_with_stdin(&args, json.as_bytes());
    assert_eq!(run.code, 0, "put {key}: {}", run.stderr);
}

fn get_json(sb: &Sandbox, config: &str, key: &str) -> serde_json::Value {
    let run = sb.ok(&["--config", config, "get", key]);
    serde_json::from_slice(&run.stdout).unwrap()
}

#[test]
fn two_automerge_stores_exchange_and_merge_changes() {
    let sb = Sandbox::new();
    automerge_config(&sb, "a.toml", "replica-a");
    automerge_config(&sb, "b.toml", "replica-b");
    put_json(&sb, "a.toml", "only-a", r#"{"from":"a"}"#, &[]);
    put_json(&sb, "b.toml", "only-b", r#"{"from":"b"}"#, &[]);
    // One document edited on both sides from a common version, in different fields.
    put_json(&sb, "a.toml", "shared", r#"{"title":"t","n":1}"#, &[]);
    let first = sb
        .ok(&[
            "--json",
            "--config",
            "a.toml",
            "sync",
            "--to-config",
            "b.toml",
        ])
        .json();
    assert_eq!(first["documents"], 3, "{first}");
    assert_eq!(first["documents_changed"], 3, "{first}");
    put_json(
        &sb,
        "a.toml",
        "shared",
        r#"{"title":"from a","n":1}"#,
        &["--base-version", "1"],
    );
    put_json(
        &sb,
        "b.toml",
        "shared",
        r#"{"title":"t","n":2}"#,
        &["--base-version", "1"],
    );

    let run = sb.ok(&["--config", "a.toml", "sync", "--to-config", "b.toml"]);
    let line = run.text();
    assert!(
        line.starts_with("sync replica-a <-> replica-b: 3 documents, 1 changed;"),
        "{line}"
    );

    for config in ["a.toml", "b.toml"] {
        assert_eq!(get_json(&sb, config, "only-a")["from"], "a");
        assert_eq!(get_json(&sb, config, "only-b")["from"], "b");
        let shared = get_json(&sb, config, "shared");
        assert_eq!(
            shared,
            serde_json::json!({"title": "from a", "n": 2}),
            "{config}"
        );
    }
    // Both replicas now hold the same changes, so the same bytes and the same hash.
    let ha = sb
        .ok(&["--json", "--config", "a.toml", "head", "shared"])
        .json();
    let hb = sb
        .ok(&["--json", "--config", "b.toml", "head", "shared"])
        .json();
    assert_eq!(
        (ha["hash"].clone(), ha["version"].clone()),
        (hb["hash"].clone(), hb["version"].clone())
    );

    let idle = sb
        .ok(&[
            "--json",
            "--config",
            "b.toml",
            "sync",
            "--to-config",
            "a.toml",
        ])
        .json();
    assert_eq!(idle["documents_changed"], 0, "{idle}");
    assert_eq!(idle["changes_a_to_b"], 0, "{idle}");
    assert_eq!(idle["changes_b_to_a"], 0, "{idle}");
}

#[test]
fn a_store_of_another_provider_is_unsupported() {
    let sb = Sandbox::new();
    automerge_config(&sb, "a.toml", "replica-a");
    sb.write(
        "s.toml",
        "[storage]\nprovider = \"sqlite\"\n[storage.config]\npath = \"s.db\"\n",
    );
    for args in [
        ["--config", "a.toml", "sync", "--to-config", "s.toml"],
        ["--config", "s.toml", "sync", "--to-config", "a.toml"],
    ] {
        let run = sb.fails(&args, 5);
        assert!(
            run.stderr.contains("s.toml") && run.stderr.contains("`sqlite`"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("stowage copy"), "{}", run.stderr);
    }
    // Refused before anything was opened.
    assert!(!sb.join("s.db").exists() && !sb.join("replica-a").exists());
    let run = sb.fails(
        &["--config", "a.toml", "sync", "--to-config", "nope.toml"],
        2,
    );
    assert!(run.stderr.contains("nope.toml"), "{}", run.stderr);
}
