//! Config look-up, the `providers` listing, and the exit-code contract (hostile keys, bad
//! configs, usage errors, unsupported operations), run as the real binary.

mod sandbox;

use sandbox::{assert_one_error_line, Sandbox};
use serde_json::Value;

fn sqlite_config(db_path: &str) -> String {
    format!("[storage]\nprovider = \"sqlite\"\n[storage.config]\npath = \"{db_path}\"\n")
}

#[test]
fn providers_lists_sqlite_and_memory_with_capabilities() {
    let sb = Sandbox::new();
    let list = sb.ok(&["--json", "providers"]).json_lines();
    let find = |name: &str| -> Value {
        list.iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("provider {name} missing from {list:?}"))
            .clone()
    };
    for name in ["sqlite", "memory"] {
        let p = find(name);
        let mut fields: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "capabilities",
                "config_schema",
                "description",
                "name",
                "origin"
            ]
        );
        assert!(p["config_schema"].is_object(), "{p}");
        assert_eq!(p["origin"], "built-in");
        assert!(!p["description"].as_str().unwrap().is_empty());
        let caps = p["capabilities"].as_object().unwrap();
        for cap in ["versions", "delete", "search", "gc", "verify", "durable"] {
            assert!(caps[cap].is_boolean(), "{name}.{cap} in {p}");
        }
    }
    assert_eq!(find("sqlite")["capabilities"]["durable"], true);
    assert_eq!(find("memory")["capabilities"]["durable"], false);
    assert!(
        find("sqlite")["config_schema"].to_string().contains("path"),
        "{}",
        find("sqlite")
    );

    let text = sb.ok(&["providers"]).text();
    assert!(
        text.contains("sqlite") && text.contains("memory") && text.contains("capabilities:"),
        "{text}"
    );
    // Listing providers opens no store.
    assert!(!sb.has_default_data_dir());

    // It does load the plugins the config names, so a missing one is reported by name: an
    // invalid config, exit 2.
    sb.write(
        "stowage.toml",
        "[storage]\nprovider = \"sqlite\"\n[plugins]\npaths = [\"plugins/libmissing.so\"]\n",
    );
    let run = sb.fails(&["providers"], 2);
    assert!(run.stderr.contains("libmissing.so"), "{}", run.stderr);
    assert!(run.stderr.contains("plugins.paths"), "{}", run.stderr);
    sb.write(
        "stowage.toml",
        "[storage]\nprovider = \"sqlite\"\n[plugins]\ndirs = [\"no-such-folder\"]\n",
    );
    let run = sb.fails(&["providers"], 2);
    assert!(run.stderr.contains("no-such-folder"), "{}", run.stderr);
    let run = sb.fails(&["ls"], 2);
    assert!(run.stderr.contains("plugins.dirs"), "{}", run.stderr);
}

#[test]
fn hostile_keys_exit_2_before_any_storage_is_created() {
    let sb = Sandbox::new();
    let input = sb.write("in.txt", b"x");
    let input = input.to_str().unwrap();
    for key in [
        "../etc/passwd",
        "/abs",
        "a//b",
        "a/./b",
        "a/",
        "back\\slash",
        "",
        "tab\tkey",
    ] {
        for args in [
            vec!["put", key, input],
            vec!["get", key],
            vec!["get", key, "-o", "out.bin"],
            vec!["head", key],
            vec!["rm", key],
            vec!["restore", key],
            vec!["versions", key],
            vec!["purge", key],
        ] {
            let run = sb.fails(&args, 2);
            assert!(
                run.stderr.contains("invalid key"),
                "{args:?}: {}",
                run.stderr
            );
            assert!(!sb.has_default_data_dir(), "{args:?} created stowage-data");
            assert!(!sb.join("out.bin").exists());
        }
    }
    let run = sb.fails(&["--namespace", "../up", "ls"], 2);
    assert!(run.stderr.contains("invalid namespace"), "{}", run.stderr);
    sb.fails(&["--namespace", "Upper", "put", "k", input], 2);
    assert!(!sb.has_default_data_dir());
}

#[test]
fn malformed_configs_exit_2_naming_the_field() {
    let sb = Sandbox::new();
    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "bad-toml.toml",
            "[storage\nprovider = ",
            // A syntax error names its place, not a field.
            &["invalid config in bad-toml.toml: malformed TOML at line 1, column 9: "],
        ),
        (
            "unknown-field.toml",
            "[storage]\nprovider = \"sqlite\"\nflavour = \"x\"\n",
            &["flavour", "in `storage`; see docs/user-guide.md"],
        ),
        (
            "unknown-provider.toml",
            "[storage]\nprovider = \"nosuch\"\n",
            &["storage.provider", "nosuch", "sqlite"],
        ),
        (
            "bad-provider-field.toml",
            "[storage]\nprovider = \"sqlite\"\n[storage.config]\npaht = \"x.db\"\n",
            &["paht", "storage.config"],
        ),
        (
            "bad-namespace.toml",
            "[storage]\nprovider = \"sqlite\"\nnamespace = \"No\"\n",
            &["storage.namespace"],
        ),
        ("no-storage.toml", "[plugins]\npaths = []\n", &["storage"]),
    ];
    for (file, text, needles) in cases {
        sb.write(file, text);
        for args in [
            vec!["--config", file, "ls"],
            vec!["--config", file, "put", "k", file],
        ] {
            let run = sb.fails(&args, 2);
            for needle in needles {
                assert!(
                    run.stderr.contains(needle),
                    "{file}: {needle:?} not in {}",
                    run.stderr
                );
            }
        }
        assert!(!sb.has_default_data_dir(), "{file} created stowage-data");
    }
    let run = sb.fails(&["--config", "does-not-exist.toml", "ls"], 2);
    assert!(
        run.stderr.contains("does-not-exist.toml") && run.stderr.contains("--config"),
        "{}",
        run.stderr
    );
    // A file that is not UTF-8 text is a malformed config too, named with its line.
    std::fs::write(
        sb.join("latin1.toml"),
        b"[storage]\nprovider = \"sqlite\"\n# caf\xe9\n",
    )
    .unwrap();
    let run = sb.fails(&["--config", "latin1.toml", "ls"], 2);
    assert!(
        run.stderr
            .contains("invalid config in latin1.toml: line 3 is not UTF-8"),
        "{}",
        run.stderr
    );
    assert!(!sb.has_default_data_dir());
}

/// A `./stowage.toml` that is a link to nothing or a directory is reported: falling back to the
/// embedded default would write to a store the user did not mean.
#[test]
fn a_broken_working_directory_config_is_an_error_not_the_default() {
    let sb = Sandbox::new();
    std::os::unix::fs::symlink("moved-away.toml", sb.join("stowage.toml")).unwrap();
    let run = sb.fails(&["ls"], 2);
    assert!(
        run.stderr.contains("stowage.toml") && run.stderr.contains("symbolic link to nothing"),
        "{}",
        run.stderr
    );
    std::fs::remove_file(sb.join("stowage.toml")).unwrap();
    std::fs::create_dir(sb.join("stowage.toml")).unwrap();
    let run = sb.fails(&["ls"], 2);
    assert!(
        run.stderr.contains("stowage.toml") && run.stderr.contains("is a directory"),
        "{}",
        run.stderr
    );
    assert!(!sb.has_default_data_dir());
}

#[test]
fn config_is_found_by_flag_then_env_then_working_directory() {
    let mut sb = Sandbox::new();
    // ./stowage.toml is used when nothing else is named.
    sb.write("stowage.toml", sqlite_config("local-data/local.db"));
    let run = sb.run_with_stdin(&["put", "k"], b"local");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(sb.join("local-data/local.db").exists());
    assert!(!sb.has_default_data_dir());

    // $STOWAGE_CONFIG beats ./stowage.toml.
    let env_cfg = sb.write("conf/env.toml", sqlite_config("env-data/env.db"));
    sb.set_env("STOWAGE_CONFIG", env_cfg.to_str().unwrap());
    sb.fails(&["get", "k"], 3);
    let run = sb.run_with_stdin(&["put", "k"], b"env");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(sb.join("env-data/env.db").exists());
    assert_eq!(sb.ok(&["get", "k"]).stdout, b"env");

    // --config beats $STOWAGE_CONFIG.
    assert_eq!(
        sb.ok(&["--config", "stowage.toml", "get", "k"]).stdout,
        b"local"
    );

    // A $STOWAGE_CONFIG naming a missing file is an error, not a silent fallback.
    sb.set_env("STOWAGE_CONFIG", "missing.toml");
    let run = sb.fails(&["ls"], 2);
    assert!(
        run.stderr.contains("STOWAGE_CONFIG") && run.stderr.contains("missing.toml"),
        "{}",
        run.stderr
    );
    // Set but empty is an error too, not the working directory's config or the default.
    sb.set_env("STOWAGE_CONFIG", "");
    let run = sb.fails(&["ls"], 2);
    assert!(
        run.stderr.contains("STOWAGE_CONFIG") && run.stderr.contains("empty"),
        "{}",
        run.stderr
    );
    // A directory is not a config file: invalid input, as a missing one is.
    std::fs::create_dir(sb.join("conf.d")).unwrap();
    let run = sb.fails(&["--config", "conf.d", "ls"], 2);
    assert!(
        run.stderr.contains("conf.d") && run.stderr.contains("directory"),
        "{}",
        run.stderr
    );
}

#[test]
fn config_namespace_applies_and_the_flag_overrides_it() {
    let sb = Sandbox::new();
    sb.write(
        "stowage.toml",
        "[storage]\nprovider = \"sqlite\"\nnamespace = \"team\"\n[storage.config]\npath = \"d/s.db\"\n",
    );
    let run = sb.run_with_stdin(&["--json", "put", "k"], b"team data");
    assert_eq!(run.json()["namespace"], "team");
    let run = sb.run_with_stdin(&["--json", "--namespace", "solo", "put", "k"], b"solo data");
    assert_eq!(run.json()["namespace"], "solo");
    assert_eq!(sb.ok(&["get", "k"]).stdout, b"team data");
    assert_eq!(
        sb.ok(&["--namespace", "solo", "get", "k"]).stdout,
        b"solo data"
    );
}

#[test]
fn memory_provider_from_config_keeps_nothing_between_runs() {
    let sb = Sandbox::new();
    sb.write("mem.toml", "[storage]\nprovider = \"memory\"\n");
    let run = sb.run_with_stdin(&["--config", "mem.toml", "--json", "put", "k"], b"volatile");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["version"], 1);
    sb.fails(&["--config", "mem.toml", "get", "k"], 3);
    assert!(!sb.has_default_data_dir());
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let sb = Sandbox::new();
    let run = sb.fails(&["frobnicate"], 2);
    assert!(run.stderr.contains("frobnicate"), "{}", run.stderr);
    sb.fails(&["get"], 2);
    sb.fails(&["put", "k", "f", "--if-version", "x"], 2);
    let run = sb.fails(&["put", "k", "--attr", "=v"], 2);
    assert!(run.stderr.contains("--attr"), "{}", run.stderr);
    sb.fails(&["--json", "-q", "-v", "ls"], 2);
    let run = sb.fails(&["put", "k", "no-such-input.bin"], 2);
    assert!(run.stderr.contains("no-such-input.bin"), "{}", run.stderr);
    assert!(!sb.has_default_data_dir());

    // Help and version are not errors.
    let help = sb.ok(&["--help"]);
    assert!(help.text().contains("Exit codes"), "{}", help.text());
    assert!(sb.ok(&["--version"]).text().starts_with("stowage "));
    assert!(sb.ok(&["put", "--help"]).text().contains("--if-absent"));
}

/// The arguments of the command that needs `capability`, if the CLI has one.
fn command_for(capability: &str) -> Option<Vec<&'static str>> {
    Some(match capability {
        "delete" => vec!["rm", "k"],
        "versions" => vec!["versions", "k"],
        "restore" => vec!["restore", "k"],
        "purge" => vec!["purge", "k"],
        "search" => vec!["search"],
        "gc" => vec!["gc"],
        "verify" => vec!["verify"],
        _ => return None,
    })
}

#[test]
fn unsupported_operations_exit_5_when_a_provider_lacks_one() {
    let sb = Sandbox::new();
    let providers = sb.ok(&["--json", "providers"]).json_lines();
    let mut checked = 0;
    for p in providers
        .iter()
        .filter(|p| p["name"] == "memory" || p["name"] == "sqlite")
    {
        let name = p["name"].as_str().unwrap();
        let config = match name {
            "memory" => sb.write(
                "unsupported-memory.toml",
                "[storage]\nprovider = \"memory\"\n",
            ),
            _ => sb.write("unsupported-sqlite.toml", sqlite_config("u/u.db")),
        };
        let config = config.to_str().unwrap().to_string();
        for (cap, on) in p["capabilities"].as_object().unwrap() {
            let Some(args) = command_for(cap) else {
                continue;
            };
            if on.as_bool() == Some(true) {
                continue;
            }
            let mut full = vec!["--config", config.as_str()];
            full.extend(args);
            let run = sb.run(&full);
            assert_eq!(
                run.code, 5,
                "{name} lacks {cap}: {full:?} -> {}",
                run.stderr
            );
            assert_one_error_line(&run.stderr);
            assert!(run.stderr.contains("not supported"), "{}", run.stderr);
            checked += 1;
        }
    }
    if checked == 0 {
        // Both built-in providers support every operation the CLI exposes, so no command can
        // be unsupported here; the mapping itself is covered by the unit test in exit.rs.
        eprintln!("note: memory and sqlite support every CLI operation; exit 5 not exercised");
    }
}

/// A store path that cannot be a directory (it, or a folder on the way to it, is a file) is a
/// config error naming the field, for every local provider: exit 2, nothing written.
#[test]
fn a_store_directory_that_is_a_file_is_a_config_error() {
    let sb = Sandbox::new();
    sb.write("afile", b"not a directory");
    for (provider, field, value) in [
        ("fs", "root", "afile"),
        ("fs", "root", "afile/below"),
        ("automerge", "root", "afile"),
        ("sqlite", "path", "afile/stowage.db"),
    ] {
        sb.write(
            "c.toml",
            format!(
                "[storage]\nprovider = \"{provider}\"\n[storage.config]\n{field} = \"{value}\"\n"
            ),
        );
        let run = sb.fails(&["--config", "c.toml", "ls"], 2);
        assert!(
            run.stderr.contains(&format!("storage.config.{field}")) && run.stderr.contains("afile"),
            "{provider}: {}",
            run.stderr
        );
        assert_eq!(std::fs::read(sb.join("afile")).unwrap(), b"not a directory");
    }
}
