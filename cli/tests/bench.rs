//! `stowage bench` with the real binary: the JSON shape `scripts/bench-report` reads, sane
//! figures (no timing assertions: the machine is shared), temporary and configured stores.

mod sandbox;

use sandbox::Sandbox;
use serde_json::Value;

/// Checks one run's JSON object: exactly the documented fields, the phases in order, and
/// figures that are possible (positive where work was done, p50 ≤ p99, no payload for head).
fn assert_report_shape(r: &Value, provider: &str, size: u64, ops: u64, concurrency: u64) {
    let mut fields: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "concurrency",
            "ops",
            "peak_rss_mib",
            "phases",
            "provider",
            "size"
        ],
        "{r}"
    );
    assert_eq!(r["provider"], provider, "{r}");
    assert_eq!(r["size"], size, "{r}");
    assert_eq!(r["ops"], ops, "{r}");
    assert_eq!(r["concurrency"], concurrency, "{r}");
    let rss = r["peak_rss_mib"]
        .as_f64()
        .expect("peak_rss_mib is a number on Linux");
    assert!(rss > 1.0 && rss < 4096.0, "{r}");
    let phases = r["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["operation"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["put", "get", "head"], "{r}");
    for p in phases {
        let mut keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "mib_per_sec",
                "operation",
                "ops_per_sec",
                "p50_us",
                "p99_us"
            ],
            "{p}"
        );
        assert!(p["ops_per_sec"].as_f64().unwrap() > 0.0, "{p}");
        let (p50, p99) = (p["p50_us"].as_u64().unwrap(), p["p99_us"].as_u64().unwrap());
        assert!(p50 <= p99, "{p}");
        let mib = p["mib_per_sec"].as_f64().unwrap();
        if p["operation"] == "head" {
            assert_eq!(mib, 0.0, "{p}");
        } else {
            assert!(mib > 0.0, "{p}");
            // Throughput is ops/s × size: the two figures must agree (to rounding).
            let expected = p["ops_per_sec"].as_f64().unwrap() * size as f64 / (1 << 20) as f64;
            assert!((mib - expected).abs() <= 0.1 + expected * 0.01, "{p}");
        }
    }
}

#[test]
fn json_report_of_temporary_memory_and_sqlite_stores() {
    let sb = Sandbox::new();
    let memory = sb
        .ok(&["--json", "bench", "--provider", "memory", "--ops", "200"])
        .json();
    assert_report_shape(&memory, "memory", 4096, 200, 1);

    let sqlite = sb
        .ok(&[
            "--json",
            "bench",
            "--provider",
            "sqlite",
            "--ops",
            "200",
            "--size",
            "64k",
            "--concurrency",
            "4",
        ])
        .json();
    assert_report_shape(&sqlite, "sqlite", 65536, 200, 4);
    // The temporary store lived elsewhere and is gone: nothing was written here.
    assert_eq!(std::fs::read_dir(sb.path()).unwrap().count(), 0);
}

#[test]
fn text_report_of_fs_names_every_phase() {
    let sb = Sandbox::new();
    let run = sb.ok(&["bench", "--provider", "fs", "--ops", "20", "--size", "1MiB"]);
    let text = run.text();
    assert!(
        text.starts_with("bench fs: 20 ops of 1.0 MiB per phase, concurrency 1\n"),
        "{text}"
    );
    for phase in ["put", "get", "head"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(phase)
                && l.contains("ops/s")
                && l.contains("p99")),
            "{phase} missing: {text}"
        );
    }
    assert!(
        text.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("peak RSS: "),
        "{text}"
    );
}

#[test]
fn configured_store_is_benchmarked_in_a_namespace_of_its_own() {
    let sb = Sandbox::new();
    sb.write(
        "stowage.toml",
        "[storage]\nprovider = \"sqlite\"\n[storage.config]\npath = \"data.db\"\n",
    );
    let run = sb.run_with_stdin(&["put", "mine"], b"keep me");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = sb.ok(&["--json", "bench", "--ops", "50"]);
    assert_report_shape(&run.json(), "sqlite", 4096, 50, 1);
    assert!(
        run.stderr.contains("purged its 50 records"),
        "{}",
        run.stderr
    );
    let ls = sb.ok(&["--json", "ls"]).json_lines();
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0]["key"], "mine");
    assert_eq!(sb.ok(&["get", "mine"]).stdout, b"keep me");
}

#[test]
fn bad_arguments_exit_2_naming_the_problem() {
    let sb = Sandbox::new();
    let run = sb.fails(&["bench", "--provider", "s3"], 2);
    assert!(run.stderr.contains("--config FILE"), "{}", run.stderr);
    let run = sb.fails(&["bench", "--provider", "nosuch"], 2);
    assert!(run.stderr.contains("\"nosuch\""), "{}", run.stderr);
    sb.write("x.toml", "[storage]\nprovider = \"memory\"\n");
    let run = sb.fails(&["--config", "x.toml", "bench", "--provider", "memory"], 2);
    assert!(run.stderr.contains("not both"), "{}", run.stderr);
    let run = sb.fails(&["bench", "--provider", "memory", "--size", "4XB"], 2);
    assert!(run.stderr.contains("4XB"), "{}", run.stderr);
    // Too much to hold is refused up front, naming the flag, and no run is left behind.
    for ops in ["18446744073709551615", "4294967296"] {
        let run = sb.fails(
            &["bench", "--provider", "memory", "--size", "1", "--ops", ops],
            2,
        );
        assert!(
            run.stderr.contains("--ops") && !run.stderr.contains("panicked"),
            "{}",
            run.stderr
        );
    }
    let run = sb.fails(
        &[
            "bench",
            "--provider",
            "memory",
            "--size",
            "1000000g",
            "--ops",
            "1",
        ],
        2,
    );
    assert!(
        run.stderr.contains("smaller --size") && !run.stderr.contains("panicked"),
        "{}",
        run.stderr
    );
    for flag in ["--ops", "--concurrency"] {
        let run = sb.fails(&["bench", "--provider", "memory", flag, "0"], 2);
        assert!(
            run.stderr
                .contains(&format!("'{flag} <N>': must be at least 1")),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn a_plugin_provider_is_benchmarked_through_its_config() {
    let ext = if cfg!(target_os = "macos") {
        "dylib"
    } else {
        "so"
    };
    let plugin = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins")
        .join(format!("libstowage_plugin_kv.{ext}"));
    assert!(
        plugin.is_file(),
        "{} is missing; run scripts/build-plugin-fixtures first",
        plugin.display()
    );
    let sb = Sandbox::new();
    sb.write(
        "kv.toml",
        format!(
            "[storage]\nprovider = \"kv\"\n[storage.config]\npath = \"kv.redb\"\n[plugins]\npaths = [{:?}]\n",
            plugin.canonicalize().unwrap().display().to_string()
        ),
    );
    let run = sb.ok(&[
        "--json",
        "--config",
        "kv.toml",
        "bench",
        "--ops",
        "40",
        "--concurrency",
        "4",
    ]);
    assert_report_shape(&run.json(), "kv", 4096, 40, 4);
}

/// Ctrl-C stops a bench of a configured store cleanly: the operations in flight finish, the
/// records written are removed, and the store's own records stay.
#[cfg(unix)]
#[test]
fn an_interrupted_bench_removes_what_it_wrote() {
    use std::io::{BufRead, BufReader};
    let sb = Sandbox::new();
    sb.write(
        "stowage.toml",
        "[storage]\nprovider = \"fs\"\n[storage.config]\nroot = \"fsroot\"\n",
    );
    sb.run_with_stdin(&["put", "mine"], b"keep me");
    let mut child = sb
        .command(&["bench", "--ops", "10000000", "--size", "1KiB"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let namespace = line
        .split_whitespace()
        .find(|w| w.starts_with("bench-"))
        .unwrap_or_else(|| panic!("no namespace named: {line}"))
        .to_string();
    // Wait until the run has written something, then interrupt it.
    loop {
        let written = sb.ok(&["--namespace", &namespace, "--json", "ls", "--limit", "5"]);
        if !written.text().trim().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    let left = sb.ok(&["--namespace", &namespace, "--json", "ls", "--deleted"]);
    assert_eq!(left.text().trim(), "", "records left behind");
    assert_eq!(sb.ok(&["get", "mine"]).stdout, b"keep me");
}

/// `bench --clean-up` removes the namespaces of runs killed before they could (`bench-PID-T`)
/// and nothing else.
#[test]
fn clean_up_removes_only_what_killed_runs_left() {
    let sb = Sandbox::new();
    sb.write(
        "stowage.toml",
        "[storage]\nprovider = \"fs\"\n[storage.config]\nroot = \"fsroot\"\n",
    );
    for ns in [
        "bench-123-1700000000",
        "bench-9-1",
        "benchmarks",
        "bench-x-1",
        "default",
    ] {
        for key in ["a", "b"] {
            let run = sb.run_with_stdin(&["--namespace", ns, "put", key], b"x");
            assert_eq!(run.code, 0, "{}", run.stderr);
        }
    }
    let run = sb.ok(&["--json", "bench", "--clean-up"]);
    assert_eq!(run.json()["namespaces"], 2, "{}", run.text());
    assert_eq!(run.json()["records"], 4, "{}", run.text());
    for (ns, left) in [
        ("bench-123-1700000000", 0),
        ("bench-9-1", 0),
        ("benchmarks", 2),
        ("bench-x-1", 2),
        ("default", 2),
    ] {
        let ls = sb.ok(&["--namespace", ns, "--json", "ls", "--deleted"]);
        assert_eq!(ls.json_lines().len(), left, "{ns}");
    }
    let run = sb.fails(&["bench", "--clean-up", "--provider", "memory"], 2);
    assert!(run.stderr.contains("configured store"), "{}", run.stderr);
}
