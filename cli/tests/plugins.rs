//! `stowage plugins check FILE` with the real binary and the fixture libraries built by
//! `scripts/build-plugin-fixtures` into `target/plugins/`.

mod sandbox;

use std::path::PathBuf;

use sandbox::Sandbox;

/// A fixture library by file stem (`libstowage_plugin_kv`), which must have been built.
fn fixture(stem: &str) -> String {
    let ext = if cfg!(target_os = "macos") {
        "dylib"
    } else {
        "so"
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins")
        .join(format!("{stem}.{ext}"));
    assert!(
        path.is_file(),
        "{} is missing; run scripts/build-plugin-fixtures first",
        path.display()
    );
    path.canonicalize().unwrap().display().to_string()
}

#[test]
fn a_good_plugin_lists_its_providers() {
    let sb = Sandbox::new();
    let kv = fixture("libstowage_plugin_kv");
    let text = sb.ok(&["plugins", "check", &kv]).text();
    assert!(text.starts_with(&format!("file:     {kv}\n")), "{text}");
    assert!(text.contains("plugin:   stowage-plugin-kv "), "{text}");
    assert!(text.contains("abi:      1."), "{text}");
    assert!(text.contains("provider: kv  "), "{text}");
    assert!(
        text.contains("capabilities: ") && text.contains("versions"),
        "{text}"
    );

    let cmem = fixture("libstowage_plugin_cmem");
    let json = sb.ok(&["--json", "plugins", "check", &cmem]).json();
    assert_eq!(json["path"], cmem.as_str());
    assert_eq!(json["plugin"], "cmem");
    assert!(json["abi"].as_str().unwrap().starts_with("1."), "{json}");
    let providers = json["providers"].as_array().unwrap();
    assert_eq!(providers.len(), 1, "{json}");
    assert_eq!(providers[0]["name"], "cmem");
    assert!(!providers[0]["description"].as_str().unwrap().is_empty());
    assert_eq!(providers[0]["capabilities"]["versions"], false);
    assert!(providers[0]["config_schema"].is_object(), "{json}");
}

#[test]
fn refused_libraries_exit_2_naming_the_file() {
    let sb = Sandbox::new();
    // A text file given by a bare relative name: refused as not a library, not searched for
    // on the system's library path.
    sb.write("notes.txt", "not a plugin\n");
    let run = sb.fails(&["plugins", "check", "notes.txt"], 2);
    assert!(run.stderr.contains("notes.txt"), "{}", run.stderr);
    assert!(
        run.stderr.contains("not a loadable shared library"),
        "{}",
        run.stderr
    );

    let wrong = fixture("librefuse_wrong_major");
    let run = sb.fails(&["plugins", "check", &wrong], 2);
    assert!(
        run.stderr.contains(&wrong) && run.stderr.contains("ABI"),
        "{}",
        run.stderr
    );

    let missing = fixture("librefuse_missing_symbol");
    let run = sb.fails(&["plugins", "check", &missing], 2);
    assert!(
        run.stderr.contains(&missing) && run.stderr.contains("stowage_plugin_entry_v1"),
        "{}",
        run.stderr
    );

    let run = sb.fails(&["plugins", "check", "nowhere.so"], 2);
    assert!(run.stderr.contains("nowhere.so"), "{}", run.stderr);

    std::fs::create_dir(sb.join("plugdir")).unwrap();
    let run = sb.fails(&["plugins", "check", "plugdir"], 2);
    assert!(
        run.stderr.contains("plugdir")
            && run.stderr.contains("is a directory")
            && run.stderr.contains("library file")
            && !run.stderr.contains("no such file"),
        "{}",
        run.stderr
    );
}

#[test]
fn config_plugins_are_shown_by_absolute_path_and_refusals_exit_2() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.join("plug")).unwrap();
    std::fs::create_dir_all(sb.join("cfg")).unwrap();
    std::fs::copy(
        fixture("libstowage_plugin_kv"),
        sb.join("plug/libstowage_plugin_kv.so"),
    )
    .unwrap();
    let config = |name: &str, paths: &[&str]| {
        let paths: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
        sb.write(
            &format!("cfg/{name}"),
            format!(
                "[storage]\nprovider = \"sqlite\"\n[plugins]\npaths = [{}]\n",
                paths.join(", ")
            ),
        );
        format!("cfg/{name}")
    };
    let good = config("good.toml", &["../plug/libstowage_plugin_kv.so"]);
    let list = sb
        .ok(&["--json", "--config", &good, "providers"])
        .json_lines();
    let kv = list.iter().find(|p| p["name"] == "kv").expect("kv listed");
    let origin = kv["origin"].as_str().unwrap();
    let lib = sb
        .join("plug/libstowage_plugin_kv.so")
        .canonicalize()
        .unwrap();
    assert!(origin.contains(lib.to_str().unwrap()), "{origin}");
    assert!(!origin.contains(".."), "{origin}");
    assert!(kv["config_schema"].is_object(), "{kv}");

    // A library of another ABI, named by the config: refused, exit 2 as with `plugins check`.
    let wrong = fixture("librefuse_wrong_major");
    let refused = config("wrong.toml", &[&wrong]);
    let run = sb.fails(&["--config", &refused, "providers"], 2);
    assert!(run.stderr.contains(&wrong), "{}", run.stderr);
    sb.fails(&["--config", &refused, "ls"], 2);

    // Two libraries declaring the same provider name.
    std::fs::copy(
        fixture("libstowage_plugin_kv"),
        sb.join("plug/libstowage_plugin_kv_twin.so"),
    )
    .unwrap();
    let twins = config(
        "twins.toml",
        &[
            "../plug/libstowage_plugin_kv.so",
            "../plug/libstowage_plugin_kv_twin.so",
        ],
    );
    let run = sb.fails(&["--config", &twins, "providers"], 2);
    assert!(run.stderr.contains("kv"), "{}", run.stderr);
}

#[test]
fn verbose_traces_one_span_per_call_for_a_plugin_and_a_built_in_provider() {
    let sb = Sandbox::new();
    sb.write(
        "kv.toml",
        format!(
            "[storage]\nprovider = \"kv\"\n[storage.config]\npath = \"kv.redb\"\n[plugins]\npaths = [{:?}]\n",
            fixture("libstowage_plugin_kv")
        ),
    );
    sb.write(
        "s.toml",
        "[storage]\nprovider = \"sqlite\"\n[storage.config]\npath = \"s.db\"\n",
    );
    for (config, provider) in [("kv.toml", "kv"), ("s.toml", "sqlite")] {
        let put = sb.run_with_stdin(&["-v", "--config", config, "put", "k", "-"], b"traced");
        assert_eq!(put.code, 0, "{}", put.stderr);
        let get = sb.run_with_stdin(&["-v", "--config", config, "get", "k"], b"");
        assert_eq!(get.code, 0, "{}", get.stderr);
        for (run, operation, bytes) in [(&put, "put", None), (&get, "get", Some(6))] {
            let spans: Vec<&str> = run
                .stderr
                .lines()
                .filter(|l| l.contains("stowage.call{"))
                .collect();
            assert_eq!(spans.len(), 1, "one span per backend call: {}", run.stderr);
            let span = spans[0];
            for field in [
                format!("provider=\"{provider}\""),
                format!("operation=\"{operation}\""),
                "namespace=\"default\"".to_string(),
                "key=\"k\"".to_string(),
                "outcome=\"ok\"".to_string(),
                "micros=".to_string(),
            ] {
                assert!(span.contains(&field), "{field} missing: {span}");
            }
            if let Some(b) = bytes {
                assert!(span.contains(&format!("bytes={b}")), "{span}");
            }
        }
    }
}
